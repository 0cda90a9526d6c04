"""Small portable SQL helpers the repositories share."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from grantvault_server.storage.db import Conn


async def insert_ignore(conn: Conn, table: sa.Table, values: dict[str, Any]) -> bool:
    """Insert a row unless its primary key exists; say whether it was inserted.

    Used where "exactly once" must hold across processes and replicas (request nonces, chain
    heads): the database's unique index decides, not an in-memory set.
    """
    dialect = conn.dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(table).values(values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).values(values).on_conflict_do_nothing()
    else:  # pragma: no cover - only the two supported backends
        raise RuntimeError(f"unsupported database dialect {dialect}")
    result = await conn.execute(stmt)
    return bool(result.rowcount)


def for_update(conn: Conn, stmt: sa.Select[Any]) -> sa.Select[Any]:
    """Lock the selected rows on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises."""
    return stmt.with_for_update() if conn.dialect.name == "postgresql" else stmt
