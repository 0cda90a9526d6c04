"""Single sign-on for operators (``/portal/sso/start`` and ``/portal/sso/callback``).

The flow and its checks are ``services.operator_sso``'s; this module carries the browser:
the sealed flow cookie (HttpOnly, ``SameSite=Lax`` so the IdP's redirect back carries it,
scoped to ``/portal/sso``), refusals as an error page, and the portal session at the end.

The callback answers a small page that continues to the overview (``Refresh`` header and a
link) rather than a redirect: the callback is a navigation that began at the IdP (another
site), and the portal's ``SameSite=Strict`` session cookie is only sent on the next,
same-site navigation.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from grantvault_server.services import operator_sso, portal_sessions
from grantvault_server.web import portal
from grantvault_server.web.security import set_browser_cookie

router = APIRouter(include_in_schema=False)

FLOW_COOKIE = "gv_portal_sso"
FLOW_COOKIE_PATH = "/portal/sso"


@router.get("/portal/sso/start")
async def sso_start(request: Request) -> Response:
    vault = portal.vault_for(request)
    try:
        started = await operator_sso.start(vault)
    except operator_sso.SsoRefused as refused:
        return portal.error_page(None, refused.error, back="/portal/login")
    response = portal.see_other(started.url)
    set_browser_cookie(
        response,
        FLOW_COOKIE,
        started.cookie,
        max_age=int(operator_sso.flow_ttl(vault).total_seconds()),
        secure=request.url.scheme == "https",
        path=FLOW_COOKIE_PATH,
    )
    return response


@router.get("/portal/sso/callback")
async def sso_callback(request: Request) -> Response:
    vault = portal.vault_for(request)
    try:
        signed = await operator_sso.finish(
            vault,
            list(request.query_params.multi_items()),
            request.cookies.get(FLOW_COOKIE),
            address=portal.client_address_of(request),
        )
    except operator_sso.SsoRefused as refused:
        response = portal.error_page(None, refused.error, back="/portal/login")
        response.delete_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH)
        return response
    cookie, session = await portal_sessions.start(vault, signed.operator, pending_mfa=False)
    response = portal.render(None, "sso_continue.html", operator=signed.operator.name)
    response.headers["Refresh"] = "0; url=/portal/"
    # The portal's session cookie, exactly as the password sign-in sets it.
    response.set_cookie(
        portal.COOKIE,
        cookie,
        max_age=int((session.expires_at - session.created_at).total_seconds()),
        path=portal.COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH)
    return response
