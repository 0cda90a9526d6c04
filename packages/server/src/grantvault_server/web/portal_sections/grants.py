"""An app's grants in the portal: a filtered list (status, secret or provider, principal),
creating a grant for a managed secret, a detail page (last use, the policies that govern
it, a link to its audit events) and revoking after a confirmation naming the grant. Every
action is the ``grants.*`` operation the admin API runs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError
from grantvault_server.web.portal import (
    Auth,
    Automation,
    automation,
    error_page,
    form_text,
    paginate,
    posted_form,
    render,
    run_operation,
    see_other,
    session_auth,
)
from grantvault_server.web.portal_sections.secrets import app_base, app_info, done_notice

router = APIRouter(include_in_schema=False)

NOTICES = {
    "grant_created": "Grant created. Its principal can use the secret from now on.",
    "grant_revoked": "The grant was revoked. Calls that use it are refused from now on.",
}
STATUSES = {"active": "Active", "revoked": "Revoked", "expired": "Expired"}
PRINCIPALS = [
    ("system", "The app itself (system)"),
    ("user", "One end user (IdP subject)"),
    ("group", "A group of end users"),
]
TTLS = [("", "Never"), ("1h", "in 1 hour"), ("24h", "in 24 hours"), ("7d", "in 7 days")]
TTLS += [("30d", "in 30 days"), ("90d", "in 90 days")]
#: The most grants one listing reads (the operation's own maximum page).
LIST_LIMIT = 1000


def _cli(app: str, grant: str = "GRANT_ID") -> list[Automation]:
    return [
        automation(
            "List grants",
            f"grantvault grants list --app {app} --status active --json",
            "grants.list",
            app=app,
        ),
        automation(
            "Grant a secret to the app",
            "grantvault grants create --secret SECRET_ID --principal system --json",
            "grants.create",
            managed_secret_id="SECRET_ID",  # noqa: S106  (a placeholder)
        ),
        automation(
            "Its audit events",
            f"grantvault audit list --app {app} --grant {grant} --json",
            "audit.list",
        ),
        automation(
            "Revoke",
            f"grantvault grants revoke {grant} --reason 'no longer needed' --json",
            "grants.revoke",
            grant_id=grant,
        ),
    ]


def _principal(g: dict[str, Any]) -> str:
    return str(g["principal_type"]) + (f":{g['principal_id']}" if g.get("principal_id") else "")


async def _all_grants(auth: Auth, app: str, **filters: str | None) -> list[dict[str, Any]]:
    listed = await run_operation(auth, "grants.list", app=app, limit=LIST_LIMIT, **filters)
    return list(listed["grants"])


async def _list_page(
    request: Request,
    auth: Auth,
    app: str,
    *,
    status: int = 200,
    error: VaultError | None = None,
    typed: dict[str, str] | None = None,
) -> Response:
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in ("status", "secret", "principal")}
    try:
        info = await app_info(auth, app)
        secrets = (await run_operation(auth, "secrets.list", app=info["name"]))["secrets"]
        rows = await _all_grants(
            auth,
            info["name"],
            status=filters["status"] or None,
            secret=filters["secret"] or None,
        )
    except VaultError as exc:
        return error_page(auth, exc, back="/portal/apps")
    wanted = filters["principal"].lower()
    rows = [g for g in rows if not wanted or wanted in _principal(g).lower()]
    rows.sort(key=lambda g: str(g["created_at"]), reverse=True)
    shown, pager = paginate(rows, request)
    return render(
        auth,
        "grants.html",
        section="apps",
        status=status,
        error=error,
        notice=done_notice(request, NOTICES),
        app=info,
        grants=shown,
        shown_total=len(rows),
        filters=filters,
        filtered=any(filters.values()),
        pager_base=f"{app_base(info['name'])}/grants?{urlencode(filters)}&",
        pager=pager,
        statuses=STATUSES,
        secrets=secrets,
        principals=PRINCIPALS,
        ttls=TTLS,
        typed=typed or {},
        principal_of=_principal,
        cli=_cli(info["name"]),
    )


@router.get("/portal/apps/{app}/grants")
async def grants_page(request: Request, app: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _list_page(request, auth, app)


@router.post("/portal/apps/{app}/grants")
async def grant_create(request: Request, app: str) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    typed = {
        k: form_text(form, k)
        for k in ("managed_secret_id", "principal_type", "principal_id", "label", "ttl")
    }
    try:
        info = await app_info(auth, app)
        secrets = (await run_operation(auth, "secrets.list", app=info["name"]))["secrets"]
        if typed["managed_secret_id"] not in [s["managed_secret_id"] for s in secrets]:
            raise VaultError(ErrorCode.INVALID_REQUEST, "Choose one of this app's managed secrets.")
        created = await run_operation(
            auth,
            "grants.create",
            managed_secret_id=typed["managed_secret_id"],
            principal_type=typed["principal_type"] or "system",
            principal_id=typed["principal_id"] or None,
            label=typed["label"] or None,
            ttl=typed["ttl"] or None,
        )
    except VaultError as exc:
        if exc.status in (403, 404):
            return error_page(auth, exc, back=f"{app_base(app)}/grants")
        return await _list_page(request, auth, app, status=exc.status, error=exc, typed=typed)
    grant = quote(str(created["grant_id"]), safe="")
    return see_other(f"{app_base(app)}/grants/{grant}?done=grant_created")


async def _grant(auth: Auth, app: str, grant_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    info = await app_info(auth, app)
    for g in await _all_grants(auth, info["name"]):
        if g["grant_id"] == grant_id:
            return info, g
    raise VaultError(ErrorCode.GRANT_NOT_FOUND, f"No grant {grant_id!r} in this app.")


async def _grant_page(
    request: Request, auth: Auth, app: str, grant_id: str, template: str
) -> Response:
    try:
        info, grant = await _grant(auth, app, grant_id)
        events = await run_operation(
            auth, "audit.list", app=info["app_id"], grant_id=grant_id, limit=5
        )
    except VaultError as exc:
        return error_page(auth, exc, back=f"{app_base(app)}/grants")
    return render(
        auth,
        template,
        section="apps",
        notice=done_notice(request, NOTICES),
        app=info,
        grant=grant,
        statuses=STATUSES,
        events=events["events"],
        principal=_principal(grant),
        cli=_cli(info["name"], grant_id)[2:],
    )


@router.get("/portal/apps/{app}/grants/{grant_id}")
async def grant_page(request: Request, app: str, grant_id: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _grant_page(request, auth, app, grant_id, "grant.html")


@router.get("/portal/apps/{app}/grants/{grant_id}/revoke")
async def grant_revoke_confirm(request: Request, app: str, grant_id: str) -> Response:
    """The confirmation step: names the grant, its secret and principal; the POST revokes."""
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _grant_page(request, auth, app, grant_id, "grant_revoke.html")


@router.post("/portal/apps/{app}/grants/{grant_id}/revoke")
async def grant_revoke(request: Request, app: str, grant_id: str) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    try:
        await _grant(auth, app, grant_id)
        await run_operation(
            auth, "grants.revoke", grant_id=grant_id, reason=form_text(form, "reason") or None
        )
    except VaultError as exc:
        return error_page(auth, exc, back=f"{app_base(app)}/grants")
    return see_other(f"{app_base(app)}/grants/{quote(grant_id, safe='')}?done=grant_revoked")
