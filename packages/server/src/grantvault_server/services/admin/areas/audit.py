"""``audit.*``: read, export and verify the audit trail.

Reading is the auditor's job, so every operation here needs only ``read``. What a principal
may read follows its app scope: an operator limited to some apps reads those apps' chains
and nothing else. The ``system`` chain (operators, master-key rotations, refused admin
requests of every app) is vault-wide, so only an unscoped principal reads or verifies it.

Exports are paged by a cursor (newest first, ``next_cursor`` until the end) so neither the
admin API nor the CLI ever holds an unbounded answer; the CLI walks the pages.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.events import SYSTEM_CHAIN, AuditEvent, Outcome
from grantvault_server.errors import InvalidInput, VaultError
from grantvault_server.services import apps as app_service, audit_log
from grantvault_server.services.admin.durations import parse_duration
from grantvault_server.services.admin.registry import OpContext, Params, operation
from grantvault_server.storage.tables import apps, audit_events
from grantvault_server.timefmt import iso

#: Most events in one answer (a page of an export, or one list).
MAX_PAGE = 1000


class AuditFilters(Params):
    #: App name or id, or ``system``; ``None``: every chain the principal may read.
    app: str | None = None
    event: str | None = None
    grant_id: str | None = None
    outcome: str | None = None
    #: A duration back from now (``24h``, ``7d``) or an ISO 8601 time.
    since: str | None = None


class ListAudit(AuditFilters):
    limit: int = 50


class ExportAudit(AuditFilters):
    #: Events in this page.
    limit: int = MAX_PAGE
    #: ``next_cursor`` of the previous page.
    cursor: str | None = None


class VerifyAudit(Params):
    #: App name or id, or ``system``; ``None``: every chain the principal may read.
    app: str | None = None
    #: An earlier ``audit verify`` report: also detect a rollback or a truncated tail.
    anchor: dict[str, Any] | None = None


def _vault_wide(ctx: OpContext) -> None:
    """The system chain belongs to no app: an app-scoped principal may not read it."""
    ctx.require("read")
    if ctx.principal.apps is not None:
        raise VaultError(
            ErrorCode.FORBIDDEN,
            "The system chain is vault-wide; an operator limited to some apps reads only "
            "those apps' audit trails.",
        )


async def _visible_apps(ctx: OpContext) -> list[str]:
    """Ids of the existing apps an app-scoped principal may read."""
    assert ctx.principal.apps is not None
    return sorted(
        a.id for a in await app_service.list_apps(ctx.vault) if a.id in ctx.principal.apps
    )


async def _chains(ctx: OpContext, app: str | None) -> list[str] | None:
    """The chains to read (``None``: all of them), or refuse."""
    if app == SYSTEM_CHAIN:
        _vault_wide(ctx)
        return [SYSTEM_CHAIN]
    if app is not None:
        return [(await ctx.app(app, "read")).id]
    ctx.require("read")
    return None if ctx.principal.apps is None else await _visible_apps(ctx)


def _since(text: str, now: datetime) -> datetime:
    try:
        return now - parse_duration(text, "since")
    except InvalidInput:
        pass
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            "since: a duration back from now (30m, 24h, 7d) or an ISO 8601 time "
            f"(2026-01-02T03:04:05Z); got {text!r}."
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)


def _cursor(row: Any) -> str:
    raw = json.dumps([row.occurred_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str) -> tuple[datetime, int]:
    try:
        at, row_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("naive")
        return when, int(row_id)
    except (ValueError, TypeError):
        raise InvalidInput("cursor: pass the next_cursor of the previous page as is.") from None


def _row(r: Any) -> dict[str, Any]:
    """One event as ``audit list --json`` has always printed it."""
    return {
        "seq": r.seq,
        "occurred_at": iso(r.occurred_at),
        "app": r.app_name or r.chain,
        "app_id": r.chain,
        "event": r.event,
        "outcome": r.outcome,
        "reason": r.reason,
        "actor": r.actor,
        "principal": r.principal,
        "grant_id": r.grant_id,
        "provider_id": r.provider_id,
        "method": r.method,
        "url": r.url,
        "details": r.details,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
    }


async def _page(
    ctx: OpContext, filters: AuditFilters, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Events newest first, after ``cursor``; and the cursor of the next page, if any.

    The query is ``audit_log.query``'s with two additions that module does not offer: a set
    of chains (an app-scoped principal's apps) and a keyset cursor (occurred_at, id), which
    stays correct while new events arrive at the head, unlike an offset.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be 1-{MAX_PAGE}.")
    if filters.event is not None and filters.event not in {e.value for e in AuditEvent}:
        raise InvalidInput(
            f"Unknown event {filters.event!r}; events are {', '.join(e.value for e in AuditEvent)}."
        )
    if filters.outcome is not None and filters.outcome not in {o.value for o in Outcome}:
        raise InvalidInput("outcome is success, denied or failure.")
    chains = await _chains(ctx, filters.app)
    stmt = sa.select(audit_events, apps.c.name.label("app_name")).outerjoin(
        apps, apps.c.id == audit_events.c.chain
    )
    if chains is not None:
        stmt = stmt.where(audit_events.c.chain.in_(chains))
    if filters.event is not None:
        stmt = stmt.where(audit_events.c.event == filters.event)
    if filters.grant_id is not None:
        stmt = stmt.where(audit_events.c.grant_id == filters.grant_id)
    if filters.outcome is not None:
        stmt = stmt.where(audit_events.c.outcome == filters.outcome)
    if filters.since is not None:
        stmt = stmt.where(
            audit_events.c.occurred_at >= _since(filters.since, ctx.vault.clock.now())
        )
    if cursor is not None:
        at, row_id = _after(cursor)
        stmt = stmt.where(
            sa.or_(
                audit_events.c.occurred_at < at,
                sa.and_(audit_events.c.occurred_at == at, audit_events.c.id < row_id),
            )
        )
    stmt = stmt.order_by(audit_events.c.occurred_at.desc(), audit_events.c.id.desc())
    async with ctx.vault.db.read() as conn:
        rows = (await conn.execute(stmt.limit(limit + 1))).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return [_row(r) for r in rows], (_cursor(rows[-1]) if more else None)


@operation(
    "audit.list",
    "GET",
    "/audit",
    permission="read",
    summary="Recent audit events, newest first.",
)
async def list_events(ctx: OpContext, params: ListAudit) -> dict[str, Any]:
    events, _ = await _page(ctx, params, params.limit, None)
    return {"events": events}


@operation(
    "audit.export",
    "GET",
    "/audit/export",
    permission="read",
    summary="Audit events, newest first, one page at a time (follow next_cursor).",
)
async def export_events(ctx: OpContext, params: ExportAudit) -> dict[str, Any]:
    events, following = await _page(ctx, params, params.limit, params.cursor)
    return {"events": events, "next_cursor": following}


def _check_anchor(anchor: dict[str, Any]) -> None:
    chains = anchor.get("chains", [])
    if not isinstance(chains, list) or not all(
        isinstance(c, dict) and isinstance(c.get("chain"), str) for c in chains
    ):
        raise InvalidInput(
            "anchor: pass an earlier `audit verify --json` report (its chains list) as is."
        )


@operation(
    "audit.verify",
    "POST",
    "/audit/verify",
    permission="read",
    summary="Check the hash chains: detects edited, deleted and reordered rows.",
)
async def verify(ctx: OpContext, params: VerifyAudit) -> dict[str, Any]:
    """POST only because an anchor is a JSON document; nothing changes."""
    if params.anchor is not None:
        _check_anchor(params.anchor)
    if params.app == SYSTEM_CHAIN:
        _vault_wide(ctx)
        return await audit_log.verify(ctx.vault, SYSTEM_CHAIN, anchor=params.anchor)
    if params.app is not None:
        app = await ctx.app(params.app, "read")
        return await audit_log.verify(ctx.vault, app.id, anchor=params.anchor)
    ctx.require("read")
    if ctx.principal.apps is None:
        return await audit_log.verify(ctx.vault, None, anchor=params.anchor)
    # An app-scoped principal: its apps' chains, one by one (the anchor's other chains are
    # not its to judge).
    chains: list[dict[str, Any]] = []
    for app_id in await _visible_apps(ctx):
        chains += (await audit_log.verify(ctx.vault, app_id, anchor=params.anchor))["chains"]
    return {"ok": all(not c["problems"] for c in chains), "chains": chains}
