"""operators: operator accounts, their personal API tokens and portal sessions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import grantvault_server.storage.tables as gt

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _operator_fk() -> sa.Column[str]:
    return sa.Column(
        "operator_id",
        sa.String(36),
        sa.ForeignKey("operators.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )


def upgrade() -> None:
    # Written out (not built from storage.tables) so the migration stays what it was when
    # released; tests/test_migrations.py proves the result equals the table definitions.
    op.create_table(
        "operators",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("apps", sa.JSON(), nullable=True),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("totp_secret_ct", sa.LargeBinary(), nullable=True),
        sa.Column("totp_enabled_at", gt.UTCDateTime(), nullable=True),
        sa.Column("recovery_codes", sa.JSON(), nullable=True),
        sa.Column("sso_subject", sa.String(600), nullable=True, unique=True),
        sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("locked_until", gt.UTCDateTime(), nullable=True),
        sa.Column("disabled_at", gt.UTCDateTime(), nullable=True),
        sa.Column("sessions_valid_after", gt.UTCDateTime(), nullable=True),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("last_login_at", gt.UTCDateTime(), nullable=True),
    )
    op.create_table(
        "operator_tokens",
        sa.Column("id", sa.String(36), primary_key=True),
        _operator_fk(),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("token_prefix", sa.String(16), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("apps", sa.JSON(), nullable=True),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("expires_at", gt.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", gt.UTCDateTime(), nullable=True),
        sa.Column("last_used_at", gt.UTCDateTime(), nullable=True),
    )
    op.create_table(
        "operator_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        _operator_fk(),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", gt.UTCDateTime(), nullable=False),
        sa.Column("expires_at", gt.UTCDateTime(), nullable=False, index=True),
        sa.Column("pending_mfa", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("revoked_at", gt.UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("operator_sessions")
    op.drop_table("operator_tokens")
    op.drop_table("operators")
