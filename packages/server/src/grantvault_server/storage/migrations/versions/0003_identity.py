"""identity: the app's identity provider, app users and groups, sign-in sessions, webhooks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Written out column by column (not created from ``storage.tables``) so that this revision
keeps meaning the same schema when the table definitions move on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import grantvault_server.storage.tables as gt

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _idp_fk() -> sa.Column[str]:
    return sa.Column("idp_id", sa.String(length=36), nullable=False)


def upgrade() -> None:
    op.create_table(
        "identity_providers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("issuer", sa.String(length=512), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("jwks_uri", sa.String(length=2048), nullable=False),
        sa.Column("algorithms", sa.JSON(), nullable=False),
        sa.Column("endpoints", sa.JSON(), nullable=False),
        sa.Column("audience", sa.String(length=512), nullable=False),
        sa.Column("user_id_claim", sa.String(length=255), nullable=False),
        sa.Column("groups_claim", sa.String(length=255), nullable=True),
        sa.Column("email_claim", sa.String(length=255), nullable=False),
        sa.Column("name_claim", sa.String(length=255), nullable=False),
        sa.Column("mappings_locked_at", gt.UTCDateTime(), nullable=True),
        sa.Column("signin_client_id", sa.String(length=255), nullable=True),
        sa.Column("signin_client_secret_ct", sa.LargeBinary(), nullable=True),
        sa.Column("webhook_secret_ct", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("updated_at", gt.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"],
            ["apps.id"],
            name=op.f("fk_identity_providers_app_id_apps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_providers")),
    )
    op.create_index(
        "uq_identity_providers_active_app",
        "identity_providers",
        ["app_id"],
        unique=True,
        sqlite_where=sa.text("active"),
        postgresql_where=sa.text("active"),
    )
    op.create_table(
        "app_users",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        _idp_fk(),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("display_name", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.String(length=512), nullable=True),
        sa.Column("status_changed_at", gt.UTCDateTime(), nullable=True),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("group_removals", sa.JSON(), nullable=False),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("updated_at", gt.UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", gt.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_app_users_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["idp_id"],
            ["identity_providers.id"],
            name=op.f("fk_app_users_idp_id_identity_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_app_users")),
        sa.UniqueConstraint("idp_id", "subject", name=op.f("uq_app_users_idp_id_subject")),
    )
    op.create_index("ix_app_users_app_id", "app_users", ["app_id"])
    op.create_table(
        "app_groups",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        _idp_fk(),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_app_groups_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["idp_id"],
            ["identity_providers.id"],
            name=op.f("fk_app_groups_idp_id_identity_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_app_groups")),
        sa.UniqueConstraint("idp_id", "external_id", name=op.f("uq_app_groups_idp_id_external_id")),
    )
    op.create_table(
        "app_group_members",
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["app_groups.id"],
            name=op.f("fk_app_group_members_group_id_app_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["app_users.id"],
            name=op.f("fk_app_group_members_user_id_app_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "user_id", name=op.f("pk_app_group_members")),
    )
    op.create_index("ix_app_group_members_user_id", "app_group_members", ["user_id"])
    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        _idp_fk(),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("start_hash", sa.String(length=64), nullable=False),
        sa.Column("state_hash", sa.String(length=64), nullable=True),
        sa.Column("browser_hash", sa.String(length=64), nullable=True),
        sa.Column("nonce", sa.String(length=64), nullable=True),
        sa.Column("verifier_ct", sa.LargeBinary(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.String(length=512), nullable=True),
        sa.Column("user_token_ct", sa.LargeBinary(), nullable=True),
        sa.Column("user_info", sa.JSON(), nullable=True),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("expires_at", gt.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_auth_sessions_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["idp_id"],
            ["identity_providers.id"],
            name=op.f("fk_auth_sessions_idp_id_identity_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_auth_sessions_token_hash")),
        sa.UniqueConstraint("start_hash", name=op.f("uq_auth_sessions_start_hash")),
        sa.UniqueConstraint("state_hash", name=op.f("uq_auth_sessions_state_hash")),
    )
    op.create_index("ix_auth_sessions_expires_at", "auth_sessions", ["expires_at"])
    op.create_table(
        "idp_webhook_deliveries",
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("delivery_id", sa.String(length=128), nullable=False),
        sa.Column("received_at", gt.UTCDateTime(), nullable=False),
        sa.Column("expires_at", gt.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("app_id", "delivery_id", name=op.f("pk_idp_webhook_deliveries")),
    )
    op.create_index(
        "ix_idp_webhook_deliveries_expires_at", "idp_webhook_deliveries", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_idp_webhook_deliveries_expires_at", table_name="idp_webhook_deliveries")
    op.drop_table("idp_webhook_deliveries")
    op.drop_index("ix_auth_sessions_expires_at", table_name="auth_sessions")
    op.drop_table("auth_sessions")
    op.drop_index("ix_app_group_members_user_id", table_name="app_group_members")
    op.drop_table("app_group_members")
    op.drop_table("app_groups")
    op.drop_index("ix_app_users_app_id", table_name="app_users")
    op.drop_table("app_users")
    op.drop_index("uq_identity_providers_active_app", table_name="identity_providers")
    op.drop_table("identity_providers")
