"""Database access: a read engine and a write engine over one database.

On SQLite, write transactions start with ``BEGIN IMMEDIATE`` so that a transaction which
reads before it writes (the audit chain head, the keyring) holds the write lock from its
first statement; deferred transactions could read a stale head and fork the chain when the
CLI and the server write at once. WAL mode keeps readers from blocking on the writer.
On PostgreSQL both engines are the same and writes lock rows with ``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError


def _sqlite_engine(url: str, *, immediate: bool, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """The two engines and the transaction helpers every repository call goes through."""

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.read_engine = _sqlite_engine(url, immediate=False, pool_size=pool_size)
            self.write_engine = _sqlite_engine(url, immediate=True, pool_size=2)
        else:
            self.read_engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
            self.write_engine = self.read_engine

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (a short transaction, rolled back at the end)."""
        try:
            async with self.read_engine.connect() as conn:
                yield conn
        except IntegrityError:
            raise
        except (OperationalError, DBAPIError, OSError) as exc:
            raise _unavailable(exc) from exc

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed when the block ends, rolled back on any error."""
        try:
            async with self.write_engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except (OperationalError, DBAPIError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def dispose(self) -> None:
        await self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            await self.write_engine.dispose()


def _unavailable(exc: Exception) -> VaultError:
    # The driver's message can contain SQL parameters; keep it out of the answer.
    return VaultError(
        ErrorCode.STORAGE_UNAVAILABLE,
        f"The database is unavailable ({type(exc).__name__}); retry shortly.",
    )
