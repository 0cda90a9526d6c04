"""Prepared point reads for the retrieval hot path.

A :class:`PreparedRead` wraps a SQLAlchemy ``Select`` (the one source of truth for the query).
On PostgreSQL it simply executes it. On SQLite it compiles the statement once and runs it on
the raw ``sqlite3`` connection, applying the columns' own SQLAlchemy result processors (so
UTC datetimes and JSON come back exactly as through SQLAlchemy). SQLAlchemy's per-execution
machinery cost about five times the query itself; the two reads of every retrieval (API key,
then grant with its secret and credential) are where that showed. Everything else goes
through SQLAlchemy as usual.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from grantvault_server.storage.db import Conn, SyncConnection


@dataclass
class _Compiled:
    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]
    processors: list[Callable[[Any], Any] | None]
    row_type: Any


class PreparedRead:
    """A SELECT returning at most one interesting row, executed with minimal overhead."""

    def __init__(self, statement: sa.Select[Any]) -> None:
        self.statement = statement
        self._sqlite: _Compiled | None = None

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect)
        positions = compiled.positiontup or ()
        columns = list(self.statement.selected_columns)
        return _Compiled(
            sql=str(compiled),
            names=tuple(positions),
            defaults=dict(compiled.params),
            processors=[c.type._cached_result_processor(dialect, None) for c in columns],
            row_type=namedtuple("Row", [c.key for c in columns]),  # type: ignore[misc]
        )

    async def first(self, conn: Conn, params: dict[str, Any]) -> Any:
        rows = await self.many(conn, params, 1)
        return rows[0] if rows else None

    async def many(self, conn: Conn, params: dict[str, Any], limit: int) -> list[Any]:
        """Up to ``limit`` rows (the statement's own LIMIT, if any, still applies)."""
        if not isinstance(conn, SyncConnection) or conn.dialect.name != "sqlite":
            return list((await conn.execute(self.statement, params)).fetchmany(limit))
        prepared = self._sqlite
        if prepared is None:
            prepared = self._sqlite = self._compile(conn.dialect)
        values = {**prepared.defaults, **params}
        raw = conn.dbapi_connection()
        rows = raw.execute(prepared.sql, tuple(values[n] for n in prepared.names)).fetchmany(limit)
        return [
            prepared.row_type(
                *(
                    p(v) if p is not None else v
                    for p, v in zip(prepared.processors, row, strict=True)
                )
            )
            for row in rows
        ]
