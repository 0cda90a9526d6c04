"""``grantvault apps``: apps, the tenant boundary."""

from __future__ import annotations

from typing import Annotated

import typer

from grantvault_server.cli._common import JsonOpt, emit, out, table
from grantvault_server.cli._invoke import call

apps_cli = typer.Typer(help="Apps: the tenant boundary.", no_args_is_help=True)


@apps_cli.command("create")
def apps_create(
    name: Annotated[str, typer.Argument(help="Lowercase name, e.g. demo.")],
    as_json: JsonOpt = False,
) -> None:
    """Create an app."""
    data = call("apps.create", name=name)
    if as_json:
        emit(data)
    else:
        out.print(
            f"Created app [bold]{data['name']}[/] ({data['app_id']}). "
            f"Next: grantvault keys create --app {data['name']}"
        )


@apps_cli.command("list")
def apps_list(as_json: JsonOpt = False) -> None:
    """List apps."""
    data = call("apps.list")
    if as_json:
        emit(data)
    else:
        table(
            "Apps",
            ["name", "app_id", "created"],
            [[a["name"], a["app_id"], a["created_at"]] for a in data["apps"]],
        )
