"""End-user identity routes: ``/sdk/auth/*`` (signed by the app), the sign-in pages the
user's browser visits, and the IdP's deprovisioning webhook.

Three audiences, three authentications:

* ``POST /sdk/auth/session|poll|verify-token``: the app, HMAC-signed (``api.deps``);
* ``GET /sdk/auth/start|callback|result``: the user's browser, tied to the sign-in by an
  HttpOnly cookie; every page has a strict CSP (no script at all), ``frame-ancestors
  'none'``, ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``;
* ``POST /webhooks/idp/{app_id}``: the IdP, with a Standard Webhooks signature.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from grantvault_server.api.deps import CallerDep, VaultDep
from grantvault_server.api.responses import errors
from grantvault_server.identity import signin, webhooks
from grantvault_server.identity.service import resolve_user
from grantvault_server.identity.signin import SignInPageError

router = APIRouter(tags=["identity"])

_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthSessionBody(_Strict):
    """``authenticate()`` sends exactly ``{}``."""


class AuthPollBody(_Strict):
    session_token: Annotated[str, Field(min_length=1, max_length=256)]
    #: Long-poll budget; values above 30 000 are treated as 30 000.
    wait_ms: Annotated[StrictInt, Field(ge=0)] | None = None


class VerifyTokenBody(_Strict):
    # Longer than any accepted token, so an oversized one gets the verifier's 401.
    token: Annotated[str, Field(min_length=1, max_length=65_536)]


def _page(name: str, status: int = 200, **context: Any) -> Response:
    nonce = secrets.token_urlsafe(16)
    html = _TEMPLATES.get_template(name).render(csp_nonce=nonce, **context)
    return _protect(HTMLResponse(html, status_code=status), style_nonce=nonce)


def _protect(response: Response, *, style_nonce: str | None = None) -> Response:
    style = f"'nonce-{style_nonce}'" if style_nonce else "'none'"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src {style}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def _refused(exc: SignInPageError) -> Response:
    return _page("auth_error.html", status=exc.status, message=exc.message)


@router.post("/sdk/auth/session", status_code=201, responses=errors(400, 409))
async def post_auth_session(
    _body: AuthSessionBody, caller: CallerDep, vault: VaultDep
) -> dict[str, Any]:
    """Start a brokered end-user sign-in; ``auth_url`` goes to the user's browser."""
    return await signin.create_session(vault, caller.app)


@router.post("/sdk/auth/poll", responses=errors(404))
async def post_auth_poll(body: AuthPollBody, caller: CallerDep, vault: VaultDep) -> dict[str, Any]:
    """The sign-in's status, waiting up to ``wait_ms`` (30 s at most) while pending."""
    return await signin.poll(vault, caller.app, body.session_token, body.wait_ms)


@router.post("/sdk/auth/verify-token", responses=errors(400, 403))
async def post_verify_token(
    body: VerifyTokenBody, caller: CallerDep, vault: VaultDep
) -> dict[str, Any]:
    """The verified user id (``sub``) of an end user's JWT, or 401 ``jwt_validation_error``."""
    identity = await resolve_user(vault, caller.app.id, body.token, actor=caller.actor)
    return {"sub": identity.subject}


@router.get("/sdk/auth/start", include_in_schema=False)
async def get_auth_start(
    request: Request, vault: VaultDep, session: str = "", login_hint: str | None = None
) -> Response:
    """``auth_url``: bind the sign-in to this browser, then on to the IdP (303)."""
    try:
        target = await signin.start(vault, session, login_hint, request.cookies.get(COOKIE))
    except SignInPageError as exc:
        return _refused(exc)
    response = _protect(RedirectResponse(target.url, status_code=303))
    if target.cookie is not None:
        response.set_cookie(
            COOKIE,
            target.cookie,
            max_age=int(signin.SESSION_TTL.total_seconds()) + 60,
            httponly=True,
            # Lax: the IdP's redirect back is a top-level GET navigation, which carries it.
            samesite="lax",
            secure=vault.settings.effective_public_base_url.startswith("https://"),
            path=COOKIE_PATH,
        )
    return response


@router.get("/sdk/auth/callback", include_in_schema=False)
async def get_auth_callback(request: Request, vault: VaultDep) -> Response:
    """The IdP's redirect back; then 303 to a result page without the code in its URL."""
    try:
        outcome = await signin.callback(
            vault, list(request.query_params.multi_items()), request.cookies.get(COOKIE)
        )
    except SignInPageError as exc:
        return _refused(exc)
    return _protect(RedirectResponse(f"/sdk/auth/result?outcome={outcome}", status_code=303))


@router.get("/sdk/auth/result", include_in_schema=False)
async def get_auth_result(outcome: str = "error") -> Response:
    heading, message, hint = _OUTCOMES.get(outcome, _OUTCOMES["error"])
    return _page(
        "auth_result.html",
        outcome=outcome if outcome in _OUTCOMES else "error",
        heading=heading,
        message=message,
        hint=hint,
    )


@router.post("/webhooks/idp/{app_id}", responses=errors(400, 403, 404, 409))
async def post_idp_webhook(app_id: str, request: Request, vault: VaultDep) -> JSONResponse:
    """Deprovisioning events from the app's IdP (signed; see ``identity.webhooks``)."""
    body = await request.body()
    result = await webhooks.receive(vault, app_id, request.headers, body)
    return JSONResponse(result)
