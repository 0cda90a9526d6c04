"""policies: operator-written policy documents, their versions, and quota counters

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import grantvault_server.storage.tables as gt

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _app_fk(primary_key: bool = False) -> sa.Column[str]:
    return sa.Column(
        "app_id",
        sa.String(36),
        sa.ForeignKey("apps.id", ondelete="CASCADE", name=None),
        nullable=False,
        primary_key=primary_key,
    )


def upgrade() -> None:
    # Written out (not built from storage.tables) so the migration stays what it was when
    # released; tests/test_migrations.py proves the result equals the table definitions.
    with op.batch_alter_table("apps") as batch:
        batch.add_column(
            sa.Column("policy_generation", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "policies",
        sa.Column("id", sa.String(36), primary_key=True),
        _app_fk(),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("updated_at", gt.UTCDateTime(), nullable=False),
        sa.UniqueConstraint("app_id", "name"),
    )
    op.create_table(
        "policy_versions",
        _app_fk(primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("policy_id", sa.String(36), nullable=False),
        sa.Column("document", sa.JSON(), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("created_at", gt.UTCDateTime(), nullable=False),
        sa.Column("actor", sa.JSON(), nullable=True),
    )
    op.create_table(
        "policy_counters",
        _app_fk(primary_key=True),
        sa.Column("counter", sa.String(64), primary_key=True),
        sa.Column("window_start", gt.UTCDateTime(), nullable=False),
        sa.Column("window_end", gt.UTCDateTime(), nullable=False, index=True),
        sa.Column("count", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("policy_counters")
    op.drop_table("policy_versions")
    op.drop_table("policies")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("policy_generation")
