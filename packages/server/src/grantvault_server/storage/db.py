"""Database access for both backends behind one small interface.

Repositories are written once, as ``await conn.execute(...)`` on a :data:`Conn`:

* **PostgreSQL** uses SQLAlchemy's asyncio engine over asyncpg; rows are locked with
  ``SELECT ... FOR UPDATE`` where a read must precede a write.
* **SQLite** uses the synchronous ``sqlite3`` driver *on the event-loop thread*, behind a thin
  async facade (:class:`SyncConnection`). A point query on a local SQLite file costs tens of
  microseconds; handing each statement to a helper thread (as aiosqlite does) cost ten times
  that in thread switches and capped the vault at about a hundred retrievals a second. The
  invariant that makes this safe: code inside ``db.read()``/``db.write()`` blocks on SQLite
  never awaits anything that yields, so transactions of one process never interleave, and a
  transaction is as short as its statements. Write transactions start with
  ``BEGIN IMMEDIATE`` so a transaction that reads before it writes (chain head, keyring)
  holds the write lock from its first statement; another process (the CLI, a second server)
  waits at most the busy timeout. WAL mode keeps readers from blocking on the writer.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.base import Executable

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 5000


class SyncConnection:
    """The async connection interface over a synchronous SQLAlchemy connection (SQLite)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def dialect(self) -> Dialect:
        return self._conn.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        return self._conn.execute(statement, parameters)

    async def run_sync(self, fn: Callable[[Connection], T]) -> T:
        return fn(self._conn)

    def dbapi_connection(self) -> Any:
        """The underlying ``sqlite3.Connection`` (see ``storage.fastread``)."""
        return self._conn.connection.driver_connection


#: What repositories receive: an asyncio connection (PostgreSQL) or the SQLite facade.
Conn = AsyncConnection | SyncConnection


def sqlite_path_url(url: str) -> str:
    """Accept ``sqlite://`` and ``sqlite+aiosqlite://`` URLs; use the stdlib driver."""
    return "sqlite://" + url.split("://", 1)[1]


def _create_private(url: str) -> None:
    """Create the SQLite file readable by its owner only (SQLite gives -wal/-shm the same mode)."""
    path = url.split(":///", 1)[1]
    if path and path != ":memory:" and not os.path.exists(path):
        directory = os.path.dirname(path)
        if directory and not os.path.isdir(directory):
            return  # the connection attempt reports the missing folder
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    # hide_parameters: a statement's values (row contents, ciphertexts, ids) never reach an
    # exception's text, whatever later formats it (logs, OpenTelemetry export).
    engine = sa.create_engine(
        sqlite_path_url(url), pool_size=5, max_overflow=10, pool_timeout=1, hide_parameters=True
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    if immediate:

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Database:
    """Transaction helpers every repository call goes through."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._async: AsyncEngine | None = None
        self._read: Engine | None = None
        self._write: Engine | None = None
        self._read_conn: Connection | None = None
        if self.is_sqlite:
            _create_private(url)
            self._read = _sqlite_engine(url, immediate=False)
            self._write = _sqlite_engine(url, immediate=True)
        else:
            self._async = create_async_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                hide_parameters=True,
            )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Conn]:
        """A connection for reads.

        On SQLite this is one long-lived connection in autocommit mode: each statement reads
        the latest committed state, and no per-block connect, BEGIN or ROLLBACK is paid on
        the hot path. Multi-statement reads that need one snapshot must not rely on it
        (``audit.chain.verify`` reads the head first for that reason).
        """
        try:
            if self._read is not None:
                conn = self._reader()
                try:
                    yield SyncConnection(conn)
                finally:
                    conn.rollback()  # ends SQLAlchemy's logical transaction; no SQL is sent
            else:
                assert self._async is not None
                async with self._async.connect() as conn_async:
                    yield conn_async
        except IntegrityError:
            raise
        except DataError as exc:
            raise _bad_value(exc) from exc
        except (OperationalError, DBAPIError, OSError) as exc:
            self._drop_reader()
            raise _unavailable(exc) from exc

    def _reader(self) -> Connection:
        if self._read_conn is None or self._read_conn.closed or self._read_conn.invalidated:
            assert self._read is not None
            self._read_conn = self._read.connect()
        return self._read_conn

    def _drop_reader(self) -> None:
        if self._read_conn is not None:
            try:
                self._read_conn.invalidate()
                self._read_conn.close()
            except Exception:  # noqa: S110 - best effort: the connection is already broken
                pass
            self._read_conn = None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Conn]:
        """A write transaction: committed when the block ends, rolled back on any error."""
        try:
            if self._write is not None:
                with self._write.begin() as sync_conn:
                    yield SyncConnection(sync_conn)
            else:
                assert self._async is not None
                async with self._async.begin() as conn:
                    yield conn
        except IntegrityError:
            raise
        except DataError as exc:
            raise _bad_value(exc) from exc
        except (OperationalError, DBAPIError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def run_in_transaction(self, fn: Callable[[Connection], T]) -> T:
        """Run a synchronous function (Alembic, for one) inside a write transaction."""
        async with self.write() as conn:
            return await conn.run_sync(fn)

    async def dispose(self) -> None:
        self._drop_reader()
        if self._async is not None:
            await self._async.dispose()
        for engine in (self._read, self._write):
            if engine is not None:
                engine.dispose()


def _bad_value(exc: Exception) -> VaultError:
    # A value the database cannot store (out of range, wrong encoding): the caller's input.
    return VaultError(
        ErrorCode.INVALID_REQUEST,
        f"A value in the request cannot be stored ({type(exc).__name__}); check its size and "
        "characters.",
    )


def _unavailable(exc: Exception) -> VaultError:
    # The driver's message can contain SQL parameters; keep it out of the answer.
    return VaultError(
        ErrorCode.STORAGE_UNAVAILABLE,
        f"The database is unavailable ({type(exc).__name__}); retry shortly.",
    )
