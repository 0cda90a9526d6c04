"""An app's policies in the portal: the list in evaluation order, an editor that takes the
document as text (YAML or JSON) and shows the server's validation errors next to the line
they are about, a "test a request" form beside the editor that judges a call with the
server's evaluator (``policies.test``, with the text in the editor as a candidate: nothing
is stored or charged), the versions, and deleting after a confirmation naming the policy.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import yaml
from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import Response

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
    "policy_saved": "Policy saved as a new version. Every replica applies it from its next call.",
    "policy_deleted": "Policy deleted. Its versions stay readable for the audit trail.",
}
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
STARTER = """description: What this policy is for.
applies_to:
  secrets: [openai]
rules:
  methods: [GET, POST]
"""
_LINE = re.compile(r"line (\d+)")


def _cli(app: str, name: str = "office-hours") -> list[Automation]:
    return [
        automation(
            "List policies",
            f"grantvault policies list --app {app} --json",
            "policies.list",
            app=app,
        ),
        automation(
            "Store a policy from a file",
            f"grantvault policies put --app {app} {name} --file {name}.yaml --json",
            "policies.put",
            app=app,
            name=name,
        ),
        automation(
            "Test a request",
            f"grantvault policies test --app {app} --grant GRANT_ID "
            "--url https://api.openai.com/v1/models --json",
            "policies.test",
            app=app,
        ),
        automation(
            "Delete",
            f"grantvault policies delete --app {app} {name} --json",
            "policies.delete",
            app=app,
            name=name,
        ),
    ]


def problems_at_lines(error: VaultError | None, source: str) -> list[dict[str, Any]]:
    """The validation errors of ``error``, each with the line of ``source`` it is about: the
    line a syntax error names, else the line of the last key of its location."""
    if error is None:
        return []
    found: list[dict[str, Any]] = []
    lines = source.splitlines()
    for item in error.extra.get("errors") or []:
        loc, msg = str(item.get("loc", "")), str(item.get("msg", ""))
        line: int | None = None
        named = _LINE.search(loc)
        if named:
            line = int(named.group(1))
        else:
            keys = [k for k in loc.split(".") if k and not k.isdigit()]
            for key in reversed(keys):
                pattern = re.compile(rf"^\s*(-\s*)?[\"']?{re.escape(key)}[\"']?\s*:")
                line = next((n for n, t in enumerate(lines, 1) if pattern.match(t)), None)
                if line is not None:
                    break
        text = lines[line - 1] if line is not None and 0 < line <= len(lines) else None
        found.append({"loc": loc, "msg": msg, "line": line, "text": text})
    return found


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
        listed = await run_operation(auth, "policies.list", app=info["name"])
    except VaultError as exc:
        return error_page(auth, exc, back="/portal/apps")
    shown, pager = paginate(listed["policies"], request)
    typed = typed or {"name": "", "source": STARTER}
    return render(
        auth,
        "policies.html",
        section="apps",
        status=status,
        error=error,
        problems=problems_at_lines(error, typed["source"]),
        notice=done_notice(request, NOTICES),
        app=info,
        policies=shown,
        total=len(listed["policies"]),
        pager=pager,
        typed=typed,
        cli=_cli(info["name"]),
    )


@router.get("/portal/apps/{app}/policies")
async def policies_page(request: Request, app: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _list_page(request, auth, app)


@router.post("/portal/apps/{app}/policies")
async def policy_create(request: Request, app: str) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    typed = {"name": form_text(form, "name"), "source": _source(form)}
    try:
        await run_operation(auth, "policies.put", app=app, **typed)
    except VaultError as exc:
        if exc.status in (403, 404):
            return error_page(auth, exc, back=f"{app_base(app)}/policies")
        return await _list_page(request, auth, app, status=exc.status, error=exc, typed=typed)
    return see_other(f"{app_base(app)}/policies/{quote(typed['name'], safe='')}?done=policy_saved")


def _source(form: FormData) -> str:
    value = form.get("source")
    return value.replace("\r\n", "\n") if isinstance(value, str) else ""


async def _policy_page(
    request: Request,
    auth: Auth,
    app: str,
    name: str,
    *,
    status: int = 200,
    error: VaultError | None = None,
    source: str | None = None,
    test: dict[str, str] | None = None,
    result: dict[str, Any] | None = None,
    template: str = "policy.html",
) -> Response:
    raw = request.query_params.get("version", "")
    version = int(raw) if raw.isdigit() else None
    try:
        info = await app_info(auth, app)
        shown = await run_operation(
            auth, "policies.show", app=info["name"], name=name, version=version
        )
        latest = await run_operation(auth, "policies.show", app=info["name"], name=name)
        grants = await run_operation(
            auth, "grants.list", app=info["name"], status="active", limit=1000
        )
    except VaultError as exc:
        return error_page(auth, exc, back=f"{app_base(app)}/policies")
    stored = shown.get("source") or yaml.safe_dump(shown["document"], sort_keys=False)
    text = source if source is not None else stored
    return render(
        auth,
        template,
        section="apps",
        status=status,
        error=error,
        problems=problems_at_lines(error, text),
        notice=done_notice(request, NOTICES),
        app=info,
        doc=shown,
        latest_version=latest["version"],
        source=text,
        grants=grants["grants"],
        methods=METHODS,
        test=test or {"method": "GET"},
        result=result,
        cli=_cli(info["name"], shown["name"]),
    )


@router.get("/portal/apps/{app}/policies/{name}")
async def policy_page(request: Request, app: str, name: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _policy_page(request, auth, app, name)


@router.post("/portal/apps/{app}/policies/{name}")
async def policy_save(request: Request, app: str, name: str) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    source = _source(form)
    try:
        await run_operation(auth, "policies.put", app=app, name=name, source=source)
    except VaultError as exc:
        if exc.status in (403, 404):
            return error_page(auth, exc, back=f"{app_base(app)}/policies")
        return await _policy_page(
            request, auth, app, name, status=exc.status, error=exc, source=source
        )
    return see_other(f"{app_base(app)}/policies/{quote(name, safe='')}?done=policy_saved")


@router.post("/portal/apps/{app}/policies/{name}/test")
async def policy_test(request: Request, app: str, name: str) -> Response:
    """Judge one call with the text in the editor in place of this policy: a read (an auditor
    may ask too), nothing stored or charged."""
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    source = _source(form)
    test = {k: form_text(form, k) for k in ("grant_id", "url", "method", "ip", "at")}
    try:
        result = await run_operation(
            auth,
            "policies.test",
            app=app,
            grant_id=test["grant_id"],
            url=test["url"],
            method=test["method"] or "GET",
            ip=test["ip"] or None,
            at=test["at"] or None,
            name=name,
            source=source,
        )
    except VaultError as exc:
        if exc.status in (403, 404) and exc.code.value != "grant_not_found":
            return error_page(auth, exc, back=f"{app_base(app)}/policies")
        return await _policy_page(
            request, auth, app, name, status=exc.status, error=exc, source=source, test=test
        )
    return await _policy_page(request, auth, app, name, source=source, test=test, result=result)


@router.get("/portal/apps/{app}/policies/{name}/delete")
async def policy_delete_confirm(request: Request, app: str, name: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _policy_page(request, auth, app, name, template="policy_delete.html")


@router.post("/portal/apps/{app}/policies/{name}/delete")
async def policy_delete(request: Request, app: str, name: str) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, _ = posted
    try:
        await run_operation(auth, "policies.delete", app=app, name=name)
    except VaultError as exc:
        return error_page(auth, exc, back=f"{app_base(app)}/policies")
    return see_other(f"{app_base(app)}/policies?done=policy_deleted")
