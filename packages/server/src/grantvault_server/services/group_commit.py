"""Group commit for credential retrievals: concurrent requests share one write transaction.

Every successful retrieval must make three writes durable before its token leaves: the
request's nonce (once only), its audit row (chained), and now and then the grant's
``last_used_at``. Done one transaction per request, the transaction overhead (BEGIN,
head lock, COMMIT) dominated the retrieval. Here each request hands its writes to
:class:`RetrievalWriter` and waits; a flush scheduled on the event loop collects every
request that reached the same point meanwhile and commits them together. Each waiter learns
its own outcome: committed, refused as a replay, or failed with the transaction.

Semantics are unchanged: a token is returned only after its audit row committed; a replayed
nonce is refused (the first claimant in a batch wins); if the transaction fails, every
request in it fails and no token leaves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from grantvault_server.audit.chain import AuditChain, AuditRecord
from grantvault_server.storage.db import Conn, Database
from grantvault_server.storage.tables import api_keys, grants, request_nonces

MAX_BATCH = 256


@dataclass(frozen=True)
class RetrievalWrite:
    key_id: str
    nonce: str
    nonce_expires_at: datetime
    record: AuditRecord
    touch_grant: str | None = None
    touch_key: bool = False
    used_at: datetime | None = None


class Replayed(Exception):
    """The nonce was already used (in an earlier request or earlier in the same batch)."""


_TOUCH_KEY = (
    sa.update(api_keys)
    .where(api_keys.c.id == sa.bindparam("kid"))
    .values(last_used_at=sa.bindparam("used_at"))
)
_TOUCH = (
    sa.update(grants)
    .where(grants.c.id == sa.bindparam("gid"))
    .values(last_used_at=sa.bindparam("used_at"))
)


_CLAIMS: dict[str, Any] = {}


def _claim_statement(dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING, built once per dialect.

    Executed with a list of rows, SQLAlchemy sends it as one multi-row statement
    ("insertmanyvalues") and the compiled form stays cached; a ``.values([...])`` literal would
    be compiled anew for every batch.
    """
    stmt = _CLAIMS.get(dialect)
    if stmt is None:
        module: Any = {"postgresql": postgresql, "sqlite": sqlite}[dialect]
        stmt = _CLAIMS[dialect] = (
            module.insert(request_nonces)
            .on_conflict_do_nothing()
            .returning(request_nonces.c.key_id, request_nonces.c.nonce)
        )
    return stmt


class RetrievalWriter:
    """Collects retrieval writes and commits them in batches (one per loop turn under load)."""

    def __init__(self, db: Database, audit: AuditChain) -> None:
        self.db = db
        self.audit = audit
        self._pending: list[tuple[RetrievalWrite, asyncio.Future[None]]] = []
        self._flushing = False
        self.batches = 0
        self.items = 0

    async def commit(self, write: RetrievalWrite) -> None:
        """Make ``write`` durable; raise :class:`Replayed` or the storage error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((write, future))
        if not self._flushing:
            self._flushing = True
            # Let every request that is already runnable reach this point first.
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    outcomes = await self._write(batch)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), ok in zip(batch, outcomes, strict=True):
                    if not future.done():
                        if ok:
                            future.set_result(None)
                        else:
                            future.set_exception(Replayed())
        finally:
            self._flushing = False

    async def _write(self, batch: list[tuple[RetrievalWrite, asyncio.Future[None]]]) -> list[bool]:
        async with self.db.write() as conn:
            fresh = await self._claim(conn, [w for w, _ in batch])
            accepted = [w for w, ok in zip((w for w, _ in batch), fresh, strict=True) if ok]
            if accepted:
                await self.audit.append(conn, [w.record for w in accepted])
                touches = [
                    {"gid": w.touch_grant, "used_at": w.used_at} for w in accepted if w.touch_grant
                ]
                if touches:
                    await conn.execute(_TOUCH, touches)
                keys = {w.key_id: w.used_at for w in accepted if w.touch_key}
                if keys:
                    await conn.execute(
                        _TOUCH_KEY, [{"kid": k, "used_at": t} for k, t in keys.items()]
                    )
        self.batches += 1
        self.items += len(batch)
        return fresh

    @staticmethod
    async def _claim(conn: Conn, writes: list[RetrievalWrite]) -> list[bool]:
        rows = [
            {"key_id": w.key_id, "nonce": w.nonce, "expires_at": w.nonce_expires_at} for w in writes
        ]
        # One multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING: the rows that come back
        # are the nonces seen for the first time.
        inserted = {
            (r.key_id, r.nonce)
            for r in await conn.execute(_claim_statement(conn.dialect.name), rows)
        }
        outcomes = []
        for w in writes:
            key = (w.key_id, w.nonce)
            outcomes.append(key in inserted)
            inserted.discard(key)  # a second claimant of the same nonce in this batch loses
        return outcomes


def nonce_expiry(now: datetime, skew_seconds: int) -> datetime:
    return now + timedelta(seconds=2 * skew_seconds)
