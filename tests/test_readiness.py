"""``/readyz`` tells the truth (issue 9, item 4): not ready while the database refuses writes.

Before the fix, readiness ran ``SELECT 1``, which a locked or read-only database answers
happily, so a load balancer kept sending traffic that all failed with 503.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from grantvault_server.services.vault import Vault
from grantvault_server.storage import db as db_module
from tests.conftest import PG_ADMIN_URL


@pytest.fixture
def uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every /readyz probes afresh (the 1 s cache is tested on its own below)."""
    monkeypatch.setattr(db_module, "PROBE_CACHE_SECONDS", 0.0)


def _db_name(vault: Vault) -> str:
    return vault.settings.effective_database_url.rsplit("/", 1)[1]


def _pg_url(db: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db}"


async def _terminate_vault_sessions(admin: asyncpg.Connection, db: str) -> None:
    """Like a failover: the vault's sessions end, and the ones it opens next see the new
    database settings."""
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()",
        db,
    )


async def _ready(client: httpx.AsyncClient) -> tuple[int, str]:
    r = await client.get("/readyz")
    return r.status_code, r.json()["checks"]["database"]


@pytest.fixture
async def locked_writes(vault: Vault, backend: str) -> AsyncIterator[None]:
    """Another session holds the lock every write needs."""
    if backend == "sqlite":
        path = vault.settings.effective_database_url.split(":///", 1)[1]
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
        return
    other = await asyncpg.connect(_pg_url(_db_name(vault)))
    tx = other.transaction()
    await tx.start()
    await other.execute("LOCK TABLE request_nonces IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        await tx.rollback()
        await other.close()


@pytest.mark.usefixtures("uncached")
async def test_not_ready_while_another_session_holds_the_write_lock(
    vault: Vault, client: httpx.AsyncClient, locked_writes: None
) -> None:
    status, database = await _ready(client)
    assert (status, database) == (503, "refuses_writes")
    assert (await client.get("/readyz")).json()["status"] == "not_ready"
    assert (await client.get("/healthz")).status_code == 200  # alive, just not ready


@pytest.mark.usefixtures("uncached")
async def test_ready_again_once_the_lock_is_released(
    vault: Vault, client: httpx.AsyncClient, backend: str
) -> None:
    assert await _ready(client) == (200, "ok")
    if backend == "sqlite":
        path = vault.settings.effective_database_url.split(":///", 1)[1]
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        assert await _ready(client) == (503, "refuses_writes")
        other.execute("ROLLBACK")
        other.close()
    else:
        other = await asyncpg.connect(_pg_url(_db_name(vault)))
        tx = other.transaction()
        await tx.start()
        await other.execute("LOCK TABLE request_nonces IN ACCESS EXCLUSIVE MODE")
        assert await _ready(client) == (503, "refuses_writes")
        await tx.rollback()
        await other.close()
    assert await _ready(client) == (200, "ok")


@pytest.mark.usefixtures("uncached")
async def test_not_ready_on_a_read_only_database(
    vault: Vault, client: httpx.AsyncClient, backend: str
) -> None:
    """PostgreSQL after a failover to a read-only node (``default_transaction_read_only``),
    SQLite on a file opened read-only: reads work, writes do not."""
    if backend == "sqlite":
        # A read-only file is what a new connection of the probe sees after `chmod a-w`; the
        # query_only pragma on every new connection gives the same refusal without
        # depending on the test running as a user that file modes restrict.
        original = sqlite3.connect

        def read_only_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
            conn = original(*args, **kwargs)  # type: ignore[arg-type]
            conn.execute("PRAGMA query_only = ON")
            return conn

        mp = pytest.MonkeyPatch()
        mp.setattr(db_module.sqlite3, "connect", read_only_connect)
        try:
            assert await _ready(client) == (503, "refuses_writes")
        finally:
            mp.undo()
        assert await _ready(client) == (200, "ok")
        return
    db = _db_name(vault)
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
        await _terminate_vault_sessions(admin, db)
        assert await _ready(client) == (503, "refuses_writes")
        await admin.execute(f'ALTER DATABASE "{db}" RESET default_transaction_read_only')
        await _terminate_vault_sessions(admin, db)
        assert await _ready(client) == (200, "ok")
    finally:
        await admin.execute(f'ALTER DATABASE "{db}" RESET default_transaction_read_only')
        await admin.close()


async def test_the_probe_is_cached_for_a_second_and_shared(
    vault: Vault, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = 0
    real = vault.db._run_probe

    async def counting() -> str:
        nonlocal runs
        runs += 1
        return await real()

    monkeypatch.setattr(vault.db, "_run_probe", counting)
    answers = await asyncio.gather(*(client.get("/readyz") for _ in range(10)))
    assert {r.status_code for r in answers} == {200}
    assert runs == 1
    monkeypatch.setattr(vault.db, "_probe_at", vault.db._probe_at - 1.01)
    assert (await client.get("/readyz")).status_code == 200
    assert runs == 2
