"""oauth: provider registrations, OAuth grants and their tokens, connect sessions and flows

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import grantvault_server.storage.tables as gt

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth_providers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("provider_id", sa.String(length=50), nullable=False),
        sa.Column("custom_spec", sa.JSON(), nullable=True),
        sa.Column("overrides", sa.JSON(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("client_id", sa.String(length=512), nullable=False),
        sa.Column("client_secret_ct", sa.LargeBinary(), nullable=True),
        sa.Column("default_scopes", sa.JSON(), nullable=False),
        sa.Column("allowed_scopes", sa.JSON(), nullable=True),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("updated_at", gt.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_oauth_providers_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_providers")),
        sa.UniqueConstraint(
            "app_id", "provider_id", name=op.f("uq_oauth_providers_app_id_provider_id")
        ),
    )
    op.create_table(
        "connect_sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("browser_hash", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("allowed_providers", sa.JSON(), nullable=False),
        sa.Column("return_url", sa.String(length=2048), nullable=True),
        sa.Column("allowed_origin", sa.String(length=512), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("grant_policy", sa.JSON(), nullable=True),
        sa.Column("required_scopes", sa.JSON(), nullable=True),
        sa.Column("switch_account", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("repair_grant_id", sa.String(length=36), nullable=True),
        sa.Column("principal_type", sa.String(length=8), nullable=False),
        sa.Column("principal_id", sa.String(length=255), nullable=True),
        sa.Column("idp_id", sa.String(length=64), nullable=True),
        sa.Column("actor", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("expires_at", gt.UTCDateTime(), nullable=False),
        sa.Column("completed_at", gt.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["app_id"],
            ["apps.id"],
            name=op.f("fk_connect_sessions_app_id_apps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connect_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_connect_sessions_token_hash")),
    )
    op.create_table(
        "oauth_flows",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("oauth_provider_id", sa.String(length=36), nullable=False),
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("verifier_ct", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=True),
        sa.Column("redirect_uri", sa.String(length=2048), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("ttl_seconds", sa.Integer(), nullable=True),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("expires_at", gt.UTCDateTime(), nullable=False),
        sa.Column("used_at", gt.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_oauth_flows_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["connect_sessions.id"],
            name=op.f("fk_oauth_flows_session_id_connect_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_flows")),
        sa.UniqueConstraint("state_hash", name=op.f("uq_oauth_flows_state_hash")),
    )
    op.create_table(
        "oauth_revocations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("oauth_provider_id", sa.String(length=36), nullable=False),
        sa.Column("grant_id", sa.String(length=36), nullable=False),
        sa.Column("token_ct", sa.LargeBinary(), nullable=False),
        sa.Column("token_type_hint", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", gt.UTCDateTime(), nullable=False),
        sa.Column("last_error", sa.String(length=255), nullable=True),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"],
            ["apps.id"],
            name=op.f("fk_oauth_revocations_app_id_apps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_revocations")),
    )
    op.create_index(op.f("ix_oauth_flows_session_id"), "oauth_flows", ["session_id"], unique=False)
    op.create_index(
        op.f("ix_oauth_revocations_next_attempt_at"),
        "oauth_revocations",
        ["next_attempt_at"],
        unique=False,
    )
    with op.batch_alter_table("grants") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(16), nullable=False, server_default="managed_secret")
        )
        batch.alter_column("managed_secret_id", existing_type=sa.String(36), nullable=True)
        batch.add_column(sa.Column("oauth_provider_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("account_identifier", sa.String(320), nullable=True))
        batch.add_column(sa.Column("account_display_name", sa.String(255), nullable=True))
        batch.add_column(sa.Column("scopes", sa.JSON, nullable=True))
        batch.add_column(sa.Column("api_base_url", sa.String(2048), nullable=True))
        batch.create_foreign_key(
            "fk_grants_oauth_provider_id_oauth_providers",
            "oauth_providers",
            ["oauth_provider_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index("ix_grants_oauth_provider_id", ["oauth_provider_id"])
    op.create_table(
        "oauth_tokens",
        sa.Column("grant_id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("access_ct", sa.LargeBinary(), nullable=True),
        sa.Column("refresh_ct", sa.LargeBinary(), nullable=True),
        sa.Column("access_expires_at", gt.UTCDateTime(), nullable=True),
        sa.Column("generation", sa.String(length=36), nullable=False),
        sa.Column("lease_owner", sa.String(length=36), nullable=True),
        sa.Column("lease_until", gt.UTCDateTime(), nullable=True),
        sa.Column("refresh_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cooldown_until", gt.UTCDateTime(), nullable=True),
        sa.Column("last_refresh_error", sa.String(length=255), nullable=True),
        sa.Column("needs_reconnect", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("updated_at", gt.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_oauth_tokens_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["grant_id"],
            ["grants.id"],
            name=op.f("fk_oauth_tokens_grant_id_grants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("grant_id", name=op.f("pk_oauth_tokens")),
    )


def downgrade() -> None:
    op.drop_table("oauth_tokens")
    with op.batch_alter_table("grants") as batch:
        batch.drop_index("ix_grants_oauth_provider_id")
        batch.drop_constraint("fk_grants_oauth_provider_id_oauth_providers", type_="foreignkey")
        for name in (
            "api_base_url",
            "scopes",
            "account_display_name",
            "account_identifier",
            "oauth_provider_id",
            "kind",
        ):
            batch.drop_column(name)
        batch.alter_column("managed_secret_id", existing_type=sa.String(36), nullable=False)
    op.drop_index("ix_oauth_revocations_next_attempt_at", table_name="oauth_revocations")
    op.drop_index("ix_oauth_flows_session_id", table_name="oauth_flows")
    for table in ("oauth_revocations", "oauth_flows", "connect_sessions", "oauth_providers"):
        op.drop_table(table)
