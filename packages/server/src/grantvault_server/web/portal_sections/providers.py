"""The portal's OAuth providers page: an app's client registrations at providers.

The redirect URI to register at the provider is shown first, with a copy button; the catalog
is searchable; the client secret is write-only (a password field, "set" or "replace", never
displayed); removing a registration is confirmed by naming it. Every change runs the admin
operation (``providers.add``, ``providers.remove``), so authorisation and audit are the
admin API's.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from starlette.datastructures import FormData

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError
from grantvault_server.services.connect import CALLBACK_PATH
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

router = APIRouter(include_in_schema=False)

NOTICES = {
    "provider_added": "The provider is registered. Its client secret is stored sealed and never shown.",
    "provider_replaced": "The registration is updated. Its grants keep working.",
    "provider_removed": "The registration is removed.",
}


def app_url(app: str, path: str = "") -> str:
    return f"/portal/apps/{quote(app, safe='')}{path}"


async def app_info(auth: Auth, app: str) -> dict[str, Any]:
    """The app as the tabs show it; an unknown or invisible app raises ``not_found``."""
    listed = await run_operation(auth, "apps.list")
    found = next((a for a in listed["apps"] if app in (a["name"], a["app_id"])), None)
    if found is None:
        raise VaultError(ErrorCode.NOT_FOUND, f"No app {app!r} (or it is not yours to see).")
    info: dict[str, Any] = found
    return info


def words(value: str) -> list[str] | None:
    """A space- or comma-separated list from a form field; empty: ``None``."""
    items = [w for w in value.replace(",", " ").split() if w]
    return items or None


def redirect_uri(auth: Auth) -> str | None:
    settings = auth.vault.settings
    if not settings.public_base_url and settings.host.strip() in {"", "0.0.0.0", "::", "*"}:  # noqa: S104
        return None
    return f"{settings.effective_public_base_url}{CALLBACK_PATH}"


#: Catalog rows a page shows: short, since the search box is the way in (and phones scroll).
CATALOG_PAGE = 10


def _page_of(items: list[Any], request: Request) -> tuple[list[Any], dict[str, Any]]:
    """One page (``?page=``, 1-based) of the catalog, as ``paginate`` answers it."""
    raw = request.query_params.get("page", "1")
    pages = max(1, math.ceil(len(items) / CATALOG_PAGE))
    number = min(max(int(raw) if raw.isdigit() else 1, 1), pages)
    start = (number - 1) * CATALOG_PAGE
    return items[start : start + CATALOG_PAGE], {"page": number, "pages": pages}


def _cli(app: str, provider: str = "PROVIDER") -> list[Automation]:
    return [
        automation(
            "List registrations",
            f"grantvault providers list --app {app} --json",
            "providers.list",
            app=app,
        ),
        automation(
            "Search the catalog", "grantvault providers catalog --json", "providers.catalog"
        ),
        automation(
            "Register a provider (secret from stdin)",
            f"grantvault providers add {provider} --app {app} --client-id ID "
            "--client-secret-stdin --scopes 'openid email' --json",
            "providers.add",
            app=app,
        ),
        automation(
            "Remove a registration",
            f"grantvault providers remove {provider} --app {app} --json",
            "providers.remove",
            app=app,
            provider=provider,
        ),
    ]


async def _page(
    request: Request,
    auth: Auth,
    app: str,
    *,
    status: int = 200,
    error: VaultError | None = None,
    form: FormData | None = None,
) -> Response:
    try:
        info = await app_info(auth, app)
        listed = await run_operation(auth, "providers.list", app=info["name"])
        catalog = await run_operation(auth, "providers.catalog")
    except VaultError as exc:
        return error_page(auth, exc, back="/portal/apps")
    query = request.query_params.get("q", "").strip()
    needle = query.lower()
    entries = sorted(catalog["providers"].values(), key=lambda p: str(p["display_name"]).lower())
    matching = [
        p
        for p in entries
        if not needle
        or needle in str(p["id"]).lower()
        or needle in str(p["display_name"]).lower()
        or needle in str(p.get("category") or "").lower()
    ]
    shown, pager = _page_of(matching, request)
    registered = {p["provider_id"] for p in listed["providers"]}
    chosen = request.query_params.get("provider", "")
    filled = {k: form_text(form, k) for k in form} if form is not None else {}
    filled.pop("client_secret", None)  # write-only: never put back in a page
    filled.pop("csrf", None)
    if chosen and "provider" not in filled:
        filled["provider"] = chosen
    return render(
        auth,
        "providers.html",
        section="apps",
        status=status,
        error=error,
        notice=NOTICES.get(request.query_params.get("done", "")),
        app=info,
        providers=listed["providers"],
        registered=registered,
        catalog=shown,
        catalog_total=len(entries),
        query=query,
        pager=pager,
        filled=filled,
        redirect_uri=redirect_uri(auth),
        cli=_cli(info["name"], filled.get("provider") or "PROVIDER"),
    )


@router.get("/portal/apps/{app}/providers")
async def providers_page(request: Request, app: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _page(request, auth, app)


def _pairs(form: FormData, names: tuple[str, ...]) -> dict[str, str]:
    return {n: form_text(form, n) for n in names if form_text(form, n)}


@router.post("/portal/apps/{app}/providers")
async def providers_add(request: Request, app: str) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    kind = form_text(form, "kind") or "catalog"
    params: dict[str, Any] = {
        "provider": form_text(form, "provider").lower() or None,
        "client_id": form_text(form, "client_id") or None,
        "client_secret": form_text(form, "client_secret") or None,
        "scopes": words(form_text(form, "scopes")),
        "replace": form_text(form, "replace") == "yes",
    }
    if kind == "oidc":
        params["issuer"] = form_text(form, "issuer") or None
        params["display_name"] = form_text(form, "display_name") or None
    elif kind == "oauth2":
        params.update(
            _pairs(form, ("authorize_url", "token_url", "revocation_url", "userinfo_url"))
        )
        params["display_name"] = form_text(form, "display_name") or None
    else:
        params["overrides"] = _pairs(form, ("authorize_url", "token_url", "revocation_url"))
    hosts = words(form_text(form, "api_hosts"))
    if hosts:
        params["api_hosts"] = hosts
    try:
        await run_operation(auth, "providers.add", app=app, **params)
    except VaultError as exc:
        if exc.code in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND):
            return error_page(auth, exc, back=app_url(app, "/providers"))
        return await _page(request, auth, app, status=exc.status, error=exc, form=form)
    done = "provider_replaced" if params["replace"] else "provider_added"
    return see_other(app_url(app, f"/providers?done={done}"))


async def _registration(auth: Auth, app: str, provider: str) -> dict[str, Any]:
    listed = await run_operation(auth, "providers.list", app=app)
    for item in listed["providers"]:
        if item["provider_id"] == provider.lower():
            found: dict[str, Any] = item
            return found
    raise VaultError(ErrorCode.NOT_FOUND, f"No provider {provider!r} is registered for this app.")


@router.get("/portal/apps/{app}/providers/{provider}/remove")
async def provider_remove_confirm(request: Request, app: str, provider: str) -> Response:
    """The confirmation step, naming the registration; the POST below removes it."""
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    try:
        info = await app_info(auth, app)
        item = await _registration(auth, info["name"], provider)
    except VaultError as exc:
        return error_page(auth, exc, back=app_url(app, "/providers"))
    return render(
        auth,
        "provider_remove.html",
        section="apps",
        app=info,
        provider=item,
        cli=_cli(info["name"], item["provider_id"])[3:],
    )


@router.post("/portal/apps/{app}/providers/{provider}/remove")
async def provider_remove(request: Request, app: str, provider: str) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, _form = posted
    try:
        await run_operation(auth, "providers.remove", app=app, provider=provider)
    except VaultError as exc:
        if exc.code in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND):
            return error_page(auth, exc, back=app_url(app, "/providers"))
        return await _page(request, auth, app, status=exc.status, error=exc)
    return see_other(app_url(app, "/providers?done=provider_removed"))
