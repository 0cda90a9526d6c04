"""``keys.*``: an app's API keys (alter_rk_...)."""

from __future__ import annotations

from typing import Any

from grantvault_server.services import apps as app_service
from grantvault_server.services.admin.durations import parse_duration
from grantvault_server.services.admin.registry import AppParams, OpContext, operation


class CreateKey(AppParams):
    name: str | None = None
    expires_in: str | None = None


class ListKeys(AppParams):
    pass


class KeyRef(AppParams):
    key_id: str


class RotateKey(KeyRef):
    overlap: str = "7d"


class ExpireKey(KeyRef):
    expires_in: str


@operation(
    "keys.create",
    "POST",
    "/apps/{app}/keys",
    permission="write",
    summary="Mint an API key; it is shown once.",
)
async def create_key(ctx: OpContext, params: CreateKey) -> dict[str, Any]:
    app = await ctx.app(params.app, "write")
    now = ctx.vault.clock.now()
    expires_at = (
        now + parse_duration(params.expires_in, "expires_in") if params.expires_in else None
    )
    info, plaintext = await app_service.create_key(
        ctx.vault, app, ctx.actor, name=params.name, expires_at=expires_at
    )
    return {
        "key_id": info.id,
        "api_key": plaintext,
        "key_prefix": info.key_prefix,
        "expires_at": info.as_dict(now)["expires_at"],
    }


@operation(
    "keys.list",
    "GET",
    "/apps/{app}/keys",
    permission="read",
    summary="List an app's keys (prefixes only; keys are stored hashed).",
)
async def list_keys(ctx: OpContext, params: ListKeys) -> dict[str, Any]:
    app = await ctx.app(params.app, "read")
    now = ctx.vault.clock.now()
    return {"keys": [k.as_dict(now) for k in await app_service.list_keys(ctx.vault, app)]}


@operation(
    "keys.revoke",
    "POST",
    "/apps/{app}/keys/{key_id}/revoke",
    permission="write",
    summary="Revoke a key at once.",
)
async def revoke_key(ctx: OpContext, params: KeyRef) -> dict[str, Any]:
    app = await ctx.app(params.app, "write")
    info = await app_service.revoke_key(ctx.vault, app, params.key_id, ctx.actor)
    return info.as_dict(ctx.vault.clock.now())


@operation(
    "keys.rotate",
    "POST",
    "/apps/{app}/keys/{key_id}/rotate",
    permission="write",
    summary="Mint a successor; the old key works for the overlap window, then is refused.",
)
async def rotate_key(ctx: OpContext, params: RotateKey) -> dict[str, Any]:
    app = await ctx.app(params.app, "write")
    info, plaintext = await app_service.rotate_key(
        ctx.vault, app, params.key_id, ctx.actor, overlap=parse_duration(params.overlap, "overlap")
    )
    return {
        "key_id": info.id,
        "api_key": plaintext,
        "key_prefix": info.key_prefix,
        "replaces": params.key_id,
    }


@operation(
    "keys.expire",
    "POST",
    "/apps/{app}/keys/{key_id}/expire",
    permission="write",
    summary="Set when a key expires.",
)
async def expire_key(ctx: OpContext, params: ExpireKey) -> dict[str, Any]:
    app = await ctx.app(params.app, "write")
    at = ctx.vault.clock.now() + parse_duration(params.expires_in, "expires_in")
    info = await app_service.set_key_expiry(ctx.vault, app, params.key_id, at, ctx.actor)
    return info.as_dict(ctx.vault.clock.now())
