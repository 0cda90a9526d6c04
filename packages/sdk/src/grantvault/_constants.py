"""Constants of the SDK: environment variable names, defaults and protocol limits."""

from __future__ import annotations

#: Environment variables read when the constructor argument is omitted, in order.
ENV_BASE_URL = "GRANTVAULT_BASE_URL"
ENV_API_KEY = "GRANTVAULT_API_KEY"
#: The public ``alter-sdk`` client's names, honoured so that ported code keeps its settings.
ENV_ALTER_BASE_URL = "ALTER_BASE_URL"
ENV_ALTER_API_KEY = "ALTER_API_KEY"

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
#: A ``Retry-After`` longer than this is not slept on by the automatic retry.
MAX_RETRY_AFTER = 60.0
#: Bounds on a ``retry_after`` reported on exceptions (rate limits / policy quotas).
MAX_RATE_LIMIT_RETRY_AFTER = 3600
MAX_QUOTA_RETRY_AFTER = 31 * 24 * 3600

#: Connection pool of each of the two HTTP clients (vault and providers).
POOL_MAX_CONNECTIONS = 100
POOL_MAX_KEEPALIVE = 20
POOL_KEEPALIVE_EXPIRY = 30.0

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

#: Audit context (``X-Alter-Context``) limits, as the vault enforces them.
MAX_CONTEXT_KEYS = 20
MAX_CONTEXT_KEY_LENGTH = 64
MAX_CONTEXT_VALUE_LENGTH = 512
MAX_CONTEXT_BYTES = 4096
MAX_CALLER_LENGTH = 255
MAX_PROVIDER_URL_LENGTH = 65_536

#: Bodies kept in the post-call audit row; larger ones are replaced by a size note.
MAX_AUDIT_BODY_BYTES = 10_000

#: Sign-in long-poll: what the SDK asks the vault to hold, and the extra HTTP allowance.
AUTH_POLL_SERVER_WAIT = 25.0
AUTH_POLL_HTTP_BUFFER = 15.0
#: Scope-mismatch reports are best effort and never hold the caller for long.
SCOPE_REPORT_TIMEOUT = 2.0
#: Background audit posts still running at close are given this long to finish.
CLOSE_DRAIN_TIMEOUT = 10.0
