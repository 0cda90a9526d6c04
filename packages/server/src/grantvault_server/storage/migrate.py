"""Schema migrations with Alembic, run programmatically (no alembic.ini to ship or find)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from grantvault_server.storage.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def upgrade(db: Database) -> None:
    """Bring the schema to the newest revision."""

    def _run(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), "head")

    await db.run_in_transaction(_run)


async def current_revision(db: Database) -> str | None:
    def _read(connection: Connection) -> str | None:
        revision = MigrationContext.configure(connection).get_current_revision()
        return str(revision) if revision is not None else None

    async with db.read() as conn:
        revision: str | None = await conn.run_sync(_read)
    return revision
