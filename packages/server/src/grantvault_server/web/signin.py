"""The sign-in broker's pages: ``GET /sdk/auth/start|callback|result``.

The user's browser is tied to the sign-in by an HttpOnly cookie (``services.signin``); every
page and redirect is sent with the sign-in header policy
(:data:`grantvault_server.web.security.SIGNIN`: no script at all, ``frame-ancestors
'none'``, ``Referrer-Policy: no-referrer``, ``Cache-Control: no-store``). The JSON routes of
the sign-in (``/sdk/auth/session|poll``) are in ``api.identity``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from grantvault_server.services import signin
from grantvault_server.services.signin import SignInPageError
from grantvault_server.web import pages
from grantvault_server.web.security import SIGNIN, set_browser_cookie

router = APIRouter(include_in_schema=False)

COOKIE = "gv_signin"
COOKIE_PATH = "/sdk/auth"

_OUTCOMES = {
    "success": (
        "You are signed in",
        "The app that asked you to sign in now has your sign-in.",
        "You can close this window and return to the app.",
    ),
    "denied": (
        "Sign-in declined",
        "The sign-in was declined, so the app did not receive it.",
        "Start again from the app if this was a mistake.",
    ),
    "error": (
        "Sign-in failed",
        "The identity provider could not complete the sign-in.",
        "Start again from the app; if it keeps failing, tell its operator.",
    ),
}


def _page(name: str, status: int = 200, **context: Any) -> Response:
    return pages.page(f"signin/{name}", SIGNIN, status, **context)


def _refused(exc: SignInPageError) -> Response:
    return _page("error.html", status=exc.status, message=exc.message)


@router.get("/sdk/auth/start")
async def get_auth_start(
    request: Request, session: str = "", login_hint: str | None = None
) -> Response:
    """``auth_url``: bind the sign-in to this browser, then on to the IdP (303)."""
    vault = pages.vault_of(request)
    try:
        target = await signin.start(vault, session, login_hint, request.cookies.get(COOKIE))
    except SignInPageError as exc:
        return _refused(exc)
    response = pages.redirect(target.url, SIGNIN)
    if target.cookie is not None:
        set_browser_cookie(
            response,
            COOKIE,
            target.cookie,
            max_age=int(signin.SESSION_TTL.total_seconds()) + 60,
            secure=vault.settings.effective_public_base_url.startswith("https://"),
            path=COOKIE_PATH,
        )
    return response


@router.get("/sdk/auth/callback")
async def get_auth_callback(request: Request) -> Response:
    """The IdP's redirect back; then 303 to a result page without the code in its URL."""
    vault = pages.vault_of(request)
    try:
        outcome = await signin.callback(
            vault, list(request.query_params.multi_items()), request.cookies.get(COOKIE)
        )
    except SignInPageError as exc:
        return _refused(exc)
    return pages.redirect(f"/sdk/auth/result?outcome={outcome}", SIGNIN)


@router.get("/sdk/auth/result")
async def get_auth_result(outcome: str = "error") -> Response:
    heading, message, hint = _OUTCOMES.get(outcome, _OUTCOMES["error"])
    return _page(
        "result.html",
        outcome=outcome if outcome in _OUTCOMES else "error",
        heading=heading,
        message=message,
        hint=hint,
    )
