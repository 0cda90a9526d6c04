"""An app's managed secrets in the portal: list, create (from a template or custom), set or
replace the credential (write-only: a password field, never echoed, never shown again) and
delete after a confirmation naming the secret. Every action is the ``secrets.*`` operation
the admin API runs (same authorisation, validation and audit).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
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

router = APIRouter(include_in_schema=False)

#: What a page says after a redirect (``?done=``): fixed words, never text from the URL.
NOTICES = {
    "secret_created": "Managed secret created. Set its credential below: it is write-only.",
    "credential_set": "Credential stored. It is never shown again; replace it any time.",
    "secret_deleted": "The managed secret, its credentials and its grants were deleted.",
}
#: Custom secrets offered by the form (the CLI and API take any injection document).
CUSTOM_AUTH = [
    ("bearer", "Bearer token (Authorization: Bearer …)"),
    ("header", "A header with a format of your own"),
    ("basic", "HTTP Basic (username and password)"),
]


def app_base(app: str) -> str:
    return f"/portal/apps/{quote(app, safe='')}"


def done_notice(request: Request, notices: dict[str, str]) -> str | None:
    return notices.get(request.query_params.get("done", ""))


async def app_info(auth: Auth, app: str) -> dict[str, Any]:
    """The app as the tabs show it (name and id); refuses an app the operator may not see."""
    listed = await run_operation(auth, "apps.list")
    found = next((a for a in listed["apps"] if app in (a["name"], a["app_id"])), None)
    if found is None:
        raise VaultError(ErrorCode.NOT_FOUND, f"No app {app!r} you may see.")
    return dict(found)


def _cli(app: str, ident: str = "SECRET_ID") -> list[Automation]:
    return [
        automation(
            "List secrets", f"grantvault secrets list --app {app} --json", "secrets.list", app=app
        ),
        automation(
            "Create from a template",
            f"grantvault secrets create --app {app} --template openai --json",
            "secrets.create",
            app=app,
        ),
        automation(
            "Set the credential (read from stdin, never echoed)",
            f"grantvault secrets set-credential {ident} --stdin --json",
            "secrets.set-credential",
            managed_secret_id=ident,
        ),
        automation(
            "Delete",
            f"grantvault secrets delete {ident} --yes --json",
            "secrets.delete",
            managed_secret_id=ident,
        ),
    ]


async def _list_page(
    request: Request,
    auth: Auth,
    app: str,
    *,
    status: int = 200,
    error: VaultError | None = None,
    typed: dict[str, str] | None = None,
) -> Response:
    try:
        info = await app_info(auth, app)
        listed = await run_operation(auth, "secrets.list", app=info["name"])
        templates = (await run_operation(auth, "secrets.templates"))["templates"]
    except VaultError as exc:
        return error_page(auth, exc, back="/portal/apps")
    query = request.query_params.get("q", "").strip().lower()
    rows = [
        s
        for s in listed["secrets"]
        if not query or query in s["slug"].lower() or query in (s["name"] or "").lower()
    ]
    shown, pager = paginate(rows, request)
    return render(
        auth,
        "secrets.html",
        section="apps",
        status=status,
        error=error,
        notice=done_notice(request, NOTICES),
        app=info,
        secrets=shown,
        total=len(listed["secrets"]),
        query=query,
        pager=pager,
        templates=sorted(templates, key=lambda t: str(t["name"]).lower()),
        custom_auth=CUSTOM_AUTH,
        typed=typed or {},
        cli=_cli(info["name"]),
    )


@router.get("/portal/apps/{app}/secrets")
async def secrets_page(request: Request, app: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _list_page(request, auth, app)


def _hosts(form: FormData) -> list[str] | None:
    text = form_text(form, "allowed_hosts")
    hosts = [h.strip() for h in text.replace(",", " ").split() if h.strip()]
    return hosts or None


@router.post("/portal/apps/{app}/secrets")
async def secret_create(request: Request, app: str) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    kind = form_text(form, "kind") or "template"
    typed = {k: form_text(form, k) for k in ("template", "slug", "name", "allowed_hosts")}
    typed |= {k: form_text(form, k) for k in ("auth", "header", "format", "kind")}
    params: dict[str, Any] = {
        "app": app,
        "slug": typed["slug"] or None,
        "name": typed["name"] or None,
        "allowed_hosts": _hosts(form),
    }
    if kind == "custom":
        injection: dict[str, Any] = {"auth": typed["auth"] or "bearer"}
        if injection["auth"] == "header":
            injection["header"] = typed["header"] or "Authorization"
            injection["format"] = typed["format"] or "{token}"
        params["injection"] = injection
    else:
        params["template"] = typed["template"] or None
    try:
        created = await run_operation(auth, "secrets.create", **params)
    except VaultError as exc:
        if exc.status in (403, 404):
            return error_page(auth, exc, back=f"{app_base(app)}/secrets")
        return await _list_page(request, auth, app, status=exc.status, error=exc, typed=typed)
    return see_other(
        f"{app_base(app)}/secrets/{quote(created['managed_secret_id'], safe='')}?done=secret_created"
    )


async def _secret(auth: Auth, app: str, secret_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    info = await app_info(auth, app)
    listed = await run_operation(auth, "secrets.list", app=info["name"])
    if secret_id not in [s["managed_secret_id"] for s in listed["secrets"]]:
        raise VaultError(ErrorCode.NOT_FOUND, f"No managed secret {secret_id!r} in this app.")
    shown = await run_operation(auth, "secrets.show", managed_secret_id=secret_id)
    return info, shown


async def _secret_page(
    request: Request,
    auth: Auth,
    app: str,
    secret_id: str,
    *,
    status: int = 200,
    error: VaultError | None = None,
    template: str = "secret.html",
) -> Response:
    try:
        info, shown = await _secret(auth, app, secret_id)
        grants = await run_operation(auth, "grants.list", app=info["name"], secret=shown["slug"])
    except VaultError as exc:
        return error_page(auth, exc, back=f"{app_base(app)}/secrets")
    return render(
        auth,
        template,
        section="apps",
        status=status,
        error=error,
        notice=done_notice(request, NOTICES),
        app=info,
        secret=shown,
        grant_total=grants["total"],
        active_grants=sum(1 for g in grants["grants"] if g["status"] == "active"),
        cli=_cli(info["name"], shown["managed_secret_id"])[2:],
    )


@router.get("/portal/apps/{app}/secrets/{secret_id}")
async def secret_page(request: Request, app: str, secret_id: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _secret_page(request, auth, app, secret_id)


@router.post("/portal/apps/{app}/secrets/{secret_id}/credential")
async def credential_set(request: Request, app: str, secret_id: str) -> Response:
    """Write-only: the values go to the operation and nowhere else (not back to the page).
    Dangerous (it changes what every grant of the secret sends): needs sudo mode."""
    posted = await posted_form(
        request, sudo_back=f"{app_base(app)}/secrets/{quote(secret_id, safe='')}"
    )
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    values = {
        str(k)[len("field_") :]: v
        for k, v in form.multi_items()
        if str(k).startswith("field_") and isinstance(v, str) and v != ""
    }
    try:
        await run_operation(
            auth,
            "secrets.set-credential",
            managed_secret_id=secret_id,
            values=values or {},
            label=form_text(form, "label") or None,
        )
    except VaultError as exc:
        if exc.status in (403, 404):
            return error_page(auth, exc, back=f"{app_base(app)}/secrets")
        return await _secret_page(request, auth, app, secret_id, status=exc.status, error=exc)
    return see_other(f"{app_base(app)}/secrets/{quote(secret_id, safe='')}?done=credential_set")


@router.get("/portal/apps/{app}/secrets/{secret_id}/delete")
async def secret_delete_confirm(request: Request, app: str, secret_id: str) -> Response:
    """The confirmation step: names the secret and what goes with it; the POST deletes."""
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _secret_page(request, auth, app, secret_id, template="secret_delete.html")


@router.post("/portal/apps/{app}/secrets/{secret_id}/delete")
async def secret_delete(request: Request, app: str, secret_id: str) -> Response:
    """Dangerous (the credentials and grants go too): needs sudo mode."""
    back = f"{app_base(app)}/secrets/{quote(secret_id, safe='')}/delete"
    posted = await posted_form(request, sudo_back=back)
    if isinstance(posted, Response):
        return posted
    auth, _ = posted
    try:
        await app_info(auth, app)
        await run_operation(auth, "secrets.delete", managed_secret_id=secret_id)
    except VaultError as exc:
        return error_page(auth, exc, back=f"{app_base(app)}/secrets")
    return see_other(f"{app_base(app)}/secrets?done=secret_deleted")
