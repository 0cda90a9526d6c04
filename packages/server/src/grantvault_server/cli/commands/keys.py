"""``grantvault keys``: an app's API keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.panel import Panel

from grantvault_server.cli._common import (
    AppOpt,
    JsonOpt,
    emit,
    out,
    parse_duration,
    run,
    table,
    with_vault,
)
from grantvault_server.services import apps as app_service
from grantvault_server.services.vault import Vault, operator_actor
from grantvault_server.timefmt import iso

keys_cli = typer.Typer(help="API keys of an app (alter_rk_...).", no_args_is_help=True)


@keys_cli.command("create")
def keys_create(
    app: AppOpt,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    expires_in: Annotated[str | None, typer.Option(help="Lifetime such as 90d or 12h.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Mint an API key. It is shown once: store it now."""
    expires_at = datetime.now(UTC) + parse_duration(expires_in) if expires_in else None

    async def action(vault: Vault) -> tuple[app_service.ApiKeyInfo, str]:
        target = await app_service.get_app(vault, app)
        return await app_service.create_key(
            vault, target, operator_actor(), name=name, expires_at=expires_at
        )

    info, plaintext = run(with_vault(action))
    if as_json:
        emit(
            {
                "key_id": info.id,
                "api_key": plaintext,
                "key_prefix": info.key_prefix,
                "expires_at": iso(info.expires_at),
            }
        )
    else:
        out.print(
            Panel(
                plaintext,
                title=f"API key {info.id}",
                subtitle="shown once: store it now",
                expand=False,
            )
        )


@keys_cli.command("list")
def keys_list(app: AppOpt, as_json: JsonOpt = False) -> None:
    """List an app's keys (prefixes only; keys are stored hashed)."""

    async def action(vault: Vault) -> list[app_service.ApiKeyInfo]:
        return await app_service.list_keys(vault, await app_service.get_app(vault, app))

    keys = run(with_vault(action))
    now = datetime.now(UTC)
    if as_json:
        emit({"keys": [k.as_dict(now) for k in keys]})
    else:
        table(
            "API keys",
            ["key_id", "prefix", "name", "status", "expires", "created"],
            [
                [k.id, k.key_prefix + "…", k.name, k.status(now), k.expires_at, k.created_at]
                for k in keys
            ],
        )


@keys_cli.command("revoke")
def keys_revoke(key_id: str, app: AppOpt, as_json: JsonOpt = False) -> None:
    """Revoke a key at once."""

    async def action(vault: Vault) -> app_service.ApiKeyInfo:
        return await app_service.revoke_key(
            vault, await app_service.get_app(vault, app), key_id, operator_actor()
        )

    info = run(with_vault(action))
    if as_json:
        emit(info.as_dict(datetime.now(UTC)))
    else:
        out.print(f"Revoked key {info.id} ({info.key_prefix}…).")


@keys_cli.command("rotate")
def keys_rotate(
    key_id: str,
    app: AppOpt,
    overlap: Annotated[
        str, typer.Option(help="How long the old key keeps working (max 30d).")
    ] = "7d",
    as_json: JsonOpt = False,
) -> None:
    """Mint a successor key; the old one works for the overlap window, then is refused."""

    async def action(vault: Vault) -> tuple[app_service.ApiKeyInfo, str]:
        target = await app_service.get_app(vault, app)
        return await app_service.rotate_key(
            vault, target, key_id, operator_actor(), overlap=parse_duration(overlap)
        )

    info, plaintext = run(with_vault(action))
    if as_json:
        emit(
            {
                "key_id": info.id,
                "api_key": plaintext,
                "key_prefix": info.key_prefix,
                "replaces": key_id,
            }
        )
    else:
        out.print(
            Panel(
                plaintext,
                title=f"API key {info.id} (replaces {key_id})",
                subtitle="shown once",
                expand=False,
            )
        )


@keys_cli.command("expire")
def keys_expire(
    key_id: str,
    app: AppOpt,
    in_: Annotated[str, typer.Option("--in", help="When the key stops working, e.g. 0s, 1h, 30d.")],
    as_json: JsonOpt = False,
) -> None:
    """Set when a key expires."""

    async def action(vault: Vault) -> app_service.ApiKeyInfo:
        target = await app_service.get_app(vault, app)
        return await app_service.set_key_expiry(
            vault, target, key_id, datetime.now(UTC) + parse_duration(in_), operator_actor()
        )

    info = run(with_vault(action))
    if as_json:
        emit(info.as_dict(datetime.now(UTC)))
    else:
        out.print(f"Key {info.id} expires at {info.expires_at}.")
