"""The audit trail in the portal: ``/portal/audit`` (every chain the operator may read,
including the vault-wide ``system`` chain for unscoped operators) and
``/portal/apps/{app}/audit`` (one app's chain). Filters by event, outcome, actor, grant and
date range; each row expands to its detail and has a page of its own; a CSV export (a GET
that changes nothing, served as a download); "verify the chain" with the result on the
page and the report to keep as the next anchor. All through the ``audit.*`` operations.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.events import SYSTEM_CHAIN, AuditEvent
from grantvault_server.errors import InvalidInput, VaultError
from grantvault_server.web.portal import (
    Auth,
    Automation,
    automation,
    error_page,
    paginate,
    posted_form,
    render,
    run_operation,
    session_auth,
)
from grantvault_server.web.portal_sections.secrets import app_info
from grantvault_server.web.security import PORTAL, protect

router = APIRouter(include_in_schema=False)

OUTCOMES = {"success": "Success", "denied": "Denied", "failure": "Failure"}
FILTERS = ("chain", "event", "outcome", "actor", "grant", "from", "to")
#: Most events one page or export reads (scanned newest first, a page of the operation at a
#: time); the page says so when there may be more.
SCAN_LIMIT = 5000
PAGE = 1000
CSV_COLUMNS = (
    "occurred_at",
    "app",
    "seq",
    "event",
    "outcome",
    "reason",
    "actor",
    "principal",
    "grant_id",
    "provider_id",
    "method",
    "url",
    "details",
    "hash",
)


def _cli(app: str | None) -> list[Automation]:
    scope = f" --app {app}" if app else ""
    return [
        automation(
            "Recent denials",
            f"grantvault audit list{scope} --outcome denied --since 24h --json",
            "audit.list",
        ),
        automation(
            "Export as JSON lines", f"grantvault audit export{scope} --json", "audit.export"
        ),
        automation(
            "Verify the chain (keep the report as the next anchor)",
            f"grantvault audit verify{scope} --json > anchor.json",
            "audit.verify",
        ),
    ]


def actor_of(actor: Any) -> str:
    """An event's actor in words: who did it (an operator, an API key, the CLI ...)."""
    if not isinstance(actor, dict):
        return str(actor or "—")
    kind = str(actor.get("type", "actor"))
    if kind == "operator_account":
        return f"operator {actor.get('name')} ({actor.get('role')})"
    if kind == "api_key":
        return f"API key {actor.get('key_prefix')}…"
    named = actor.get("name") or actor.get("id") or actor.get("sub")
    return f"{kind.replace('_', ' ')} {named}" if named else kind.replace("_", " ")


def _filters(request: Request) -> dict[str, str]:
    return {k: request.query_params.get(k, "").strip() for k in FILTERS}


def _day(text: str, label: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput(f"{label}: a date such as 2026-12-07; got {text!r}.") from None


async def _events(auth: Auth, chain: str | None, f: dict[str, str]) -> tuple[list[Any], bool]:
    """The events matching ``f``, newest first, and whether the scan stopped at its limit.

    Event, outcome, grant and the start date are the operation's own filters; actor (a
    part of it) and the end date are applied to its pages here."""
    start = _day(f["from"], "from")
    end = _day(f["to"], "to")
    params: dict[str, Any] = {
        "app": chain,
        "event": f["event"] or None,
        "outcome": f["outcome"] or None,
        "grant_id": f["grant"] or None,
        "since": start.isoformat() if start else None,
    }
    actor = f["actor"].lower()
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    scanned = 0
    while True:
        page = await run_operation(auth, "audit.export", limit=PAGE, cursor=cursor, **params)
        for event in page["events"]:
            said = f"{actor_of(event['actor'])} {event['actor']}".lower()
            if actor and actor not in said:
                continue
            if end is not None and event["occurred_at"] >= (end + timedelta(days=1)).isoformat():
                continue
            found.append(event)
        scanned += len(page["events"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found, False
        if scanned >= SCAN_LIMIT:
            return found, True


async def _chains(auth: Auth) -> list[tuple[str, str]]:
    """The chains the operator may pick: its apps, and the system chain when unscoped."""
    listed = await run_operation(auth, "apps.list")
    chains = [(a["app_id"], a["name"]) for a in listed["apps"]]
    if auth.principal.apps is None:
        chains.append((SYSTEM_CHAIN, "system (operators, refusals, master key)"))
    return chains


async def _page(
    request: Request,
    auth: Auth,
    app: str | None,
    *,
    status: int = 200,
    verified: dict[str, Any] | None = None,
) -> Response:
    f = _filters(request)
    error: VaultError | None = None
    try:
        info = await app_info(auth, app) if app is not None else None
        chain = info["app_id"] if info is not None else (f["chain"] or None)
        chains = await _chains(auth)
    except VaultError as exc:
        return error_page(auth, exc, back="/portal/apps" if app else "/portal/")
    try:
        events, truncated = await _events(auth, chain, f)
    except VaultError as exc:
        if exc.status == 403:
            return error_page(auth, exc)
        events, truncated, error, status = [], False, exc, exc.status
    shown, pager = paginate(events, request)
    base = f"/portal/apps/{quote(info['name'], safe='')}/audit" if info else "/portal/audit"
    query = urlencode({k: v for k, v in f.items() if v})
    return render(
        auth,
        "audit.html",
        section="apps" if info else "audit",
        status=status,
        error=error,
        app=info,
        base=base,
        events=shown,
        matched=len(events),
        truncated=truncated,
        filters=f,
        filtered=any(f.values()),
        chains=chains,
        names=dict(chains),
        event_names=sorted(e.value for e in AuditEvent),
        outcomes=OUTCOMES,
        pager=pager,
        pager_base=f"{base}?{query}&" if query else f"{base}?",
        export_href=f"{base}/export.csv" + (f"?{query}" if query else ""),
        verified=verified,
        verified_json=json.dumps(verified, indent=2) if verified else None,
        pretty=lambda value: json.dumps(value, indent=2, sort_keys=True),
        actor_of=actor_of,
        cli=_cli(info["name"] if info else None),
    )


@router.get("/portal/audit")
async def audit_page(request: Request) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _page(request, auth, None)


@router.get("/portal/apps/{app}/audit")
async def app_audit_page(request: Request, app: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _page(request, auth, app)


async def _csv(request: Request, app: str | None) -> Response:
    """The matching events as CSV, a download; reading them changes nothing."""
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    f = _filters(request)
    try:
        info = await app_info(auth, app) if app is not None else None
        chain = info["app_id"] if info is not None else (f["chain"] or None)
        events, _ = await _events(auth, chain, f)
    except VaultError as exc:
        return error_page(auth, exc)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for e in events:
        row = [e.get(c) for c in CSV_COLUMNS]
        row[CSV_COLUMNS.index("details")] = json.dumps(e.get("details"), sort_keys=True)
        row[CSV_COLUMNS.index("actor")] = json.dumps(e.get("actor"), sort_keys=True)
        writer.writerow(["" if v is None else v for v in row])
    stamp = auth.vault.clock.now().strftime("%Y%m%dT%H%M%SZ")
    name = f"grantvault-audit-{info['name'] if info else 'all'}-{stamp}.csv"
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "no-store",
    }
    response = Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)
    return protect(response, PORTAL)


@router.get("/portal/audit/export.csv")
async def audit_csv(request: Request) -> Response:
    return await _csv(request, None)


@router.get("/portal/apps/{app}/audit/export.csv")
async def app_audit_csv(request: Request, app: str) -> Response:
    return await _csv(request, app)


async def _verify(request: Request, app: str | None) -> Response:
    """Check the hash chains (``audit.verify``: a read, open to auditors; a POST only
    because the admin API's takes a document) and show the result on the page."""
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    chosen = form.get("chain")
    try:
        info = await app_info(auth, app) if app is not None else None
        target = (
            info["app_id"] if info else (chosen if isinstance(chosen, str) and chosen else None)
        )
        verified = await run_operation(auth, "audit.verify", app=target)
    except VaultError as exc:
        return error_page(auth, exc)
    return await _page(request, auth, app, verified=verified)


@router.post("/portal/audit/verify")
async def audit_verify(request: Request) -> Response:
    return await _verify(request, None)


@router.post("/portal/apps/{app}/audit/verify")
async def app_audit_verify(request: Request, app: str) -> Response:
    return await _verify(request, app)


@router.get("/portal/audit/{chain}/{seq}")
async def audit_event(request: Request, chain: str, seq: int) -> Response:
    """One event in full, with a link to its grant and the grant's other events."""
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    found: dict[str, Any] | None = None
    cursor: str | None = None
    try:
        while found is None:
            page = await run_operation(auth, "audit.export", app=chain, limit=PAGE, cursor=cursor)
            found = next((e for e in page["events"] if e["seq"] == seq), None)
            cursor = page["next_cursor"]
            oldest = page["events"][-1]["seq"] if page["events"] else 0
            if found is None and (cursor is None or oldest < seq):
                raise VaultError(ErrorCode.NOT_FOUND, f"No event {seq} in this audit chain.")
    except VaultError as exc:
        return error_page(auth, exc, back="/portal/audit")
    names = dict(await _chains(auth))
    return render(
        auth,
        "audit_event.html",
        section="audit",
        event=found,
        chain_name=names.get(chain, found["app"]),
        pretty=lambda value: json.dumps(value, indent=2, sort_keys=True),
        actor_of=actor_of,
        cli=[
            automation(
                "This chain's events",
                f"grantvault audit list --app {found['app']} --json",
                "audit.list",
            )
        ],
    )
