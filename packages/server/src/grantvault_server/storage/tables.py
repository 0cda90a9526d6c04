"""Table definitions (SQLAlchemy Core). The Alembic migrations create exactly these.

Identifiers are canonical UUID strings (portable between SQLite and PostgreSQL and what the
wire protocol sends). Times are stored in UTC; :class:`UTCDateTime` gives them back aware.
Columns ending in ``_ct`` hold barrier ciphertext and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _id() -> sa.Column[str]:
    return sa.Column("id", sa.String(36), primary_key=True)


def _app_fk(*, primary_key: bool = False) -> sa.Column[str]:
    return sa.Column(
        "app_id",
        sa.String(36),
        sa.ForeignKey("apps.id", ondelete="CASCADE"),
        nullable=False,
        primary_key=primary_key,
    )


def _operator_fk() -> sa.Column[str]:
    return sa.Column(
        "operator_id",
        sa.String(36),
        sa.ForeignKey("operators.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )


apps = sa.Table(
    "apps",
    metadata,
    _id(),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # Bumped in the transaction that changes any of the app's policies. The key lookup every
    # signed request makes reads it, so each replica knows at once when its compiled policies
    # are stale (services.policies), without a second query on the hot path.
    sa.Column("policy_generation", sa.Integer, nullable=False, server_default="0"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    _id(),
    _app_fk(),
    sa.Column("name", sa.String(128), nullable=True),
    sa.Column("key_type", sa.String(2), nullable=False),
    sa.Column("key_prefix", sa.String(32), nullable=False),
    # SHA-256 of the whole key. Keys carry 110 random bits, so a fast hash is enough
    # (no password stretching needed); the signing key is derived from the presented key.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    # Set when the key was rotated: it keeps working until then, then answers
    # ``key_rotated_grace_expired``.
    sa.Column("grace_expires_at", UTCDateTime(), nullable=True),
    sa.Column("rotated_to_id", sa.String(36), nullable=True),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
)

request_nonces = sa.Table(
    "request_nonces",
    metadata,
    sa.Column("key_id", sa.String(36), primary_key=True),
    sa.Column("nonce", sa.String(64), primary_key=True),
    sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
)

data_keys = sa.Table(
    "data_keys",
    metadata,
    # A data-key "term" may be wrapped by several master keys during a rotation.
    sa.Column("term", sa.Integer, primary_key=True),
    sa.Column("master_key_id", sa.String(32), primary_key=True),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

keyring_state = sa.Table(
    "keyring_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("active_term", sa.Integer, nullable=False),
    sa.Column("rotation_from", sa.String(32), nullable=True),
    sa.Column("rotation_to", sa.String(32), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

vault_keys = sa.Table(
    "vault_keys",
    metadata,
    # Vault-wide secrets (the audit HMAC key), stored as barrier ciphertext. ``app_id`` is
    # "system": these rows belong to no app, but share the encrypted-column layout.
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("app_id", sa.String(36), nullable=False),
    sa.Column("key_ct", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

managed_secrets = sa.Table(
    "managed_secrets",
    metadata,
    _id(),
    _app_fk(),
    sa.Column("slug", sa.String(50), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("template", sa.String(50), nullable=True),
    # Validated ``InjectionSpec`` (see providers.schema): how and where to inject.
    sa.Column("injection", sa.JSON, nullable=False),
    sa.Column("allowed_hosts", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("app_id", "slug"),
)

credentials = sa.Table(
    "credentials",
    metadata,
    _id(),
    _app_fk(),
    sa.Column(
        "managed_secret_id",
        sa.String(36),
        sa.ForeignKey("managed_secrets.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("label", sa.String(128), nullable=True),
    sa.Column("secret_ct", sa.LargeBinary, nullable=False),
    # Changes each time the value is replaced; reported as ``token_generation``.
    sa.Column("generation", sa.String(36), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

grants = sa.Table(
    "grants",
    metadata,
    _id(),
    _app_fk(),
    # "managed_secret" or "oauth": exactly one of managed_secret_id / oauth_provider_id is set.
    sa.Column("kind", sa.String(16), nullable=False, server_default="managed_secret"),
    sa.Column(
        "managed_secret_id",
        sa.String(36),
        sa.ForeignKey("managed_secrets.id", ondelete="CASCADE"),
        nullable=True,
        index=True,
    ),
    sa.Column(
        "oauth_provider_id",
        sa.String(36),
        sa.ForeignKey("oauth_providers.id", ondelete="CASCADE"),
        nullable=True,
        index=True,
    ),
    # OAuth grants: the connected account and what it was granted (never secret).
    sa.Column("account_identifier", sa.String(320), nullable=True),
    sa.Column("account_display_name", sa.String(255), nullable=True),
    sa.Column("scopes", sa.JSON, nullable=True),
    sa.Column("api_base_url", sa.String(2048), nullable=True),
    sa.Column("credential_id", sa.String(36), nullable=True),
    sa.Column("principal_type", sa.String(8), nullable=False),
    # External subject id (user) or external group id (group); NULL for the system.
    sa.Column("principal_id", sa.String(255), nullable=True),
    sa.Column("idp_id", sa.String(64), nullable=True),
    sa.Column("label", sa.String(255), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("policy", sa.JSON, nullable=True),
    sa.Column("created_by", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("revoke_reason", sa.String(512), nullable=True),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
    # The client's last report that the provider refused this grant for a missing scope
    # (``POST /sdk/grants/{id}/report-scope-mismatch``): when, and what it said, bounded
    # (services.grants.report_scope_mismatch). NULL: never reported.
    sa.Column("scope_mismatch_at", UTCDateTime(), nullable=True),
    sa.Column("scope_mismatch", sa.JSON, nullable=True),
    sa.Index("ix_grants_app_status", "app_id", "status"),
)

# --- oauth ---

oauth_providers = sa.Table(
    "oauth_providers",
    metadata,
    # One OAuth client registration of an app at a provider ("google", or a custom id).
    _id(),
    _app_fk(),
    sa.Column("provider_id", sa.String(50), nullable=False),
    # Catalog entries store only overrides and params; custom providers store their whole
    # validated spec (providers.oauth_schema.OAuthProviderSpec).
    sa.Column("custom_spec", sa.JSON, nullable=True),
    sa.Column("overrides", sa.JSON, nullable=True),
    sa.Column("params", sa.JSON, nullable=True),
    sa.Column("client_id", sa.String(512), nullable=False),
    sa.Column("client_secret_ct", sa.LargeBinary, nullable=True),
    sa.Column("default_scopes", sa.JSON, nullable=False),
    sa.Column("allowed_scopes", sa.JSON, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("app_id", "provider_id"),
)

oauth_tokens = sa.Table(
    "oauth_tokens",
    metadata,
    # The token set behind one OAuth grant, plus the refresh lease that serialises refreshes
    # across processes and replicas. Deleted the moment the grant is revoked.
    sa.Column(
        "grant_id",
        sa.String(36),
        sa.ForeignKey("grants.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    _app_fk(),
    sa.Column("access_ct", sa.LargeBinary, nullable=True),
    sa.Column("refresh_ct", sa.LargeBinary, nullable=True),
    sa.Column("access_expires_at", UTCDateTime(), nullable=True),
    # Changes on every refresh: the fencing token for the lease and ``token_generation``.
    sa.Column("generation", sa.String(36), nullable=False),
    sa.Column("lease_owner", sa.String(36), nullable=True),
    sa.Column("lease_until", UTCDateTime(), nullable=True),
    sa.Column("refresh_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cooldown_until", UTCDateTime(), nullable=True),
    sa.Column("last_refresh_error", sa.String(255), nullable=True),
    # The provider refused the refresh token (invalid_grant): the user must connect again.
    sa.Column("needs_reconnect", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

connect_sessions = sa.Table(
    "connect_sessions",
    metadata,
    _id(),
    _app_fk(),
    # SHA-256 of the bearer session token; the token itself is never stored.
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    # SHA-256 of the browser cookie that first opened the session: later steps must match.
    sa.Column("browser_hash", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("allowed_providers", sa.JSON, nullable=False),
    sa.Column("return_url", sa.String(2048), nullable=True),
    sa.Column("allowed_origin", sa.String(512), nullable=True),
    sa.Column("metadata", sa.JSON, nullable=True),
    sa.Column("grant_policy", sa.JSON, nullable=True),
    sa.Column("required_scopes", sa.JSON, nullable=True),
    sa.Column("switch_account", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("repair_grant_id", sa.String(36), nullable=True),
    sa.Column("principal_type", sa.String(8), nullable=False),
    sa.Column("principal_id", sa.String(255), nullable=True),
    sa.Column("idp_id", sa.String(64), nullable=True),
    sa.Column("actor", sa.JSON, nullable=False),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("completed_at", UTCDateTime(), nullable=True),
)

oauth_flows = sa.Table(
    "oauth_flows",
    metadata,
    # One trip to the provider's authorization endpoint: state, PKCE verifier and nonce.
    _id(),
    _app_fk(),
    sa.Column(
        "session_id",
        sa.String(36),
        sa.ForeignKey("connect_sessions.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("oauth_provider_id", sa.String(36), nullable=False),
    sa.Column("state_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("verifier_ct", sa.LargeBinary, nullable=False),
    sa.Column("nonce", sa.String(64), nullable=True),
    sa.Column("redirect_uri", sa.String(2048), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("ttl_seconds", sa.Integer, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    # Set once, atomically: a callback is exchanged at most once.
    sa.Column("used_at", UTCDateTime(), nullable=True),
)

oauth_revocations = sa.Table(
    "oauth_revocations",
    metadata,
    # Provider-side revocations still to do (the provider was down); tokens kept encrypted
    # only until the provider confirms or the attempts run out.
    _id(),
    _app_fk(),
    sa.Column("oauth_provider_id", sa.String(36), nullable=False),
    sa.Column("grant_id", sa.String(36), nullable=False),
    sa.Column("token_ct", sa.LargeBinary, nullable=False),
    sa.Column("token_type_hint", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("last_error", sa.String(255), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # The hash chain this row belongs to: an app id, or "system" for vault-wide events.
    sa.Column("chain", sa.String(36), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("occurred_at", UTCDateTime(), nullable=False),
    sa.Column("event", sa.String(48), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(512), nullable=True),
    sa.Column("actor", sa.JSON, nullable=False),
    sa.Column("principal", sa.String(300), nullable=True),
    sa.Column("grant_id", sa.String(36), nullable=True),
    sa.Column("provider_id", sa.String(64), nullable=True),
    sa.Column("method", sa.String(16), nullable=True),
    sa.Column("url", sa.String(4096), nullable=True),
    sa.Column("details", sa.JSON, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.UniqueConstraint("chain", "seq"),
    sa.Index("ix_audit_events_chain_time", "chain", "occurred_at"),
)

audit_heads = sa.Table(
    "audit_heads",
    metadata,
    sa.Column("chain", sa.String(36), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)


# --- identity ---

identity_providers = sa.Table(
    "identity_providers",
    metadata,
    # The app's identity provider (OIDC issuer) whose JWTs name the app's end users. One
    # active row per app; replacing the issuer deactivates the old row (its users stay, with
    # their audit history, but no token of the old issuer verifies any more).
    _id(),
    _app_fk(),
    sa.Column("issuer", sa.String(512), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("jwks_uri", sa.String(2048), nullable=False),
    # Signature algorithms accepted (asymmetric only), from discovery or the operator.
    sa.Column("algorithms", sa.JSON, nullable=False),
    # The discovery document's endpoints the sign-in broker uses (never secret).
    sa.Column("endpoints", sa.JSON, nullable=False),
    sa.Column("audience", sa.String(512), nullable=False),
    sa.Column("user_id_claim", sa.String(255), nullable=False),
    sa.Column("groups_claim", sa.String(255), nullable=True),
    sa.Column("email_claim", sa.String(255), nullable=False),
    sa.Column("name_claim", sa.String(255), nullable=False),
    # Set at the first sign-in: changing the mappings afterwards needs --force.
    sa.Column("mappings_locked_at", UTCDateTime(), nullable=True),
    # The vault's own OIDC client at the IdP, for the sign-in broker (authenticate()).
    sa.Column("signin_client_id", sa.String(255), nullable=True),
    sa.Column("signin_client_secret_ct", sa.LargeBinary, nullable=True),
    # Shared secret of the inbound deprovisioning webhook.
    sa.Column("webhook_secret_ct", sa.LargeBinary, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Index(
        "uq_identity_providers_active_app",
        "app_id",
        unique=True,
        sqlite_where=sa.text("active"),
        postgresql_where=sa.text("active"),
    ),
)

app_users = sa.Table(
    "app_users",
    metadata,
    # An end user of an app, created just in time from their first verified token.
    _id(),
    _app_fk(),
    sa.Column(
        "idp_id",
        sa.String(36),
        sa.ForeignKey("identity_providers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # The mapped user id claim (``sub`` by default): what grants name as principal_id.
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("email", sa.String(320), nullable=True),
    sa.Column("display_name", sa.String(255), nullable=True),
    # active | disabled | deleted
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("status_reason", sa.String(512), nullable=True),
    sa.Column("status_changed_at", UTCDateTime(), nullable=True),
    # The external group ids of the last verified token, and removals announced by the IdP
    # (group id -> unix time): the hot path reads both with the user, in one row.
    sa.Column("groups", sa.JSON, nullable=False),
    sa.Column("group_removals", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("last_seen_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("idp_id", "subject"),
    sa.Index("ix_app_users_app_id", "app_id"),
)

app_groups = sa.Table(
    "app_groups",
    metadata,
    _id(),
    _app_fk(),
    sa.Column(
        "idp_id",
        sa.String(36),
        sa.ForeignKey("identity_providers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("external_id", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("idp_id", "external_id"),
)

app_group_members = sa.Table(
    "app_group_members",
    metadata,
    sa.Column(
        "group_id",
        sa.String(36),
        sa.ForeignKey("app_groups.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "user_id",
        sa.String(36),
        sa.ForeignKey("app_users.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

auth_sessions = sa.Table(
    "auth_sessions",
    metadata,
    # One brokered end-user sign-in (POST /sdk/auth/session): the SDK polls with the session
    # token, the browser carries the start handle, then state, to the IdP and back.
    _id(),
    _app_fk(),
    sa.Column(
        "idp_id",
        sa.String(36),
        sa.ForeignKey("identity_providers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # SHA-256 of the bearer values; the values themselves are never stored.
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("start_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("state_hash", sa.String(64), nullable=True, unique=True),
    # SHA-256 of the cookie of the browser that opened the sign-in link.
    sa.Column("browser_hash", sa.String(64), nullable=True),
    sa.Column("nonce", sa.String(64), nullable=True),
    sa.Column("verifier_ct", sa.LargeBinary, nullable=True),
    # created | started | exchanging | completed | error
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.String(512), nullable=True),
    # The user's ID token, held encrypted for exactly one pickup by the poll.
    sa.Column("user_token_ct", sa.LargeBinary, nullable=True),
    sa.Column("user_info", sa.JSON, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
)

idp_webhook_deliveries = sa.Table(
    "idp_webhook_deliveries",
    metadata,
    # Delivery ids of accepted deprovisioning webhooks, kept past the timestamp window so a
    # replayed delivery is refused on every replica.
    sa.Column("app_id", sa.String(36), primary_key=True),
    sa.Column("delivery_id", sa.String(128), primary_key=True),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
)


# Operator-written policies (issue 11; policy/ and services/policies.py). The live version of
# each policy; documents are not secret, so they are stored as JSON, and re-validated when a
# replica compiles them: a row that no longer validates denies every retrieval of its app.
policies = sa.Table(
    "policies",
    metadata,
    _id(),
    _app_fk(),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("document", sa.JSON(), nullable=False),
    # The text as the operator wrote it (YAML comments and all), shown by `policies show`.
    sa.Column("source", sa.Text(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("app_id", "name"),
)

# Every version ever stored, kept after a delete: an audit row names (policy, version), and
# this is where that version's text can still be read. Versions of a name never restart.
policy_versions = sa.Table(
    "policy_versions",
    metadata,
    _app_fk(primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("policy_id", sa.String(36), nullable=False),
    # NULL for the row that records a deletion.
    sa.Column("document", sa.JSON(), nullable=True),
    sa.Column("source", sa.Text(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("actor", sa.JSON(), nullable=True),
)

# Quota and rate-limit counters, shared by every replica (decision 0011). One row per counter
# and window; ``counter`` is a digest of (policy name, rule, per, subject, window start).
policy_counters = sa.Table(
    "policy_counters",
    metadata,
    _app_fk(primary_key=True),
    sa.Column("counter", sa.String(64), primary_key=True),
    sa.Column("window_start", UTCDateTime(), nullable=False),
    sa.Column("window_end", UTCDateTime(), nullable=False, index=True),
    sa.Column("count", sa.Integer, nullable=False),
)


# Operators (issue 12): the people who run the vault, apart from the apps' end users.
operators = sa.Table(
    "operators",
    metadata,
    _id(),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    # owner | admin | auditor
    sa.Column("role", sa.String(16), nullable=False),
    # App ids an admin or auditor is limited to; NULL: every app.
    sa.Column("apps", sa.JSON(), nullable=True),
    # Argon2id (PHC string); NULL for an operator who signs in only through single sign-on.
    sa.Column("password_hash", sa.String(255), nullable=True),
    sa.Column("totp_secret_ct", sa.LargeBinary, nullable=True),
    sa.Column("totp_enabled_at", UTCDateTime(), nullable=True),
    # SHA-256 of each unused recovery code.
    sa.Column("recovery_codes", sa.JSON(), nullable=True),
    # "<issuer> <subject>" of the operator's single sign-on identity.
    sa.Column("sso_subject", sa.String(600), nullable=True, unique=True),
    sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0"),
    sa.Column("locked_until", UTCDateTime(), nullable=True),
    sa.Column("disabled_at", UTCDateTime(), nullable=True),
    # Sessions and tokens issued before this instant are dead ("sign out everywhere").
    sa.Column("sessions_valid_after", UTCDateTime(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_login_at", UTCDateTime(), nullable=True),
)

# Personal API tokens (gvat_...): stored as SHA-256 only, like app API keys.
operator_tokens = sa.Table(
    "operator_tokens",
    metadata,
    _id(),
    _operator_fk(),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("token_prefix", sa.String(16), nullable=False),
    # A token may carry less than its operator: a lower role, fewer apps.
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("apps", sa.JSON(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
)

# Portal sessions: the cookie holds a random id; only its SHA-256 is stored.
operator_sessions = sa.Table(
    "operator_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    _operator_fk(),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_seen_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
    # Password checked but the second factor not yet: only the TOTP step is allowed.
    sa.Column("pending_mfa", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    # Sudo mode: when the operator last re-entered a password or code in this session (or
    # signed in); dangerous portal actions need it within the last few minutes.
    sa.Column("reauthenticated_at", UTCDateTime(), nullable=True),
)


#: What the AAD of a ciphertext that belongs to no app names in the app's place.
NO_APP = "-"


@dataclass(frozen=True)
class EncryptedColumn:
    """A column holding barrier ciphertext; the re-encryption pass walks every one of these."""

    table: sa.Table
    column: str
    #: The row id bound into the ciphertext's AAD.
    key: str = "id"
    #: The column naming the app bound into the AAD; ``None`` for rows that belong to no
    #: app (operators), which bind :data:`NO_APP` instead.
    app: str | None = "app_id"

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column}"


ENCRYPTED_COLUMNS: tuple[EncryptedColumn, ...] = (
    EncryptedColumn(credentials, "secret_ct"),
    EncryptedColumn(vault_keys, "key_ct"),
    EncryptedColumn(oauth_providers, "client_secret_ct"),
    EncryptedColumn(oauth_tokens, "access_ct", key="grant_id"),
    EncryptedColumn(oauth_tokens, "refresh_ct", key="grant_id"),
    EncryptedColumn(oauth_flows, "verifier_ct"),
    EncryptedColumn(oauth_revocations, "token_ct"),
    # identity
    EncryptedColumn(identity_providers, "signin_client_secret_ct"),
    EncryptedColumn(identity_providers, "webhook_secret_ct"),
    EncryptedColumn(auth_sessions, "verifier_ct"),
    EncryptedColumn(auth_sessions, "user_token_ct"),
    # operators
    EncryptedColumn(operators, "totp_secret_ct", app=None),
)
