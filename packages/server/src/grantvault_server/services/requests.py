"""Per-request bookkeeping of the signed protocol: nonce claims and storage health."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn
from grantvault_server.storage.sql import insert_ignore
from grantvault_server.storage.tables import request_nonces


async def claim_nonce(vault: Vault, key_id: str, nonce: str, now: datetime) -> bool:
    """Record ``nonce`` for ``key_id``; False if it was already used within the window.

    Nonces live in the database (a unique key, not a process-local set) so that a replay sent
    to another replica is refused too. They are kept for twice the skew window, longer than
    any timestamp that could still pass the clock check.
    """
    async with vault.db.write() as conn:
        return await claim_nonce_in(conn, vault, key_id, nonce, now)


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


async def purge_nonces(vault: Vault, now: datetime) -> None:
    async with vault.db.write() as conn:
        await conn.execute(sa.delete(request_nonces).where(request_nonces.c.expires_at < now))


async def database_ok(vault: Vault) -> bool:
    try:
        async with vault.db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception:
        return False
    return True
