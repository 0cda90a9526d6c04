"""The portal's users and groups page: an app's end users (created at their first verified
token) and the IdP groups seen in their tokens.

Lists filter by status and text and are paginated; disabling or enabling a user is confirmed
on a page that names the user (nothing changes on a GET) and runs ``users.disable`` or
``users.enable``, so authorisation and audit are the admin API's.
"""

from __future__ import annotations

import shlex
from typing import Any

from fastapi import APIRouter, Request, Response

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import InvalidInput, VaultError
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
from grantvault_server.web.portal_sections.providers import app_info, app_url

router = APIRouter(include_in_schema=False)

STATUSES = {"active": "Active", "disabled": "Disabled", "deleted": "Deleted"}
NOTICES = {
    "user_disabled": "The user is disabled: their tokens are refused and their grants revoked.",
    "user_enabled": "The user is enabled again. Revoked grants stay revoked.",
}
#: The most users one page load fetches (``users.list`` allows 1000).
FETCH = 1000
ACTIONS = ("disable", "enable")


def _cli(app: str, subject: str = "SUBJECT") -> list[Automation]:
    return [
        automation(
            "List users", f"grantvault users list --app {app} --json", "users.list", app=app
        ),
        automation(
            "List groups", f"grantvault groups list --app {app} --json", "groups.list", app=app
        ),
        automation(
            "Disable a user",
            f"grantvault users disable {subject} --app {app} --reason 'left' --json",
            "users.disable",
            app=app,
        ),
        automation(
            "Enable a user",
            f"grantvault users enable {subject} --app {app} --json",
            "users.enable",
            app=app,
        ),
    ]


def _matches(needle: str, *values: Any) -> bool:
    return not needle or any(needle in str(v or "").lower() for v in values)


async def _page(
    request: Request, auth: Auth, app: str, *, status: int = 200, error: VaultError | None = None
) -> Response:
    try:
        info = await app_info(auth, app)
    except VaultError as exc:
        return error_page(auth, exc, back="/portal/apps")
    wanted = request.query_params.get("status", "")
    if wanted not in STATUSES:
        wanted = ""
    query = request.query_params.get("q", "").strip()
    needle = query.lower()
    try:
        listed = await run_operation(
            auth, "users.list", app=info["name"], status=wanted or None, limit=FETCH
        )
        groups = await run_operation(auth, "groups.list", app=info["name"])
    except VaultError as exc:
        if exc.code is not ErrorCode.IDP_NOT_CONFIGURED:
            return error_page(auth, exc, back=app_url(info["name"]))
        listed, groups = None, None
    users = [
        u
        for u in (listed["users"] if listed else [])
        if _matches(needle, u["subject"], u["email"], u["display_name"], *u["groups"])
    ]
    shown, pager = paginate(users, request)
    group_rows = [
        g for g in (groups["groups"] if groups else []) if _matches(needle, g["external_id"])
    ]
    return render(
        auth,
        "users.html",
        section="apps",
        status=status,
        error=error,
        notice=NOTICES.get(request.query_params.get("done", "")),
        app=info,
        configured=listed is not None,
        users=shown,
        matching=len(users),
        total=listed["total"] if listed else 0,
        truncated=bool(listed and listed["has_more"]),
        groups=group_rows,
        status_filter=wanted,
        statuses=STATUSES,
        query=query,
        pager=pager,
        cli=_cli(info["name"]),
    )


@router.get("/portal/apps/{app}/users")
async def users_page(request: Request, app: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _page(request, auth, app)


@router.get("/portal/apps/{app}/users/{action}")
async def user_confirm(request: Request, app: str, action: str) -> Response:
    """The confirmation step (``?subject=``), naming the user; the POST below acts."""
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    subject = request.query_params.get("subject", "")
    try:
        if action not in ACTIONS:
            raise VaultError(ErrorCode.NOT_FOUND, "No such page.")
        info = await app_info(auth, app)
        listed = await run_operation(auth, "users.list", app=info["name"], limit=FETCH)
        user = next((u for u in listed["users"] if u["subject"] == subject), None)
        if user is None:
            raise VaultError(ErrorCode.NOT_FOUND, f"No user {subject!r} in this app.")
    except VaultError as exc:
        return error_page(auth, exc, back=app_url(app, "/users"))
    return render(
        auth,
        "user_confirm.html",
        section="apps",
        app=info,
        user=user,
        action=action,
        cli=[_cli(info["name"], shlex.quote(subject))[ACTIONS.index(action) + 2]],
    )


@router.post("/portal/apps/{app}/users/{action}")
async def user_act(request: Request, app: str, action: str) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    try:
        if action not in ACTIONS:
            raise VaultError(ErrorCode.NOT_FOUND, "No such action.")
        subject = form_text(form, "subject")
        if not subject:
            raise InvalidInput("Name the user (their subject) to act on.")
        await run_operation(
            auth,
            f"users.{action}",
            app=app,
            subject=subject,
            reason=form_text(form, "reason") or None,
        )
    except VaultError as exc:
        if exc.code in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND):
            return error_page(auth, exc, back=app_url(app, "/users"))
        return await _page(request, auth, app, status=exc.status, error=exc)
    return see_other(app_url(app, f"/users?done=user_{action}d"))
