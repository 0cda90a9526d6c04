"""Per-request bookkeeping of the signed protocol: nonce claims and storage health."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import sqlalchemy as sa

from grantvault_server.services.last_used import TOUCH_KEY
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn
from grantvault_server.storage.sql import insert_ignore
from grantvault_server.storage.tables import request_nonces


async def touch_key(conn: Conn, key_id: str, now: datetime) -> None:
    await conn.execute(TOUCH_KEY, {"kid": key_id, "used_at": now})


async def claim_nonce(
    vault: Vault, key_id: str, nonce: str, now: datetime, *, touch: bool = False
) -> bool:
    """Record ``nonce`` for ``key_id``; False if it was already used within the window.

    Nonces live in the database (a unique key, not a process-local set) so that a replay sent
    to another replica is refused too. They are kept for twice the skew window, longer than
    any timestamp that could still pass the clock check.
    """
    async with vault.db.write() as conn:
        fresh = await claim_nonce_in(conn, vault, key_id, nonce, now)
        if fresh and touch:
            await touch_key(conn, key_id, now)
        return fresh


async def claim_nonce_in(conn: Conn, vault: Vault, key_id: str, nonce: str, now: datetime) -> bool:
    """:func:`claim_nonce` inside the caller's write transaction."""
    return await insert_ignore(
        conn,
        request_nonces,
        {
            "key_id": key_id,
            "nonce": nonce,
            "expires_at": now + timedelta(seconds=2 * vault.settings.clock_skew_seconds),
        },
    )


PURGE_CHUNK = 2000


async def purge_nonces(vault: Vault, now: datetime) -> int:
    """Delete expired nonces in small transactions, yielding between them.

    At a thousand requests a second a minute leaves ~60,000 expired rows; one DELETE of all
    of them would hold the SQLite write lock (and, on SQLite, the event loop) for too long.
    """
    expired = (
        sa.select(request_nonces.c.key_id, request_nonces.c.nonce)
        .where(request_nonces.c.expires_at < now)
        .limit(PURGE_CHUNK)
    )
    removed = 0
    while True:
        async with vault.db.write() as conn:
            result = await conn.execute(
                sa.delete(request_nonces).where(
                    sa.tuple_(request_nonces.c.key_id, request_nonces.c.nonce).in_(expired)
                )
            )
        removed += result.rowcount
        if result.rowcount < PURGE_CHUNK:
            return removed
        await asyncio.sleep(0)


async def database_ok(vault: Vault) -> bool:
    try:
        async with vault.db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception:
        return False
    return True
