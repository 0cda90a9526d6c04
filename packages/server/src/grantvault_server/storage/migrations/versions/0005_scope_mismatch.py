"""scope mismatch: the client's report that a provider refused a grant for a missing scope

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import grantvault_server.storage.tables as gt

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written out (not built from storage.tables) so the migration stays what it was when
    # released; tests/test_migrations.py proves the result equals the table definitions.
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("scope_mismatch_at", gt.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("scope_mismatch", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.drop_column("scope_mismatch")
        batch.drop_column("scope_mismatch_at")
