"""Reading the audit trail: filtered queries, exports and chain verification."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from grantvault_server.audit import chain
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import SYSTEM_CHAIN, AuditEvent, Outcome
from grantvault_server.audit.redact import REDACTED, redact_headers, redact_url
from grantvault_server.errors import InvalidInput
from grantvault_server.observability import redact
from grantvault_server.services.apps import App, find_app
from grantvault_server.services.grants import load_grant, principal_label
from grantvault_server.services.tokens import credential_strings
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn
from grantvault_server.storage.tables import apps, audit_events, audit_heads
from grantvault_server.timefmt import iso

CSV_FIELDS = [
    "seq", "occurred_at", "app", "event", "outcome", "reason", "actor", "principal",
    "grant_id", "provider_id", "method", "url", "details", "prev_hash", "hash",
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
        if app == SYSTEM_CHAIN:
            stmt = stmt.where(audit_events.c.chain == SYSTEM_CHAIN)
        elif app is not None:
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
            "occurred_at": iso(r["occurred_at"]),
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
            "prev_hash": r["prev_hash"],
            "hash": r["hash"],
        }
        for r in rows
    ]


async def verify(
    vault: Vault, app: str | None = None, *, anchor: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Check every chain (or one); with ``anchor``, also check nothing was rolled back.

    The report lists each chain's head. Kept somewhere the database's administrators cannot
    write (a ticket, a log store, object storage with retention), an earlier report is an
    anchor: a later ``verify`` against it detects a truncated tail or a restored backup,
    which no chain can detect on its own.
    """
    anchored = {c["chain"]: c.get("head") for c in (anchor or {}).get("chains", [])}
    reports = []
    async with vault.db.read() as conn:
        names = {r.id: r.name for r in await conn.execute(sa.select(apps.c.id, apps.c.name))}
        if app == SYSTEM_CHAIN:
            targets = [SYSTEM_CHAIN]
        else:
            targets = [(await find_app(conn, app)).id] if app else await chain.chains(conn)
        for target in targets:
            problems = await vault.audit.verify(conn, target)
            count = (
                await conn.execute(sa.select(sa.func.count()).where(audit_events.c.chain == target))
            ).scalar_one()
            head = (
                await conn.execute(
                    sa.select(audit_heads.c.seq, audit_heads.c.hash).where(
                        audit_heads.c.chain == target
                    )
                )
            ).first()
            found = [{"seq": p.seq, "problem": p.problem} for p in problems]
            if anchored.get(target):
                found += await _check_anchor(conn, target, anchored[target])
            reports.append(
                {
                    "chain": target,
                    "name": names.get(target, target),
                    "events": count,
                    "head": {"seq": head.seq, "hash": head.hash} if head is not None else None,
                    "problems": found,
                }
            )
        for missing in sorted(set(anchored) - set(targets)):
            if app is None:
                reports.append(
                    {
                        "chain": missing,
                        "name": names.get(missing, missing),
                        "events": 0,
                        "head": None,
                        "problems": [{"seq": None, "problem": "chain in the anchor is gone"}],
                    }
                )
    return {"ok": all(not r["problems"] for r in reports), "chains": reports}


async def _check_anchor(conn: Conn, chain_id: str, head: dict[str, Any]) -> list[dict[str, Any]]:
    """The anchored head row must still be there, unchanged."""
    try:
        seq, digest = int(head["seq"]), str(head["hash"])
    except (KeyError, TypeError, ValueError):
        raise InvalidInput(f"The anchor's entry for chain {chain_id} has no seq/hash.") from None
    if seq == 0:
        return []
    row = (
        await conn.execute(
            sa.select(audit_events.c.hash).where(
                audit_events.c.chain == chain_id, audit_events.c.seq == seq
            )
        )
    ).first()
    if row is None or row.hash != digest:
        return [
            {
                "seq": seq,
                "problem": "rolled back or truncated since the anchor: the anchored event is "
                "missing or different",
            }
        ]
    return []


MAX_AUDIT_BODY = 10_000


def _scrub(value: Any, secrets: list[str]) -> Any:
    """Replace credential values (and anything credential-shaped) in every string."""
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    return value


def _bounded(value: Any) -> Any:
    """Keep a body up to 10,000 bytes; replace a larger one by its size (wire protocol §2.8)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text.encode()) > MAX_AUDIT_BODY:
        return f"<body: {len(text.encode())} bytes>"
    return value


async def record_api_call(
    vault: Vault, app: App, actor: dict[str, Any], call: dict[str, Any]
) -> None:
    """Store the SDK's row for a provider call it made, credentials stripped again here.

    The grant must belong to the caller's app: another app's grant id is not found.
    """
    async with vault.db.write() as conn:
        grant = await load_grant(conn, app, str(call["grant_id"]))
        # The SDK strips credential headers, but a provider may echo the key in an error body
        # ("Incorrect API key provided: sk-...") or a caller may log it in a custom header.
        call = _scrub(call, await credential_strings(vault, conn, app, grant.id))
        status = int(call.get("response_status") or 0)
        context = call.get("context") or {}
        details = {
            "token_generation": call.get("token_generation"),
            "request_headers": redact_headers(call.get("request_headers")),
            "request_body": _bounded(call.get("request_body")),
            "response_status": status,
            "response_headers": redact_headers(call.get("response_headers")),
            "response_body": _bounded(call.get("response_body")),
            "latency_ms": call.get("latency_ms"),
            "context": {str(k)[:64]: str(v)[:512] for k, v in list(context.items())[:20]},
        }
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=app.id,
                    event=AuditEvent.PROVIDER_API_CALL,
                    outcome=Outcome.SUCCESS if 0 < status < 400 else Outcome.FAILURE,
                    actor=actor,
                    reason=call.get("reason"),
                    principal=principal_label(grant.principal_type, grant.principal_id),
                    grant_id=grant.id,
                    provider_id=grant.slug,
                    method=str(call.get("method", "")).upper()[:16],
                    url=redact_url(str(call.get("url", ""))),
                    details=details,
                )
            ],
        )
