"""``grantvault keys``: an app's API keys."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.panel import Panel

from grantvault_server.cli._common import AppOpt, JsonOpt, emit, out, table
from grantvault_server.cli._invoke import call

keys_cli = typer.Typer(help="API keys of an app (alter_rk_...).", no_args_is_help=True)


def _shown_once(data: dict[str, Any], title: str) -> None:
    out.print(
        Panel(data["api_key"], title=title, subtitle="shown once: store it now", expand=False)
    )


@keys_cli.command("create")
def keys_create(
    app: AppOpt,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    expires_in: Annotated[str | None, typer.Option(help="Lifetime such as 90d or 12h.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Mint an API key. It is shown once: store it now."""
    data = call("keys.create", app=app, name=name, expires_in=expires_in)
    if as_json:
        emit(data)
    else:
        _shown_once(data, f"API key {data['key_id']}")


@keys_cli.command("list")
def keys_list(app: AppOpt, as_json: JsonOpt = False) -> None:
    """List an app's keys (prefixes only; keys are stored hashed)."""
    data = call("keys.list", app=app)
    if as_json:
        emit(data)
    else:
        table(
            "API keys",
            ["key_id", "prefix", "name", "status", "expires", "created"],
            [
                [
                    k["key_id"],
                    k["key_prefix"] + "…",
                    k["name"],
                    k["status"],
                    k["expires_at"],
                    k["created_at"],
                ]
                for k in data["keys"]
            ],
        )


@keys_cli.command("revoke")
def keys_revoke(key_id: str, app: AppOpt, as_json: JsonOpt = False) -> None:
    """Revoke a key at once."""
    data = call("keys.revoke", app=app, key_id=key_id)
    if as_json:
        emit(data)
    else:
        out.print(f"Revoked key {data['key_id']} ({data['key_prefix']}…).")


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
    data = call("keys.rotate", app=app, key_id=key_id, overlap=overlap)
    if as_json:
        emit(data)
    else:
        _shown_once(data, f"API key {data['key_id']} (replaces {key_id})")


@keys_cli.command("expire")
def keys_expire(
    key_id: str,
    app: AppOpt,
    in_: Annotated[str, typer.Option("--in", help="When the key stops working, e.g. 0s, 1h, 30d.")],
    as_json: JsonOpt = False,
) -> None:
    """Set when a key expires."""
    data = call("keys.expire", app=app, key_id=key_id, expires_in=in_)
    if as_json:
        emit(data)
    else:
        out.print(f"Key {data['key_id']} expires at {data['expires_at']}.")
