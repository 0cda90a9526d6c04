"""The Alembic migrations build exactly the schema ``storage.tables`` describes, on both
backends, and can be walked back and forth (downgrades exist for operators who need them)."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from grantvault_server.config import Settings
from grantvault_server.storage import migrate
from grantvault_server.storage.db import Database
from grantvault_server.storage.tables import metadata


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": False, "compare_server_default": False}
    )
    return list(compare_metadata(context, metadata))


async def test_migrations_match_the_table_definitions_and_walk_back(settings: Settings) -> None:
    db = Database(settings.effective_database_url)
    try:
        await migrate.upgrade(db)
        assert await db.run_in_transaction(_diff) == []

        def down_then_up(connection: Connection) -> None:
            config = migrate.alembic_config(connection)
            command.downgrade(config, "0002")
            command.upgrade(config, "head")

        await db.run_in_transaction(down_then_up)
        assert await db.run_in_transaction(_diff) == []
        assert await migrate.current_revision(db) == migrate.head_revision()
    finally:
        await db.dispose()
