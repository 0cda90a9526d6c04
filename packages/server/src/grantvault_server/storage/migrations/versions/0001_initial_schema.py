"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 13:00:20.124896
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import grantvault_server.storage.tables as gt

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apps")),
        sa.UniqueConstraint("name", name=op.f("uq_apps_name")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chain", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("occurred_at", gt.UTCDateTime(), nullable=False),
        sa.Column("event", sa.String(length=48), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=True),
        sa.Column("actor", sa.JSON(), nullable=False),
        sa.Column("principal", sa.String(length=300), nullable=True),
        sa.Column("grant_id", sa.String(length=36), nullable=True),
        sa.Column("provider_id", sa.String(length=64), nullable=True),
        sa.Column("method", sa.String(length=16), nullable=True),
        sa.Column("url", sa.String(length=4096), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("chain", "seq", name=op.f("uq_audit_events_chain_seq")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_chain_time", ["chain", "occurred_at"], unique=False)

    op.create_table(
        "audit_heads",
        sa.Column("chain", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("chain", name=op.f("pk_audit_heads")),
    )
    op.create_table(
        "data_keys",
        sa.Column("term", sa.Integer(), nullable=False),
        sa.Column("master_key_id", sa.String(length=32), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("term", "master_key_id", name=op.f("pk_data_keys")),
    )
    op.create_table(
        "keyring_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("active_term", sa.Integer(), nullable=False),
        sa.Column("rotation_from", sa.String(length=32), nullable=True),
        sa.Column("rotation_to", sa.String(length=32), nullable=True),
        sa.Column("updated_at", gt.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keyring_state")),
    )
    op.create_table(
        "request_nonces",
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("expires_at", gt.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "nonce", name=op.f("pk_request_nonces")),
    )
    with op.batch_alter_table("request_nonces", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_request_nonces_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=True),
        sa.Column("key_type", sa.String(length=2), nullable=False),
        sa.Column("key_prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("expires_at", gt.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", gt.UTCDateTime(), nullable=True),
        sa.Column("grace_expires_at", gt.UTCDateTime(), nullable=True),
        sa.Column("rotated_to_id", sa.String(length=36), nullable=True),
        sa.Column("last_used_at", gt.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_api_keys_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "managed_secrets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("slug", sa.String(length=50), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("template", sa.String(length=50), nullable=True),
        sa.Column("injection", sa.JSON(), nullable=False),
        sa.Column("allowed_hosts", sa.JSON(), nullable=False),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("updated_at", gt.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_managed_secrets_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_managed_secrets")),
        sa.UniqueConstraint("app_id", "slug", name=op.f("uq_managed_secrets_app_id_slug")),
    )
    op.create_table(
        "credentials",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("managed_secret_id", sa.String(length=36), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=True),
        sa.Column("secret_ct", sa.LargeBinary(), nullable=False),
        sa.Column("generation", sa.String(length=36), nullable=False),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("updated_at", gt.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_credentials_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["managed_secret_id"],
            ["managed_secrets.id"],
            name=op.f("fk_credentials_managed_secret_id_managed_secrets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credentials")),
    )
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_credentials_managed_secret_id"), ["managed_secret_id"], unique=False
        )

    op.create_table(
        "grants",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("managed_secret_id", sa.String(length=36), nullable=False),
        sa.Column("credential_id", sa.String(length=36), nullable=True),
        sa.Column("principal_type", sa.String(length=8), nullable=False),
        sa.Column("principal_id", sa.String(length=255), nullable=True),
        sa.Column("idp_id", sa.String(length=64), nullable=True),
        sa.Column("label", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", gt.UTCDateTime(), nullable=True),
        sa.Column("policy", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", gt.UTCDateTime(), nullable=True),
        sa.Column("revoke_reason", sa.String(length=512), nullable=True),
        sa.Column("last_used_at", gt.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_grants_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["managed_secret_id"],
            ["managed_secrets.id"],
            name=op.f("fk_grants_managed_secret_id_managed_secrets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_grants")),
    )
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.create_index("ix_grants_app_status", ["app_id", "status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_grants_managed_secret_id"), ["managed_secret_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_grants_managed_secret_id"))
        batch_op.drop_index("ix_grants_app_status")

    op.drop_table("grants")
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credentials_managed_secret_id"))

    op.drop_table("credentials")
    op.drop_table("managed_secrets")
    op.drop_table("api_keys")
    with op.batch_alter_table("request_nonces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_request_nonces_expires_at"))

    op.drop_table("request_nonces")
    op.drop_table("keyring_state")
    op.drop_table("data_keys")
    op.drop_table("audit_heads")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_chain_time")

    op.drop_table("audit_events")
    op.drop_table("apps")
