"""Sudo mode (``/portal/sudo``): re-enter the password or a code before a dangerous action.

``web.portal`` sends a form post that needs it here (``posted_form(..., sudo_back=...)``)
with the page to return to; the operator confirms and goes back to that page, where the
action is submitted again. The window and the checks are ``services.portal_sessions``'s.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from grantvault_server.errors import VaultError
from grantvault_server.services import portal_sessions
from grantvault_server.web import portal

router = APIRouter(include_in_schema=False)


def safe_next(value: object) -> str:
    """Only a page of the portal (no other host, no scheme-relative or backslash tricks)."""
    if (
        isinstance(value, str)
        and value.startswith("/portal/")
        and "//" not in value
        and "\\" not in value
        and len(value) <= 512
        and value.isprintable()
    ):
        return value
    return "/portal/"


def _page(
    auth: portal.Auth, back: str, *, status: int = 200, error: VaultError | None = None
) -> Response:
    op = auth.principal.operator
    return portal.render(
        auth,
        "sudo.html",
        status=status,
        error=error,
        back=back,
        has_password=op.has_password,
        has_totp=op.totp_enabled,
        window_minutes=int(portal_sessions.SUDO_WINDOW.total_seconds() // 60),
        cli=[],
    )


@router.get("/portal/sudo")
async def sudo_form(request: Request) -> Response:
    auth = await portal.session_auth(request)
    if isinstance(auth, Response):
        return auth
    back = safe_next(request.query_params.get("next"))
    if portal_sessions.sudo_active(auth.vault, auth.session):
        return portal.see_other(back)
    return _page(auth, back)


@router.post("/portal/sudo")
async def sudo_confirm(request: Request) -> Response:
    posted = await portal.posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    back = safe_next(form.get("next"))
    password = form.get("password")
    code = portal.form_text(form, "code")
    try:
        await portal_sessions.reauthenticate(
            auth.vault,
            auth.session,
            password=password if isinstance(password, str) and password else None,
            code=code or None,
            address=portal.client_address_of(request),
        )
    except VaultError as exc:  # login_failed, or account_locked after too many
        return _page(auth, back, status=exc.status, error=exc)
    return portal.see_other(back)
