"""The ``grantvault`` command: run the server and operate it (apps, keys, secrets, grants,
policies, OAuth providers, identity, audit, operators, master key).

Commands act on the database named by the same ``GRANTVAULT_*`` settings as the server,
through the same services (so every change is audited), and may run while it serves. With
``GRANTVAULT_SERVER`` and ``GRANTVAULT_TOKEN`` (or ``--server``/``--token``) they drive that
vault through its admin API instead (``cli._invoke``), with the same output.
Every command has ``--help``; listing and creating commands take ``--json`` and then print
exactly one JSON object on stdout. Errors go to stderr with a non-zero exit code:
1 for a refused operation, 2 for bad configuration or usage, 3 for a wrong master key.
"""

from __future__ import annotations

from typing import Annotated

import typer

from grantvault_server.cli._invoke import configure_target
from grantvault_server.cli.commands.apps import apps_cli
from grantvault_server.cli.commands.audit import audit_cli
from grantvault_server.cli.commands.db import db_cli
from grantvault_server.cli.commands.grants import grants_cli
from grantvault_server.cli.commands.idp import idp_cli
from grantvault_server.cli.commands.keys import keys_cli
from grantvault_server.cli.commands.master_key import master_key_cli
from grantvault_server.cli.commands.operators import operators_cli
from grantvault_server.cli.commands.policies import policies_cli
from grantvault_server.cli.commands.providers import providers_cli
from grantvault_server.cli.commands.secrets import secrets_cli
from grantvault_server.cli.commands.serve import serve
from grantvault_server.cli.commands.users import groups_cli, users_cli

cli = typer.Typer(
    name="grantvault",
    help="Grantvault: the credential vault for apps and AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from grantvault_server import __version__

        typer.echo(f"grantvault {__version__}")
        raise typer.Exit()


@cli.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="GRANTVAULT_SERVER",
            help="Drive this vault through its admin API (with --token) instead of the "
            "local database.",
            show_envvar=True,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="GRANTVAULT_TOKEN",
            help="An operator token (gvat_...) for --server.",
            show_envvar=True,
        ),
    ] = None,
) -> None:
    """Grantvault: the credential vault for apps and AI agents."""
    del version  # handled by its eager callback
    # Set on every invocation (also to "none"), so nothing leaks from one to the next.
    configure_target(server, token)


cli.command()(serve)
for sub, name in (
    (apps_cli, "apps"),
    (keys_cli, "keys"),
    (secrets_cli, "secrets"),
    (grants_cli, "grants"),
    (policies_cli, "policies"),
    (providers_cli, "providers"),
    (idp_cli, "idp"),
    (users_cli, "users"),
    (groups_cli, "groups"),
    (audit_cli, "audit"),
    (operators_cli, "operators"),
    (db_cli, "db"),
    (master_key_cli, "master-key"),
):
    cli.add_typer(sub, name=name)


def main() -> None:
    cli()
