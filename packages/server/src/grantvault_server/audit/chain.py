"""Tamper-evident audit storage: each chain (one per app) is a SHA-256 hash chain.

Every row stores the hash of its predecessor and its own hash over a canonical encoding of
its fields; ``audit_heads`` keeps the last sequence number and hash. Editing a row breaks its
hash, deleting or reordering breaks the sequence or the links, and truncating the tail
disagrees with the head. Appends lock the head row, so replicas sharing one database extend
the chain one at a time.

An app's chain starts in the transaction that creates the app (:func:`start`, then the
``app.created`` event), so every existing app has a head and at least one event from then
on. A chain missing for an existing app (events and head deleted) is tampering: ``verify``
reports it and :func:`append` refuses to start the chain again over the gap, which would
otherwise pass for a new, intact chain.

Links are HMACs under the vault's audit key (random, stored encrypted by the barrier), so
rewriting history consistently needs the master key as well as database access. Someone
with both, or a rollback of the whole database to an old backup, is out of scope; exporting
the trail to write-once storage (``audit export``) covers that.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.errors import VaultError
from grantvault_server.storage.db import Conn
from grantvault_server.storage.sql import insert_ignore
from grantvault_server.storage.tables import apps, audit_events, audit_heads

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    """One event as the services describe it, before it is chained."""

    chain: str
    event: AuditEvent
    outcome: Outcome
    actor: dict[str, Any]
    reason: str | None = None
    principal: str | None = None
    grant_id: str | None = None
    provider_id: str | None = None
    method: str | None = None
    url: str | None = None
    details: dict[str, Any] | None = None
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _hash(key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    material = {k: row[k] for k in sorted(row) if k not in {"id", "hash"}}
    material["occurred_at"] = _iso(row["occurred_at"])
    material["prev_hash"] = prev_hash
    encoded = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, encoded.encode(), hashlib.sha256).hexdigest()


#: Column sizes of ``audit_events``: values are clamped, never allowed to fail the insert
#: (one oversized field must not cost a batch of other requests their audit rows).
_LIMITS = {
    "reason": 512,
    "principal": 300,
    "provider_id": 64,
    "method": 16,
    "url": 4096,
    "grant_id": 36,
}


def _clean(value: Any) -> Any:
    """Strings as the database can store them: valid UTF-8, no NUL."""
    if isinstance(value, str):
        if value.isascii() and "\x00" not in value:
            return value
        return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _row(key: bytes, record: AuditRecord, seq: int, prev_hash: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "chain": record.chain,
        "seq": seq,
        "occurred_at": record.occurred_at.astimezone(UTC),
        "event": record.event.value,
        "outcome": record.outcome.value,
        "reason": record.reason,
        "actor": _clean(record.actor),
        "principal": record.principal,
        "grant_id": record.grant_id,
        "provider_id": record.provider_id,
        "method": record.method,
        "url": record.url,
        "details": _clean(record.details),
        "prev_hash": prev_hash,
    }
    for name, limit in _LIMITS.items():
        if isinstance(row[name], str):
            row[name] = _clean(row[name])[:limit]
    row["hash"] = _hash(key, prev_hash, row)
    return row


_HEAD = sa.select(audit_heads.c.seq, audit_heads.c.hash).where(
    audit_heads.c.chain == sa.bindparam("chain")
)
_HEAD_LOCKED = _HEAD.with_for_update()
_MOVE_HEAD = (
    sa.update(audit_heads)
    .where(audit_heads.c.chain == sa.bindparam("head_chain"))
    .values(seq=sa.bindparam("head_seq"), hash=sa.bindparam("head_hash"))
)
_INSERT_EVENTS = sa.insert(audit_events)


def _head_query(conn: Conn) -> sa.Select[Any]:
    # PostgreSQL locks the head row; SQLite's BEGIN IMMEDIATE already serialises writers.
    return _HEAD_LOCKED if conn.dialect.name == "postgresql" else _HEAD


class AuditChain:
    """Appends to and verifies the chains, keyed with the vault's audit key.

    The key (random, stored encrypted by the barrier) turns each link into an HMAC: without
    the master key, someone with write access to the database cannot recompute the chain
    after editing, deleting or truncating it, which a plain hash chain would allow.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key

    async def append(self, conn: Conn, records: Sequence[AuditRecord]) -> None:
        await append(conn, records, self._key)

    async def verify(self, conn: Conn, chain: str, *, batch: int = 1000) -> list[ChainProblem]:
        return await verify(conn, chain, self._key, batch=batch)


async def start(conn: Conn, chain: str) -> None:
    """Create ``chain``'s head (seq 0) inside the transaction that creates its app.

    :func:`append` never creates the head of an existing app's chain: only this call, made
    while the app row is new, may start one.
    """
    await insert_ignore(conn, audit_heads, {"chain": chain, "seq": 0, "hash": GENESIS})


def _missing_head() -> VaultError:
    return VaultError(
        ErrorCode.AUDIT_UNAVAILABLE,
        "The audit trail's head record is missing, so nothing can be recorded; "
        "run `grantvault audit verify` and restore the database.",
    )


async def append(conn: Conn, records: Sequence[AuditRecord], key: bytes) -> None:
    """Chain and insert ``records`` inside the caller's write transaction.

    The caller's transaction is the unit of atomicity: the action and its audit rows commit
    together or not at all.
    """
    by_chain: dict[str, list[AuditRecord]] = {}
    for record in records:
        by_chain.setdefault(record.chain, []).append(record)
    rows: list[dict[str, Any]] = []
    for chain in sorted(by_chain):  # fixed order: no lock-order deadlocks between replicas
        head = (await conn.execute(_head_query(conn), {"chain": chain})).first()
        if head is None:
            if await _has_events(conn, chain) or await _is_app(conn, chain):
                # Events without a head: the head row was deleted. An app without either:
                # its whole trail was deleted (apps start their chain when created). Never
                # restart the chain over lost history; refuse until an operator looks.
                raise _missing_head()
            # First event of this chain. ON CONFLICT: another replica may create it meanwhile.
            await insert_ignore(conn, audit_heads, {"chain": chain, "seq": 0, "hash": GENESIS})
            head = (await conn.execute(_head_query(conn), {"chain": chain})).one()
        seq, prev = head.seq, head.hash
        for record in by_chain[chain]:
            seq += 1
            row = _row(key, record, seq, prev)
            prev = row["hash"]
            rows.append(row)
        await conn.execute(_MOVE_HEAD, {"head_chain": chain, "head_seq": seq, "head_hash": prev})
    if rows:
        await conn.execute(_INSERT_EVENTS, rows)


@dataclass(frozen=True)
class ChainProblem:
    chain: str
    seq: int | None
    problem: str


async def verify(conn: Conn, chain: str, key: bytes, *, batch: int = 1000) -> list[ChainProblem]:
    """Walk one chain from the start and report every inconsistency found.

    The head is read first and the walk stops at its sequence number: events appended while
    the walk runs (the vault keeps serving) are beyond that head and are checked next time.
    """
    problems: list[ChainProblem] = []
    head = (await conn.execute(sa.select(audit_heads).where(audit_heads.c.chain == chain))).first()
    limit_seq = head.seq if head is not None else None
    expected_seq, prev = 1, GENESIS
    last_seq = 0
    while True:
        stmt = sa.select(audit_events).where(
            audit_events.c.chain == chain, audit_events.c.seq > last_seq
        )
        if limit_seq is not None:
            stmt = stmt.where(audit_events.c.seq <= limit_seq)
        rows = (await conn.execute(stmt.order_by(audit_events.c.seq).limit(batch))).mappings().all()
        if not rows:
            break
        for row in rows:
            data = dict(row)
            if data["seq"] != expected_seq:
                problems.append(
                    ChainProblem(chain, data["seq"], f"expected seq {expected_seq}: rows missing")
                )
            if data["prev_hash"] != prev:
                problems.append(ChainProblem(chain, data["seq"], "link to previous row broken"))
            if not hmac.compare_digest(_hash(key, data["prev_hash"], data), data["hash"]):
                problems.append(ChainProblem(chain, data["seq"], "row content was modified"))
            prev = data["hash"]
            expected_seq = data["seq"] + 1
            last_seq = data["seq"]
    if head is None and last_seq:
        problems.append(ChainProblem(chain, None, "the chain's head record is missing"))
    if last_seq == 0 and await _is_app(conn, chain):
        # An app's chain holds at least its app.created event: an empty one was wiped.
        what = "events and head record" if head is None else "events"
        problems.append(
            ChainProblem(
                chain, None, f"the app exists but its audit chain is gone (its {what} deleted)"
            )
        )
    if head is not None and (head.seq != last_seq or head.hash != prev):
        problems.append(
            ChainProblem(chain, head.seq, f"chain ends at seq {last_seq}; head says {head.seq}")
        )
    return problems


async def _has_events(conn: Conn, chain: str) -> bool:
    found = await conn.execute(
        sa.select(audit_events.c.id).where(audit_events.c.chain == chain).limit(1)
    )
    return found.first() is not None


async def _is_app(conn: Conn, chain: str) -> bool:
    found = await conn.execute(sa.select(apps.c.id).where(apps.c.id == chain).limit(1))
    return found.first() is not None


async def chains(conn: Conn) -> list[str]:
    """Every chain: those with a head, those with events, and every app's (a deleted head,
    or a deleted trail, must not hide one)."""
    heads = {r.chain for r in await conn.execute(sa.select(audit_heads.c.chain))}
    events = {r.chain for r in await conn.execute(sa.select(audit_events.c.chain).distinct())}
    owners = {r.id for r in await conn.execute(sa.select(apps.c.id))}
    return sorted(heads | events | owners)
