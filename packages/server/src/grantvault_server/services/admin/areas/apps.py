"""``apps.*``: the tenant boundary."""

from __future__ import annotations

from typing import Any

from grantvault_server.services import apps as app_service
from grantvault_server.services.admin.registry import OpContext, Params, operation
from grantvault_server.timefmt import iso


class CreateApp(Params):
    name: str


class ListApps(Params):
    pass


@operation("apps.create", "POST", "/apps", permission="write", summary="Create an app.")
async def create_app(ctx: OpContext, params: CreateApp) -> dict[str, Any]:
    # A new tenant is a vault-wide change: owners, or an unscoped admin.
    ctx.require("write")
    app = await app_service.register_app(ctx.vault, params.name, ctx.actor)
    return {"app_id": app.id, "name": app.name}


@operation("apps.list", "GET", "/apps", permission="read", summary="List apps.")
async def list_apps(ctx: OpContext, params: ListApps) -> dict[str, Any]:  # noqa: ARG001
    ctx.require("read")
    items = await app_service.list_apps(ctx.vault)
    return {
        "apps": [
            {"app_id": a.id, "name": a.name, "created_at": iso(a.created_at)}
            for a in items
            if ctx.principal.can_see_app(a.id)
        ]
    }
