"""Quota and rate-limit counters of policies, shared by every replica (decision 0011).

The evaluator (``policy.engine``) never decides a counter: for a call every other rule allows
it returns :class:`~grantvault_server.policy.compile.Charge` objects, and
:func:`apply_charges` applies them inside the write transaction that also claims the
request's nonce and writes its audit row (``services.group_commit``), so a call is charged
exactly when its token is released.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError
from grantvault_server.policy.compile import Charge
from grantvault_server.storage.db import Conn, Database
from grantvault_server.storage.tables import policy_counters
from grantvault_server.timefmt import iso


def _refusal(charge: Charge, now: datetime) -> VaultError:
    """The 429 for a used-up counter: ``quota_exceeded`` or ``rate_limit_exceeded``, with
    ``Retry-After`` at the end of the window (and the budget headers for a rate limit)."""
    wait = max(1, math.ceil((charge.window_end - now).total_seconds()))
    common: dict[str, Any] = {
        "policy": charge.policy,
        "policy_version": charge.policy_version,
        "rule": charge.rule,
        "per": charge.per,
        "limit": charge.limit,
        "retry_after": wait,
        "resets_at": iso(charge.window_end),
    }
    window = charge.window_end - charge.window_start
    if charge.rule == "quota":
        span = _span(window.total_seconds())
        return VaultError(
            ErrorCode.QUOTA_EXCEEDED,
            f"{charge.policy}'s quota of {charge.limit} calls per {span} (per {charge.per}) "
            f"is used up; it resets at {iso(charge.window_end)} (in {wait} s).",
            headers={"Retry-After": str(wait)},
            **common,
        )
    seconds = int(window.total_seconds())
    reset_epoch = int(charge.window_end.timestamp())
    return VaultError(
        ErrorCode.RATE_LIMIT_EXCEEDED,
        f"{charge.policy}'s rate limit of {charge.limit} calls per minute (per {charge.per}) "
        f"is used up; retry after {wait} s.",
        headers={
            "Retry-After": str(wait),
            "RateLimit-Policy": f'"{charge.policy}";q={charge.limit};w={seconds}',
            "RateLimit": f'"{charge.policy}";r=0;t={wait}',
            "X-RateLimit-Limit": str(charge.limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset_epoch),
        },
        scope="policy",
        window_seconds=seconds,
        **common,
    )


def _span(seconds: float) -> str:
    if seconds <= 60:
        return "minute"
    if seconds <= 3600:
        return "hour"
    if seconds <= 86400:
        return "day"
    return "month"


_INSERT_ZERO: dict[str, Any] = {
    name: module.insert(policy_counters).on_conflict_do_nothing()
    for name, module in (("postgresql", postgresql), ("sqlite", sqlite))
}


async def apply_charges(
    conn: Conn, calls: Sequence[Sequence[Charge]], now: datetime
) -> list[VaultError | None]:
    """Charge each call's counters, all or nothing per call, inside the caller's write
    transaction; the refusal of a call whose counter is used up (nothing of it charged).

    Exact across replicas: the counter rows are created if missing, then locked (PostgreSQL
    ``FOR UPDATE``; SQLite's write transaction is already exclusive) in one sorted order, so
    concurrent batches serialise on them and cannot deadlock; the new counts are computed here
    and written back before the transaction commits with the audit rows.
    """
    keyed: dict[tuple[str, str], Charge] = {}
    for call in calls:
        for charge in call:
            keyed.setdefault((charge.app_id, charge.counter), charge)
    if not keyed:
        return [None] * len(calls)
    order = sorted(keyed)
    await conn.execute(
        _INSERT_ZERO[conn.dialect.name],
        [
            {
                "app_id": app_id,
                "counter": counter,
                "window_start": keyed[(app_id, counter)].window_start,
                "window_end": keyed[(app_id, counter)].window_end,
                "count": 0,
            }
            for app_id, counter in order
        ],
    )
    select = _LOCKED_COUNTS[conn.dialect.name]
    params = {"apps": sorted({a for a, _ in order}), "counters": [c for _, c in order]}
    counts = {(r.app_id, r.counter): int(r.used) for r in await conn.execute(select, params)}
    start = dict(counts)
    outcomes: list[VaultError | None] = []
    for call in calls:
        keys = [(c.app_id, c.counter) for c in call]
        over = [c for c, k in zip(call, keys, strict=True) if counts[k] + 1 > c.limit]
        if over:
            # The longest used-up window is the one worth reporting: waiting for a shorter
            # one would only meet the longer refusal again.
            outcomes.append(_refusal(max(over, key=lambda c: c.window_end), now))
            continue
        for k in keys:
            counts[k] += 1
        outcomes.append(None)
    changed = [
        {"a": app_id, "c": counter, "n": counts[(app_id, counter)]}
        for app_id, counter in order
        if counts[(app_id, counter)] != start[(app_id, counter)]
    ]
    if changed:
        await conn.execute(_UPDATE_COUNT, changed)
    return outcomes


def _locked_counts(dialect: str) -> Any:
    """The batch's counter rows, locked in key order on PostgreSQL (built once per dialect:
    the key lists are expanding parameters, so the statement stays cached)."""
    stmt = (
        sa.select(
            policy_counters.c.app_id,
            policy_counters.c.counter,
            policy_counters.c.count.label("used"),
        )
        .where(
            policy_counters.c.app_id.in_(sa.bindparam("apps", expanding=True)),
            policy_counters.c.counter.in_(sa.bindparam("counters", expanding=True)),
        )
        .order_by(policy_counters.c.app_id, policy_counters.c.counter)
    )
    return stmt.with_for_update() if dialect == "postgresql" else stmt


_LOCKED_COUNTS = {name: _locked_counts(name) for name in ("postgresql", "sqlite")}

_UPDATE_COUNT = (
    sa.update(policy_counters)
    .where(
        policy_counters.c.app_id == sa.bindparam("a"),
        policy_counters.c.counter == sa.bindparam("c"),
    )
    .values(count=sa.bindparam("n"))
)


async def purge_counters(db: Database, now: datetime) -> int:
    """Drop counters whose window has ended (they can never be charged again)."""
    async with db.write() as conn:
        result = await conn.execute(
            sa.delete(policy_counters).where(policy_counters.c.window_end < now)
        )
    return int(result.rowcount or 0)
