"""The portal's personal API tokens page: the signed-in operator's ``gvat_`` tokens.

A new token is shown once, with a copy button and the ``export GRANTVAULT_SERVER=...
GRANTVAULT_TOKEN=...`` lines that drive this vault from the CLI; afterwards only its prefix.
Owners also see (and may revoke) everyone's tokens. Revoking is confirmed on a page that
names the token. Every change runs ``operators.token.*``, so authorisation and audit are the
admin API's (any operator may manage their own tokens, as over the API).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

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

router = APIRouter(include_in_schema=False)

BASE = "/portal/account/tokens"
NOTICES = {"token_revoked": "The token is revoked: requests with it are refused at once."}
LIFETIMES = (("30d", "30 days"), ("90d", "90 days"), ("365d", "1 year"), ("", "never"))
ROLES = ("owner", "admin", "auditor")


def _cli(me: str, token_id: str = "TOKEN_ID") -> list[Automation]:  # noqa: S107 - a placeholder
    return [
        automation("List tokens", "grantvault operators token list --json", "operators.token.list"),
        automation(
            "Create a token (shown once)",
            f"grantvault operators token create {me} --name ci --expires-in 90d --json",
            "operators.token.create",
            operator=me,
        ),
        automation(
            "Revoke a token",
            f"grantvault operators token revoke {token_id} --json",
            "operators.token.revoke",
            token_id=token_id,
        ),
    ]


def _status(token: dict[str, Any], now: str) -> str:
    if token["revoked_at"]:
        return "revoked"
    if token["expires_at"] and token["expires_at"] <= now:
        return "expired"
    return "active"


async def _page(
    request: Request,
    auth: Auth,
    *,
    status: int = 200,
    error: VaultError | None = None,
    created: dict[str, Any] | None = None,
) -> Response:
    me = auth.principal.operator
    try:
        listed = await run_operation(auth, "operators.token.list")
    except VaultError as exc:
        return error_page(auth, exc)
    now = auth.vault.clock.now().isoformat()
    tokens = [{**t, "status": _status(t, now)} for t in listed["tokens"]]
    wanted = request.query_params.get("status", "")
    if wanted not in ("active", "revoked", "expired"):
        wanted = ""
    mine = [t for t in tokens if t["operator"] == me.name]
    others = [
        t for t in tokens if t["operator"] != me.name and (not wanted or t["status"] == wanted)
    ]
    shown, pager = paginate(others, request)
    return render(
        auth,
        "tokens.html",
        section="account",
        status=status,
        error=error,
        notice=NOTICES.get(request.query_params.get("done", "")),
        mine=[t for t in mine if not wanted or t["status"] == wanted],
        all_mine=len(mine),
        others=shown,
        all_others=len(others),
        status_filter=wanted,
        pager=pager,
        created=created,
        server=auth.vault.settings.effective_public_base_url,
        lifetimes=LIFETIMES,
        roles=ROLES[ROLES.index(auth.principal.role) :] if auth.principal.role in ROLES else (),
        cli=_cli(me.name),
    )


@router.get(BASE)
async def tokens_page(request: Request) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _page(request, auth)


@router.post(BASE)
async def token_create(request: Request) -> Response:
    # Minting or revoking a credential needs sudo mode, as API keys do.
    posted = await posted_form(request, sudo_back=BASE)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    apps = [a for a in form_text(form, "apps").replace(",", " ").split() if a]
    try:
        created = await run_operation(
            auth,
            "operators.token.create",
            operator=auth.principal.operator.name,
            name=form_text(form, "name") or None,
            role=form_text(form, "role") or None,
            apps=apps or None,
            expires_in=form_text(form, "expires_in") or None,
        )
    except VaultError as exc:
        if exc.code is ErrorCode.FORBIDDEN:
            return error_page(auth, exc, back=BASE)
        return await _page(request, auth, status=exc.status, error=exc)
    return await _page(request, auth, created=created)


async def _token(auth: Auth, token_id: str) -> dict[str, Any]:
    listed = await run_operation(auth, "operators.token.list")
    for token in listed["tokens"]:
        if token["token_id"] == token_id:
            found: dict[str, Any] = token
            return found
    raise VaultError(ErrorCode.NOT_FOUND, f"No token {token_id!r} that you may see.")


@router.get(BASE + "/{token_id}/revoke")
async def token_revoke_confirm(request: Request, token_id: str) -> Response:
    """The confirmation step, naming the token; the POST below revokes it."""
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    try:
        token = await _token(auth, token_id)
    except VaultError as exc:
        return error_page(auth, exc, back=BASE)
    return render(
        auth,
        "token_revoke.html",
        section="account",
        token=token,
        cli=_cli(auth.principal.operator.name, token_id)[2:],
    )


@router.post(BASE + "/{token_id}/revoke")
async def token_revoke(request: Request, token_id: str) -> Response:
    posted = await posted_form(request, sudo_back=BASE)
    if isinstance(posted, Response):
        return posted
    auth, _form = posted
    try:
        await run_operation(auth, "operators.token.revoke", token_id=token_id)
    except VaultError as exc:
        if exc.code in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND):
            return error_page(auth, exc, back=BASE)
        return await _page(request, auth, status=exc.status, error=exc)
    return see_other(BASE + "?done=token_revoked")
