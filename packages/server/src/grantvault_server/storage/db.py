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

import asyncio
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.base import Executable

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError

T = TypeVar("T")
log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000

#: The readiness write probe (:meth:`Database.probe`): result kept this long, whole probe
#: bounded by this, lock waits bounded by this. The key id is no API key's (those are UUIDs).
PROBE_CACHE_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 3.0
PROBE_LOCK_TIMEOUT_SECONDS = 1.0
PROBE_KEY_ID = "readyz-probe"
_PROBE_LOCK_TIMEOUT = sa.text("SET LOCAL lock_timeout = '1s'")
_PROBE_STATEMENT_TIMEOUT = sa.text("SET LOCAL statement_timeout = '2s'")
_PROBE_INSERT = sa.text(
    "INSERT INTO request_nonces (key_id, nonce, expires_at) VALUES (:key_id, :nonce, :at)"
)
_PROBE_DELETE = sa.text("DELETE FROM request_nonces WHERE key_id = :key_id AND nonce = :nonce")


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


#: What a transaction hands the services: an asyncio connection (PostgreSQL) or the SQLite facade.
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


@contextmanager
def _sqlite_lock_wait(engine: Engine, lock_wait_ms: int) -> Iterator[Connection]:
    """A write transaction whose lock wait is ``lock_wait_ms``, restored afterwards."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection  # PRAGMA on the driver: no autobegin
        assert raw is not None
        (previous,) = raw.execute("PRAGMA busy_timeout").fetchone()
        raw.execute(f"PRAGMA busy_timeout={int(lock_wait_ms)}")
        try:
            with conn.begin():
                yield conn
        finally:
            try:
                raw.execute(f"PRAGMA busy_timeout={int(previous)}")
            except sqlite3.Error:
                conn.invalidate()  # never pooled with the short wait


class Database:
    """The engine and the read/write transaction helpers every storage access goes through."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 0,
        pool_timeout: float = 10.0,
    ) -> None:
        """``pool_size``/``max_overflow``/``pool_timeout`` size the PostgreSQL pool.

        Overflow connections are opened when the pool is empty and closed on return, so under
        sustained load above the pool they cost a PostgreSQL session start (a process fork
        on the server) per checkout: with no overflow by default, a request waits for a
        pooled connection instead (at most ``pool_timeout``, then ``storage_unavailable``),
        and the admission gate (``admission.py``) keeps that wait short.
        """
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._async: AsyncEngine | None = None
        self._read: Engine | None = None
        self._write: Engine | None = None
        self._read_conn: Connection | None = None
        self._probe: AsyncEngine | None = None
        self._probe_task: asyncio.Future[str] | None = None
        self._probe_result: str | None = None
        self._probe_at = 0.0
        if self.is_sqlite:
            _create_private(url)
            self._read = _sqlite_engine(url, immediate=False)
            self._write = _sqlite_engine(url, immediate=True)
        else:
            self._async = create_async_engine(
                url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=pool_timeout,
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
        except (DBAPIError, OSError, PoolTimeout, UnicodeEncodeError) as exc:
            translated = translate_error(exc)
            if translated.code is ErrorCode.STORAGE_UNAVAILABLE:
                self._drop_reader()
            raise translated from exc

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
    async def write(self, *, lock_wait_ms: int | None = None) -> AsyncIterator[Conn]:
        """A write transaction: committed when the block ends, rolled back on any error.

        ``lock_wait_ms`` bounds this transaction's lock waits, for callers that retry
        themselves and must keep to a deadline: SQLite's busy timeout for this transaction
        only (a lock wait there blocks the event loop), PostgreSQL's ``lock_timeout``.
        """
        try:
            if self._write is not None and lock_wait_ms is not None:
                with _sqlite_lock_wait(self._write, lock_wait_ms) as sync_conn:
                    yield SyncConnection(sync_conn)
            elif self._write is not None:
                with self._write.begin() as sync_conn:
                    yield SyncConnection(sync_conn)
            else:
                assert self._async is not None
                async with self._async.begin() as conn:
                    if lock_wait_ms is not None:
                        await conn.execute(
                            sa.text(f"SET LOCAL lock_timeout = '{int(lock_wait_ms)}ms'")
                        )
                    yield conn
        except IntegrityError:
            raise  # callers turn expected conflicts into their own errors; see translate_error
        except (DBAPIError, OSError, PoolTimeout, UnicodeEncodeError) as exc:
            # PoolTimeout: no pooled connection freed up within pool_timeout (overload).
            raise translate_error(exc) from exc

    async def run_in_transaction(self, fn: Callable[[Connection], T]) -> T:
        """Run a synchronous function (Alembic, for one) inside a write transaction."""
        async with self.write() as conn:
            return await conn.run_sync(fn)

    async def probe(self) -> str:
        """Can this process write right now? ``ok``, ``refuses_writes`` or ``unavailable``.

        For readiness: a database that answers reads but refuses writes (locked by another
        process, read-only after a failover, disk full) fails every retrieval, since each one
        commits its nonce and audit row. The probe commits a real write (a row inserted and
        deleted again in ``request_nonces``) with short lock and statement timeouts, off the
        request path's connections: on SQLite in a worker thread with its own connection
        (a lock wait on the event-loop thread would stall the whole server), on PostgreSQL on
        one dedicated connection (a pool drained by load must not make the replica look
        dead). The result is cached for ``PROBE_CACHE_SECONDS`` and concurrent callers share
        one probe, so a load balancer polling often costs at most one write a second.
        """
        now = time.monotonic()
        if self._probe_result is not None and now - self._probe_at < PROBE_CACHE_SECONDS:
            return self._probe_result
        if self._probe_task is None:
            self._probe_task = asyncio.ensure_future(self._run_probe())
        task = self._probe_task
        try:
            result = await asyncio.shield(task)
        finally:
            if task.done() and self._probe_task is task:
                self._probe_task = None
        self._probe_result, self._probe_at = result, time.monotonic()
        return result

    async def _run_probe(self) -> str:
        marker = {"key_id": PROBE_KEY_ID, "nonce": uuid.uuid4().hex}
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                if self.is_sqlite:
                    return await asyncio.to_thread(self._sqlite_probe, marker["nonce"])
                return await self._postgres_probe(marker)
        except TimeoutError:
            return "refuses_writes"

    def _sqlite_probe(self, nonce: str) -> str:
        # mode=rw: a missing file is "unavailable", never silently created.
        path = "file:" + quote(self.url.split(":///", 1)[1]) + "?mode=rw"
        try:
            conn = sqlite3.connect(
                path, timeout=PROBE_LOCK_TIMEOUT_SECONDS, isolation_level=None, uri=True
            )
        except sqlite3.Error:
            return "unavailable"
        try:
            conn.execute("SELECT 1 FROM request_nonces LIMIT 1").fetchall()
        except sqlite3.Error:
            conn.close()
            return "unavailable"
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO request_nonces (key_id, nonce, expires_at) VALUES (?, ?, ?)",
                (PROBE_KEY_ID, nonce, "1970-01-01 00:00:00.000000"),
            )
            conn.execute(
                "DELETE FROM request_nonces WHERE key_id = ? AND nonce = ?", (PROBE_KEY_ID, nonce)
            )
            conn.execute("COMMIT")
        except sqlite3.Error:
            return "refuses_writes"
        finally:
            conn.close()
        return "ok"

    async def _postgres_probe(self, marker: dict[str, str]) -> str:
        if self._probe is None:
            self._probe = create_async_engine(
                self.url, pool_size=1, max_overflow=0, pool_pre_ping=True, hide_parameters=True
            )
        try:
            conn = await self._probe.connect()
        except Exception:
            return "unavailable"
        try:
            try:
                await conn.execute(sa.text("SELECT 1"))
                await conn.rollback()
            except Exception:
                await conn.invalidate()
                return "unavailable"
            try:
                async with conn.begin():
                    await conn.execute(_PROBE_LOCK_TIMEOUT)
                    await conn.execute(_PROBE_STATEMENT_TIMEOUT)
                    await conn.execute(_PROBE_INSERT, {**marker, "at": datetime.now(UTC)})
                    await conn.execute(_PROBE_DELETE, marker)
            except Exception:
                return "refuses_writes"
        finally:
            await conn.close()
        return "ok"

    async def dispose(self) -> None:
        self._drop_reader()
        if self._probe_task is not None:
            self._probe_task.cancel()
        if self._probe is not None:
            await self._probe.dispose()
        if self._async is not None:
            await self._async.dispose()
        for engine in (self._read, self._write):
            if engine is not None:
                engine.dispose()


def _sqlstate(exc: BaseException) -> str:
    """The PostgreSQL SQLSTATE behind a driver error ('' for SQLite and transport errors).

    asyncpg reports some server-side data errors (a NUL byte: 22021) and its own client-side
    encoding errors (a lone surrogate: 22000) through SQLAlchemy as a plain ``DBAPIError``,
    not ``DataError``: the class alone cannot tell a bad value from an outage there.
    """
    orig = getattr(exc, "orig", None)
    for source in (orig, getattr(orig, "__cause__", None)):
        code = getattr(source, "sqlstate", None) or getattr(source, "pgcode", None)
        if isinstance(code, str):
            return code
    return ""


def translate_error(exc: BaseException) -> VaultError:
    """One answer per kind of storage fault, whatever the backend.

    * A value the database cannot hold (SQLSTATE class 22 on PostgreSQL; a lone surrogate,
      which SQLite's driver cannot encode; ``DataError``): ``invalid_request``, the caller's
      input.
    * Everything else (connection lost, locked past the busy timeout, pool exhausted, a
      trigger or constraint refusing a write): ``storage_unavailable``. A constraint
      violation the service did not expect (``IntegrityError`` is re-raised for the services
      that turn conflicts into their own answers) gets the same code at the API edge
      (``api.errors``), so SQLite's "constraint failed" and PostgreSQL's trigger exception
      answer alike.

    Messages name no exception class and no driver text: both can carry SQL and row values.
    """
    if isinstance(exc, DataError | UnicodeEncodeError) or _sqlstate(exc).startswith("22"):
        return _bad_value()
    _log_fault(exc)
    return storage_unavailable()


def _log_fault(exc: BaseException) -> None:
    # The class and SQLSTATE tell the operator what happened; the driver's text may hold
    # parameters (row contents), so it is not logged here.
    log.warning(
        "database fault", extra={"error": type(exc).__name__, "sqlstate": _sqlstate(exc) or None}
    )


def _bad_value() -> VaultError:
    # A value the database cannot store (out of range, wrong encoding): the caller's input.
    return VaultError(
        ErrorCode.INVALID_REQUEST,
        "A value in the request cannot be stored; check its size and characters.",
    )


def storage_unavailable() -> VaultError:
    """The storage fault every backend answers alike (503, retried by clients)."""
    return VaultError(
        ErrorCode.STORAGE_UNAVAILABLE,
        "The database is unavailable or refused the write; retry shortly.",
    )
