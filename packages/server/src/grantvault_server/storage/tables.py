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


def _app_fk() -> sa.Column[str]:
    return sa.Column(
        "app_id", sa.String(36), sa.ForeignKey("apps.id", ondelete="CASCADE"), nullable=False
    )


apps = sa.Table(
    "apps",
    metadata,
    _id(),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
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
    sa.Column(
        "managed_secret_id",
        sa.String(36),
        sa.ForeignKey("managed_secrets.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
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
    sa.Index("ix_grants_app_status", "app_id", "status"),
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


@dataclass(frozen=True)
class EncryptedColumn:
    """A column holding barrier ciphertext; the re-encryption pass walks every one of these."""

    table: sa.Table
    column: str

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column}"


ENCRYPTED_COLUMNS: tuple[EncryptedColumn, ...] = (
    EncryptedColumn(credentials, "secret_ct"),
    EncryptedColumn(vault_keys, "key_ct"),
)
