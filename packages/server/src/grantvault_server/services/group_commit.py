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
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditChain, AuditRecord
from grantvault_server.audit.events import Outcome
from grantvault_server.auth.api_keys import key_state_error
from grantvault_server.errors import VaultError
from grantvault_server.policy.compile import Charge
from grantvault_server.services.last_used import TOUCH_GRANT, TOUCH_KEY
from grantvault_server.services.policy_counters import apply_charges
from grantvault_server.services.vault_time import utcnow
from grantvault_server.storage.db import Conn, Database
from grantvault_server.storage.tables import api_keys, grants, request_nonces

MAX_BATCH = 256


@dataclass(frozen=True)
class RetrievalWrite:
    grant_id: str
    key_id: str
    nonce: str
    nonce_expires_at: datetime
    record: AuditRecord
    touch_grant: str | None = None
    touch_key: bool = False
    used_at: datetime | None = None
    #: Policy quota and rate-limit charges, applied in the same transaction (all or none).
    charges: tuple[Charge, ...] = ()


class Replayed(Exception):
    """The nonce was already used (in an earlier request or earlier in the same batch)."""


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


Outcome_ = Exception | None  # None: committed


def _grant_check(dialect: str) -> Any:
    stmt = sa.select(grants.c.id, grants.c.status, grants.c.expires_at).where(
        grants.c.id.in_(sa.bindparam("ids", expanding=True))
    )
    return stmt.order_by(grants.c.id).with_for_update() if dialect == "postgresql" else stmt


def _key_check(dialect: str, touch: bool = False) -> Any:
    """The keys' state, share-locked; locked for update when the batch will touch a key's
    ``last_used_at``. Two replicas' batches that both held the share lock and then both
    updated the row would deadlock (each waits for the other's share lock)."""
    stmt = sa.select(
        api_keys.c.id, api_keys.c.revoked_at, api_keys.c.grace_expires_at, api_keys.c.expires_at
    ).where(api_keys.c.id.in_(sa.bindparam("ids", expanding=True)))
    if dialect != "postgresql":
        return stmt
    ordered = stmt.order_by(api_keys.c.id)
    if touch:
        # FOR NO KEY UPDATE: the lock the touch's UPDATE takes anyway.
        return ordered.with_for_update(key_share=True)
    return ordered.with_for_update(read=True)  # FOR SHARE


class RetrievalWriter:
    """Collects retrieval writes and commits them in batches (one per loop turn under load)."""

    def __init__(
        self,
        db: Database,
        audit: AuditChain,
        observe: Callable[[int], None] | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.audit = audit
        #: The vault's clock: grant and key expiry are re-checked at this time.
        self.now = now
        self.observe = observe
        self._pending: list[tuple[RetrievalWrite, asyncio.Future[None]]] = []
        self._flushing = False
        self.batches = 0
        self.items = 0

    async def commit(self, write: RetrievalWrite) -> None:
        """Make ``write`` durable; raise :class:`Replayed`, a grant/key refusal or the storage error."""
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
                writes = [w for w, _ in batch]
                try:
                    outcomes = await self._write(writes)
                except Exception as exc:
                    # One bad item must not fail its neighbours: retry each on its own.
                    outcomes = [exc] if len(writes) == 1 else [await self._alone(w) for w in writes]
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if outcome is None:
                        future.set_result(None)
                    else:
                        future.set_exception(outcome)
        finally:
            self._flushing = False

    async def _alone(self, write: RetrievalWrite) -> Outcome_:
        try:
            return (await self._write([write]))[0]
        except Exception as exc:
            return exc

    async def _write(self, writes: list[RetrievalWrite]) -> list[Outcome_]:
        async with self.db.write() as conn:
            fresh = await self._claim(conn, writes)
            outcomes: list[Outcome_] = [None if ok else Replayed() for ok in fresh]
            live = [i for i, o in enumerate(outcomes) if o is None]
            if live:
                now = self.now()
                await self._recheck(conn, writes, outcomes, live, now)
                await self._charge(conn, writes, outcomes, live, now)
                records = [
                    writes[i].record
                    if outcomes[i] is None
                    else dataclasses.replace(
                        writes[i].record,
                        outcome=Outcome.DENIED,
                        reason=getattr(outcomes[i], "code", "refused"),
                        details={
                            "error": str(getattr(outcomes[i], "code", "refused")),
                            **_policy_fields(outcomes[i]),
                        },
                    )
                    for i in live
                ]
                await self.audit.append(conn, records)
                ok = [writes[i] for i in live if outcomes[i] is None]
                touches = [
                    {"gid": w.touch_grant, "used_at": w.used_at} for w in ok if w.touch_grant
                ]
                if touches:
                    await conn.execute(TOUCH_GRANT, touches)
                keys = {w.key_id: w.used_at for w in ok if w.touch_key}
                if keys:
                    await conn.execute(
                        TOUCH_KEY, [{"kid": k, "used_at": t} for k, t in keys.items()]
                    )
        self.batches += 1
        self.items += len(writes)
        if self.observe is not None:
            self.observe(len(writes))
        return outcomes

    @staticmethod
    async def _recheck(
        conn: Conn,
        writes: list[RetrievalWrite],
        outcomes: list[Outcome_],
        live: list[int],
        now: datetime,
    ) -> None:
        """Re-read grant and key state inside the transaction, locking in a fixed order.

        The retrieval checked both before this transaction; a revocation may have committed
        since. On PostgreSQL the rows are locked (grants, then keys, then the chain heads in
        ``audit.append``), the same order revocations take, so a revocation either commits
        before (and the token is refused here) or after this retrieval; never a deadlock.
        """
        dialect = conn.dialect.name
        grant_ids = sorted({writes[i].grant_id for i in live})
        grant_rows = {
            r.id: r for r in await conn.execute(_grant_check(dialect), {"ids": grant_ids})
        }
        key_ids = sorted({writes[i].key_id for i in live})
        touch = any(writes[i].touch_key for i in live)
        key_rows = {
            r.id: r for r in await conn.execute(_key_check(dialect, touch), {"ids": key_ids})
        }
        for i in live:
            grant = grant_rows.get(writes[i].grant_id)
            key = key_rows.get(writes[i].key_id)
            if grant is None or grant.status == "revoked":
                outcomes[i] = VaultError(
                    ErrorCode.GRANT_REVOKED, "This grant was revoked; create a new grant."
                )
            elif grant.expires_at is not None and grant.expires_at <= now:
                outcomes[i] = VaultError(ErrorCode.GRANT_EXPIRED, "This grant has expired.")
            elif key is None:
                outcomes[i] = VaultError(ErrorCode.INVALID_KEY, "The API key no longer exists.")
            else:
                outcomes[i] = key_state_error(
                    key.revoked_at, key.grace_expires_at, key.expires_at, now
                )

    @staticmethod
    async def _charge(
        conn: Conn,
        writes: list[RetrievalWrite],
        outcomes: list[Outcome_],
        live: list[int],
        now: datetime,
    ) -> None:
        """Apply the policy counters of the calls still allowed (after the grant and key
        re-check, so a refused call is never charged); a used-up counter refuses its call."""
        charged = [i for i in live if outcomes[i] is None and writes[i].charges]
        if not charged:
            return
        results = await apply_charges(conn, [writes[i].charges for i in charged], now)
        for i, refusal in zip(charged, results, strict=True):
            if refusal is not None:
                outcomes[i] = refusal

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


def _policy_fields(outcome: Outcome_) -> dict[str, Any]:
    """The policy, version and rule of a quota or rate-limit refusal, for its audit row."""
    extra = getattr(outcome, "extra", None) or {}
    return {k: extra[k] for k in ("policy", "policy_version", "rule") if k in extra}


def nonce_expiry(now: datetime, skew_seconds: int) -> datetime:
    return now + timedelta(seconds=2 * skew_seconds)
