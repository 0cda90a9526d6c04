"""``grantvault apps``: apps, the tenant boundary."""

from __future__ import annotations

from typing import Annotated

import typer

from grantvault_server.cli._common import JsonOpt, emit, out, run, table, with_vault
from grantvault_server.services import apps as app_service
from grantvault_server.services.vault import operator_actor
from grantvault_server.timefmt import iso

apps_cli = typer.Typer(help="Apps: the tenant boundary.", no_args_is_help=True)


@apps_cli.command("create")
def apps_create(
    name: Annotated[str, typer.Argument(help="Lowercase name, e.g. demo.")],
    as_json: JsonOpt = False,
) -> None:
    """Create an app."""
    app = run(with_vault(lambda v: app_service.register_app(v, name, operator_actor())))
    data = {"app_id": app.id, "name": app.name}
    if as_json:
        emit(data)
    else:
        out.print(
            f"Created app [bold]{app.name}[/] ({app.id}). Next: grantvault keys create --app {app.name}"
        )


@apps_cli.command("list")
def apps_list(as_json: JsonOpt = False) -> None:
    """List apps."""
    items = run(with_vault(app_service.list_apps))
    if as_json:
        emit(
            {
                "apps": [
                    {"app_id": a.id, "name": a.name, "created_at": iso(a.created_at)} for a in items
                ]
            }
        )
    else:
        table(
            "Apps",
            ["name", "app_id", "created"],
            [[a.name, a.id, a.created_at.isoformat()] for a in items],
        )
