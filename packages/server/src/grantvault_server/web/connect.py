"""The hosted Connect pages the end user sees.

Server-rendered (the one Jinja environment of :mod:`grantvault_server.web.pages`) and usable
without JavaScript; scripts only hand the popup's fragment token to the server and deliver
the result to the opener. Every page is sent with the Connect header policy
(:data:`grantvault_server.web.security.CONNECT`: a strict CSP, no inline script,
``frame-ancestors 'none'``, ``Referrer-Policy: no-referrer``, ``Cache-Control: no-store``);
the browser is tied to the session by an HttpOnly cookie (see ``services.connect``), and
form posts carry a token derived from that cookie.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from starlette.responses import Response

from grantvault_server.services import connect
from grantvault_server.services.vault import Vault
from grantvault_server.timefmt import iso
from grantvault_server.web import pages
from grantvault_server.web.security import CONNECT, csrf_ok, csrf_token, set_browser_cookie

router = APIRouter(include_in_schema=False)

COOKIE = "gv_connect"
CSRF_PURPOSE = "connect"


def page(name: str, status: int = 200, form_action: str = "'self'", **context: Any) -> Response:
    policy = CONNECT.with_form_action(form_action)
    return pages.page(f"connect/{name}", policy, status, **context)


def redirect(url: str) -> Response:
    return pages.redirect(url, CONNECT)


def refused(exc: connect.FlowRefused) -> Response:
    status = 410 if exc.code in ("session_expired", "session_finished", "state_used") else 400
    return page("error.html", status=status, code=exc.code, message=exc.message)


def _csrf(browser: str) -> str:
    return csrf_token(browser, CSRF_PURPOSE)


def _vault(request: Request) -> Vault:
    return pages.vault_of(request)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@router.get("/sdk/oauth/connect")
async def widget_entry() -> Response:
    """What the popup widget opens (``/sdk/oauth/connect#session=...``)."""
    return page("widget.html")


@router.get("/connect/start")
async def start(request: Request, session: str = "") -> Response:
    """``connect_url``: trade the session token for a browser-bound cookie, then go on."""
    vault = _vault(request)
    try:
        row, cookie = await connect.open_session(vault, session, request.cookies.get(COOKIE))
    except connect.FlowRefused as exc:
        return refused(exc)
    response = redirect(f"/connect/s/{row.id}")
    if cookie is not None:
        set_browser_cookie(
            response,
            COOKIE,
            cookie,
            max_age=int(connect.SESSION_TTL.total_seconds()) + 60,
            secure=vault.settings.effective_public_base_url.startswith("https://"),
            path="/",
        )
    return response


@router.get("/connect/s/{session_id}")
async def session_home(request: Request, session_id: str) -> Response:
    vault = _vault(request)
    browser = request.cookies.get(COOKIE)
    try:
        session = await connect.browser_session(vault, session_id, browser)
    except connect.FlowRefused as exc:
        return refused(exc)
    assert browser is not None
    if session.status != "pending":
        return await _result(vault, session)
    configs = await connect.session_configs(vault, session)
    declined = {d["provider_id"] for d in (session.result or {}).get("declined_providers", [])}
    remaining = [c for c in configs if c.provider_id not in declined]
    direct = bool((session.result or {}).get("direct")) or session.repair_grant_id is not None
    if len(configs) == 1 and direct:
        try:
            url = await connect.start_flow(vault, session, configs[0].provider_id, None)
        except connect.FlowRefused as exc:
            return refused(exc)
        return redirect(url)
    if len(remaining) == 1 and len(configs) == 1:
        return _consent(session, remaining[0], browser, await connect.app_name(vault, session))
    return page(
        "picker.html",
        session_id=session.id,
        providers=configs,
        declined=declined,
        csrf=_csrf(browser),
    )


def _ttl_label(seconds: int) -> str:
    for unit, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


def _consent(session: Any, cfg: Any, browser: str, app_name: str) -> Response:
    scopes = [
        {"scope": s, "description": cfg.spec.available_scopes.get(s, s)}
        for s in connect.requested_scopes(cfg, session)
    ]
    options, default = connect.ttl_choices(session) if session.grant_policy else ([], None)
    return page(
        "consent.html",
        # The form's 303 goes to the provider: CSP form-action must allow its origin.
        form_action=f"'self' {_origin(cfg.authorize_url)}",
        session_id=session.id,
        provider_id=cfg.provider_id,
        spec=cfg.spec,
        app_name=app_name,
        # Who the connection will belong to, so a user who was sent someone else's link can
        # see it is not theirs before signing in at the provider.
        owner=f"the {app_name} user {session.principal_id}"
        if session.principal_type == "user"
        else f"{app_name} itself",
        scopes=scopes,
        ttl_options=[(o, _ttl_label(o)) for o in options],
        ttl_default=default,
        csrf=_csrf(browser),
    )


@router.get("/connect/s/{session_id}/consent")
async def consent(request: Request, session_id: str, provider: str = "") -> Response:
    vault = _vault(request)
    browser = request.cookies.get(COOKIE)
    try:
        session = await connect.browser_session(vault, session_id, browser)
    except connect.FlowRefused as exc:
        return refused(exc)
    assert browser is not None
    if session.status != "pending":
        return await _result(vault, session)
    for cfg in await connect.session_configs(vault, session):
        if cfg.provider_id == provider:
            return _consent(session, cfg, browser, await connect.app_name(vault, session))
    return refused(
        connect.FlowRefused("provider_not_allowed", "This provider is not part of this sign-in.")
    )


async def _form(request: Request, session_id: str) -> tuple[Any, dict[str, str]]:
    vault = _vault(request)
    browser = request.cookies.get(COOKIE)
    session = await connect.browser_session(vault, session_id, browser)
    form = {k: str(v) for k, v in (await request.form()).items()}
    assert browser is not None
    if not csrf_ok(form.get("csrf", ""), browser, CSRF_PURPOSE):
        raise connect.FlowRefused("csrf", "This form expired. Go back and try again.")
    if session.status != "pending":
        raise connect.FlowRefused("session_finished", "This sign-in is already finished.")
    return session, form


@router.post("/connect/s/{session_id}/authorize")
async def authorize(request: Request, session_id: str) -> Response:
    """The user agreed: record state/PKCE/nonce and go to the provider."""
    try:
        session, form = await _form(request, session_id)
        ttl_raw = form.get("ttl")
        ttl = int(ttl_raw) if ttl_raw and re.fullmatch(r"[0-9]{1,9}", ttl_raw) else None
        url = await connect.start_flow(_vault(request), session, form.get("provider", ""), ttl)
    except connect.FlowRefused as exc:
        return refused(exc)
    return redirect(url)


@router.post("/connect/s/{session_id}/decline")
async def decline(request: Request, session_id: str) -> Response:
    vault = _vault(request)
    try:
        session, form = await _form(request, session_id)
    except connect.FlowRefused as exc:
        return refused(exc)
    provider = form.get("provider", "")
    if provider == "*":
        for pid in session.allowed_providers:
            session = await connect.decline(vault, session, pid, "access_denied")
    elif provider in session.allowed_providers:
        session = await connect.decline(vault, session, provider, "access_denied")
    return redirect(f"/connect/s/{session.id}")


@router.get("/sdk/oauth/callback")
async def callback(request: Request) -> Response:
    """The provider's redirect back. Never cached; the code is exchanged at most once."""
    vault = _vault(request)
    pairs = request.query_params.multi_items()
    params = dict(pairs)
    if len(params) != len(pairs) or ("code" in params and "error" in params):
        # Duplicated parameters or a response that is both success and error: parsers
        # disagree about such URLs, so nothing in them is trusted (and the state is kept).
        return refused(
            connect.FlowRefused("invalid_response", "This sign-in response is malformed.")
        )
    try:
        session = await connect.finish_flow(vault, params, request.cookies.get(COOKIE))
    except connect.FlowRefused as exc:
        return refused(exc)
    return redirect(f"/connect/s/{session.id}")


def _result_grants(configs: dict[str, Any], result: dict[str, Any], now: str | None) -> list[Any]:
    """The session's grants as the opener's message and the return URL describe them."""
    grants = []
    for g in result.get("grants", []):
        cfg = configs.get(g["provider_id"])
        grants.append(
            {
                "grant_id": g["grant_id"],
                "provider": g["provider_id"],
                "provider_name": cfg.spec.display_name if cfg else g["provider_id"],
                "account_identifier": g.get("account_identifier"),
                "timestamp": now,
                "operation": g.get("operation", "creation"),
                "scopes": g.get("scopes", []),
                "status": "active",
            }
        )
    return grants


def _return_link(
    return_url: str, grants: list[Any], error: dict[str, Any] | None, now: str | None
) -> str:
    """The session's own ``return_url`` with the outcome: the first grant, or the error."""
    if error is None and grants:
        first = grants[0]
        query = {
            "alter_connect_success": "true",
            "grant_id": first["grant_id"],
            "provider": first["provider"],
            "account_identifier": first["account_identifier"] or "",
            "provider_name": first["provider_name"],
            "timestamp": now or "",
            "operation": first["operation"],
            "scopes": ",".join(first["scopes"]),
            "status": "active",
        }
    else:
        query = {
            "alter_connect_error": "true",
            "error_code": (error or {}).get("error", "connect_failed"),
            "error_description": (error or {}).get("error_description", ""),
        }
    sep = "&" if urlsplit(return_url).query else "?"
    return return_url + sep + urlencode(query)


async def _result(vault: Vault, session: Any) -> Response:
    """The last page: hand the outcome to the opener (postMessage) or the return URL."""
    result = session.result or {}
    ok = session.status == "completed"
    configs = {c.provider_id: c for c in await connect.session_configs(vault, session)}
    now = iso(vault.clock.now())
    grants = _result_grants(configs, result, now)
    error = result.get("error") or {}
    if ok:
        message: dict[str, Any] = {"type": "alter_connect_success", "grants": grants}
        text = ""
    else:
        code = error.get(
            "error_code", "connect_failed" if session.status == "error" else "session_expired"
        )
        text = error.get("error_message", "The connection was not completed.")
        message = {"type": "alter_connect_error", "error": code, "error_description": text}
    return_link = None
    if session.return_url:
        return_link = _return_link(session.return_url, grants, None if ok else message, now)
    payload = {
        "allowed_origin": session.allowed_origin,
        "message": message,
        "auto_continue": return_link is not None,
    }
    return page(
        "result.html",
        ok=ok,
        grants=grants,
        message=text,
        return_link=return_link,
        payload=payload,
    )


@router.get("/connect/s/{session_id}/result")
async def result_page(request: Request, session_id: str) -> Response:
    vault = _vault(request)
    try:
        session = await connect.browser_session(vault, session_id, request.cookies.get(COOKIE))
    except connect.FlowRefused as exc:
        return refused(exc)
    return await _result(vault, session)
