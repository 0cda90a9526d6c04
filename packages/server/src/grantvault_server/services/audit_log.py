"""Reading the audit trail: filtered queries, exports and chain verification."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from grantvault_server.audit import chain
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.errors import InvalidInput
from grantvault_server.services.apps import _iso, find_app
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import apps, audit_events

CSV_FIELDS = [
    "seq", "occurred_at", "app", "event", "outcome", "reason", "actor", "principal",
    "grant_id", "provider_id", "method", "url", "details", "hash",
]  # fmt: skip


def actor_label(actor: dict[str, Any]) -> str:
    if actor.get("type") == "api_key":
        caller = f" ({actor['caller']})" if actor.get("caller") else ""
        return f"{actor.get('key_prefix', '?')}…{caller}"
    return f"{actor.get('type', '?')}:{actor.get('user') or actor.get('via', '')}"


async def query(
    vault: Vault,
    *,
    app: str | None = None,
    event: str | None = None,
    grant_id: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    if event is not None and event not in {e.value for e in AuditEvent}:
        raise InvalidInput(
            f"Unknown event {event!r}; events are {', '.join(e.value for e in AuditEvent)}."
        )
    if outcome is not None and outcome not in {o.value for o in Outcome}:
        raise InvalidInput("outcome is success, denied or failure.")
    if limit < 1:
        raise InvalidInput("limit must be at least 1.")
    stmt = sa.select(audit_events, apps.c.name.label("app_name")).outerjoin(
        apps, apps.c.id == audit_events.c.chain
    )
    async with vault.db.read() as conn:
        if app is not None:
            stmt = stmt.where(audit_events.c.chain == (await find_app(conn, app)).id)
        if event is not None:
            stmt = stmt.where(audit_events.c.event == event)
        if grant_id is not None:
            stmt = stmt.where(audit_events.c.grant_id == grant_id)
        if outcome is not None:
            stmt = stmt.where(audit_events.c.outcome == outcome)
        if since is not None:
            stmt = stmt.where(audit_events.c.occurred_at >= since)
        rows = (
            (
                await conn.execute(
                    stmt.order_by(
                        audit_events.c.occurred_at.desc(), audit_events.c.id.desc()
                    ).limit(limit)
                )
            )
            .mappings()
            .all()
        )
    return [
        {
            "seq": r["seq"],
            "occurred_at": _iso(r["occurred_at"]),
            "app": r["app_name"] or r["chain"],
            "app_id": r["chain"],
            "event": r["event"],
            "outcome": r["outcome"],
            "reason": r["reason"],
            "actor": r["actor"],
            "principal": r["principal"],
            "grant_id": r["grant_id"],
            "provider_id": r["provider_id"],
            "method": r["method"],
            "url": r["url"],
            "details": r["details"],
            "hash": r["hash"],
        }
        for r in rows
    ]


async def verify(vault: Vault, app: str | None = None) -> dict[str, Any]:
    reports = []
    async with vault.db.read() as conn:
        names = {r.id: r.name for r in await conn.execute(sa.select(apps.c.id, apps.c.name))}
        targets = [(await find_app(conn, app)).id] if app else await chain.chains(conn)
        for target in targets:
            problems = await chain.verify(conn, target)
            count = (
                await conn.execute(sa.select(sa.func.count()).where(audit_events.c.chain == target))
            ).scalar_one()
            reports.append(
                {
                    "chain": target,
                    "name": names.get(target, target),
                    "events": count,
                    "problems": [{"seq": p.seq, "problem": p.problem} for p in problems],
                }
            )
    return {"ok": all(not r["problems"] for r in reports), "chains": reports}
