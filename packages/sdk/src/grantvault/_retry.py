"""The one retry policy of the SDK, and the parsing of ``Retry-After``.

What is retried: only calls that are safe to repeat (``GET`` and the read-only ``POST`` calls
flagged idempotent: grant listing, the poll endpoints, token verification), on a connection
failure that happened before anything was sent, or on 408, 429, 502, 503 and 504. A credential
retrieval (``POST /sdk/token``) and every call that changes state are never retried: the
caller sees the first failure. Each attempt is signed afresh (new nonce), because the vault
refuses a replayed nonce.

Separately, and for every call but grant creation, a request whose connection closed before
any byte of the answer arrived (:func:`unanswered`) is sent once more at once, with a fresh
nonce and signature. That is the keep-alive race: the client picked a pooled connection that
the server was closing as idle, and the request reached a socket nobody reads.

Delays use exponential backoff with full jitter (``uniform(0, min(max, initial * 2**n))``).
A ``Retry-After`` header from the vault wins when present, up to ``max_retry_after``; a longer
one ends the retries so that the caller decides.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from grantvault._constants import (
    DEFAULT_MAX_RETRIES,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
)

RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
#: httpcore's words when the connection ended before the status line (HTTP/1.1).
_UNANSWERED = "without sending a response"
_DIGITS = re.compile(r"[0-9]+")


def unanswered(exc: BaseException) -> bool:
    """Did the connection close before any byte of the answer arrived?

    httpcore raises ``RemoteProtocolError("Server disconnected without sending a response.")``
    exactly when the socket reached end-of-file while the response had not started. Other
    transport errors (a reset, a timeout, a connection lost mid-answer) leave unknown whether
    the server acted, so they are not covered here.
    """
    return isinstance(exc, httpx.RemoteProtocolError) and _UNANSWERED in str(exc)


def parse_retry_after(value: str | None, *, cap: int) -> int | None:
    """Seconds from a delta-seconds ``Retry-After`` value, clamped to ``cap``; else ``None``.

    Only ASCII digits count (no sign, no HTTP date); very long values are clamped without
    converting them, so a hostile header cannot make ``int()`` raise.
    """
    if value is None:
        return None
    stripped = value.strip()
    if not _DIGITS.fullmatch(stripped):
        return None
    significant = stripped.lstrip("0") or "0"
    if len(significant) > len(str(cap)):
        return cap
    return min(int(significant), cap)


def coerce_seconds(value: object, *, cap: int) -> int | None:
    """A whole, non-negative number of seconds from a JSON value (bools refused), clamped."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return min(value, cap) if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return min(int(value), cap)
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How many times, and how long apart, an idempotent vault call is retried."""

    max_retries: int = DEFAULT_MAX_RETRIES
    initial_delay: float = INITIAL_RETRY_DELAY
    max_delay: float = MAX_RETRY_DELAY
    max_retry_after: float = MAX_RETRY_AFTER

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ValueError("max_retries must be an int")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay before retry number ``attempt`` (0-based)."""
        ceiling = min(self.max_delay, self.initial_delay * (2**attempt))
        return (rng or random).uniform(0.0, ceiling)

    def delay_for_status(
        self,
        attempt: int,
        status: int,
        headers: Mapping[str, str],
        *,
        idempotent: bool,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to wait before retrying an answer with ``status``, or ``None`` to stop."""
        if not idempotent or attempt >= self.max_retries or status not in RETRYABLE_STATUSES:
            return None
        retry_after = parse_retry_after(headers.get("retry-after"), cap=3600)
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            return float(retry_after)
        return self.backoff(attempt, rng)

    def delay_for_error(
        self, attempt: int, *, idempotent: bool, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait after a transport error (connect, read, timeout), or ``None``.

        Such an error leaves unknown whether the vault acted, so only idempotent calls are
        retried.
        """
        if not idempotent or attempt >= self.max_retries:
            return None
        return self.backoff(attempt, rng)
