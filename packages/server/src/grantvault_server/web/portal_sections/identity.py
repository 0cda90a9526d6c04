"""The portal's identity page: an app's OpenID Connect identity provider.

The seed's flow: paste the issuer URL, "Discover" (``idp.discover``, nothing saved), see the
endpoints and claims the vault found, then save (``idp.set``) with the audience, the claim
mappings and the sign-in client. Secrets are write-only: the sign-in client secret is a
password field reported only as set; the webhook secret the vault generates is shown once,
with a copy button, on the answer to the POST that created it, and never again.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.datastructures import FormData

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError
from grantvault_server.web.portal import (
    Auth,
    Automation,
    automation,
    error_page,
    form_text,
    posted_form,
    render,
    run_operation,
    see_other,
    session_auth,
)
from grantvault_server.web.portal_sections.providers import app_info, app_url

router = APIRouter(include_in_schema=False)

NOTICES = {
    "idp_saved": "The identity provider is saved. User tokens from this issuer are verified from now on.",
}

#: The claim mappings, as the form names them (``idp.set`` takes ``<name>_claim``).
CLAIMS = (
    ("user_id", "User id claim", "The claim that identifies a user (usually sub)."),
    ("groups", "Groups claim", "Empty: no groups."),
    ("email", "Email claim", ""),
    ("name", "Name claim", ""),
)


def _cli(app: str) -> list[Automation]:
    return [
        automation(
            "Show the identity provider",
            f"grantvault idp show --app {app} --json",
            "idp.show",
            app=app,
        ),
        automation(
            "Discover an issuer (saves nothing)",
            f"grantvault idp discover --app {app} --issuer https://idp.example.com --json",
            "idp.discover",
            app=app,
        ),
        automation(
            "Save it",
            f"grantvault idp set --app {app} --issuer https://idp.example.com "
            "--audience AUDIENCE --json",
            "idp.set",
            app=app,
        ),
        automation(
            "Create the webhook secret (shown once)",
            f"grantvault idp webhook-secret --app {app} --json",
            "idp.webhook-secret",
            app=app,
        ),
    ]


async def _page(
    request: Request,
    auth: Auth,
    app: str,
    *,
    status: int = 200,
    error: VaultError | None = None,
    discovered: dict[str, Any] | None = None,
    webhook: dict[str, Any] | None = None,
    form: FormData | None = None,
) -> Response:
    try:
        info = await app_info(auth, app)
    except VaultError as exc:
        return error_page(auth, exc, back="/portal/apps")
    current: dict[str, Any] | None
    try:
        current = await run_operation(auth, "idp.show", app=info["name"])
    except VaultError as exc:
        if exc.code is not ErrorCode.IDP_NOT_CONFIGURED:
            return error_page(auth, exc, back=app_url(info["name"]))
        current = None
    filled = {k: form_text(form, k) for k in form} if form is not None else {}
    for secret in ("client_secret", "csrf"):
        filled.pop(secret, None)  # write-only: never put back in a page
    return render(
        auth,
        "identity.html",
        section="apps",
        status=status,
        error=error,
        notice=NOTICES.get(request.query_params.get("done", "")),
        app=info,
        current=current,
        discovered=discovered,
        webhook=webhook,
        filled=filled,
        claims=CLAIMS,
        cli=_cli(info["name"]),
    )


@router.get("/portal/apps/{app}/identity")
async def identity_page(request: Request, app: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _page(request, auth, app)


def _refused(auth: Auth, app: str, exc: VaultError) -> Response | None:
    if exc.code in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND):
        return error_page(auth, exc, back=app_url(app, "/identity"))
    return None


@router.post("/portal/apps/{app}/identity/discover")
async def identity_discover(request: Request, app: str) -> Response:
    """Fetch the issuer's discovery document and show it; nothing is saved."""
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    try:
        found = await run_operation(
            auth, "idp.discover", app=app, issuer=form_text(form, "issuer") or None
        )
    except VaultError as exc:
        return _refused(auth, app, exc) or await _page(
            request, auth, app, status=exc.status, error=exc, form=form
        )
    return await _page(request, auth, app, discovered=found, form=form)


@router.post("/portal/apps/{app}/identity")
async def identity_save(request: Request, app: str) -> Response:
    # Changing the IdP is a dangerous act: it needs sudo mode (password or code, recently).
    posted = await posted_form(request, sudo_back=app_url(app, "/identity"))
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    params: dict[str, Any] = {
        "issuer": form_text(form, "issuer") or None,
        "audience": form_text(form, "audience") or None,
        "client_id": form_text(form, "client_id") or None,
        "client_secret": form_text(form, "client_secret") or None,
        "no_signin": form_text(form, "no_signin") == "yes",
        "force": form_text(form, "force") == "yes",
    }
    for name, _label, _hint in CLAIMS:
        if f"{name}_claim" in form:
            value = form_text(form, f"{name}_claim")
            # An empty groups claim removes the mapping; the others keep their value.
            params[f"{name}_claim"] = value if value or name == "groups" else None
    try:
        await run_operation(auth, "idp.set", app=app, **params)
    except VaultError as exc:
        return _refused(auth, app, exc) or await _page(
            request, auth, app, status=exc.status, error=exc, form=form
        )
    return see_other(app_url(app, "/identity?done=idp_saved"))


@router.post("/portal/apps/{app}/identity/webhook-secret")
async def identity_webhook_secret(request: Request, app: str) -> Response:
    """Create the webhook's signing secret: the answer shows it once, never again."""
    posted = await posted_form(request, sudo_back=app_url(app, "/identity"))
    if isinstance(posted, Response):
        return posted
    auth, _form = posted
    try:
        created = await run_operation(auth, "idp.webhook-secret", app=app)
    except VaultError as exc:
        return _refused(auth, app, exc) or await _page(
            request, auth, app, status=exc.status, error=exc
        )
    return await _page(request, auth, app, webhook=created)
