"""Small portable SQL helpers the services share (the same statement on SQLite and PostgreSQL)."""

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
    key = (conn.dialect.name, table.name)
    stmt = _INSERT_IGNORE.get(key)
    if stmt is None:
        module: Any = {"postgresql": postgresql, "sqlite": sqlite}[conn.dialect.name]
        # Built once per table and dialect; values are bound per call.
        stmt = _INSERT_IGNORE[key] = module.insert(table).on_conflict_do_nothing()
    result = await conn.execute(stmt, values)
    return bool(result.rowcount)


_INSERT_IGNORE: dict[tuple[str, str], Any] = {}


async def page(
    conn: Conn, stmt: sa.Select[Any], order_by: tuple[Any, ...], limit: int, offset: int
) -> tuple[int, list[Any]]:
    """One page of ``stmt`` in a stable order, and how many rows match in all.

    The list endpoints answer ``total`` and ``has_more``; both numbers come from the same
    filtered statement so they cannot disagree about what is being counted.
    """
    total = (
        await conn.execute(sa.select(sa.func.count()).select_from(stmt.subquery()))
    ).scalar_one()
    rows = (await conn.execute(stmt.order_by(*order_by).limit(limit).offset(offset))).all()
    return int(total), list(rows)


def for_update(conn: Conn, stmt: sa.Select[Any]) -> sa.Select[Any]:
    """Lock the selected rows on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises."""
    return stmt.with_for_update() if conn.dialect.name == "postgresql" else stmt
