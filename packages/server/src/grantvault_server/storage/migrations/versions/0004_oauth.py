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

_NEW = (gt.oauth_providers, gt.connect_sessions, gt.oauth_flows, gt.oauth_revocations)


def upgrade() -> None:
    bind = op.get_bind()
    # The tables are created from their one definition in storage.tables (plus indexes).
    for table in _NEW:
        table.create(bind)
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
    gt.oauth_tokens.create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    gt.oauth_tokens.drop(bind)
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
    for table in reversed(_NEW):
        table.drop(bind)
