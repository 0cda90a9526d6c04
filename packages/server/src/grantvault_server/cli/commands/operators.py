"""``grantvault operators``: the people who run the vault, and their personal API tokens.

The first owner is created on the server host (local mode: database access is authority).
After that, set ``GRANTVAULT_SERVER`` and ``GRANTVAULT_TOKEN`` to a token from
``operators token create`` and every command goes through the admin API.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.panel import Panel

from grantvault_server.cli._common import JsonOpt, emit, fail, out, table
from grantvault_server.cli._invoke import call

operators_cli = typer.Typer(
    help="Operators (owner, admin, auditor) and their personal API tokens.",
    no_args_is_help=True,
)
token_cli = typer.Typer(help="Personal API tokens (gvat_...) for automation.", no_args_is_help=True)
operators_cli.add_typer(token_cli, name="token")

RoleOpt = Annotated[str, typer.Option("--role", help="owner, admin or auditor.")]
AppsOpt = Annotated[
    list[str] | None,
    typer.Option("--apps", help="Limit to these apps (repeat); default every app."),
]


def _password(from_stdin: bool, required: bool) -> str | None:
    """The new password from stdin (scripts) or a hidden, confirmed prompt (people)."""
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            fail("--password-stdin: no password on stdin", 2)
        return value
    if not required:
        return None
    if not sys.stdin.isatty():
        fail("pass --password-stdin (and the password on stdin), or run interactively", 2)
    value = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return str(value)


def _show(data: dict[str, Any]) -> None:
    apps = ", ".join(data["apps"]) if data.get("apps") else "all apps"
    flags = [f for f in ("password", "totp", "sso") if data.get(f)]
    state = "disabled" if data.get("disabled") else "active"
    if data.get("locked_until"):
        state += f", locked until {data['locked_until']}"
    out.print(
        f"[bold]{data['name']}[/] ({data['operator_id']}): {data['role']} of {apps}; "
        f"sign-in: {', '.join(flags) or 'none'}; {state}"
    )


@operators_cli.command("create")
def operators_create(
    name: Annotated[str, typer.Argument(help="Lowercase name, e.g. alice.")],
    role: RoleOpt,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    apps: AppsOpt = None,
    sso_subject: Annotated[
        str | None,
        typer.Option(help="Single sign-on identity '<issuer> <subject>' instead of a password."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an operator (the first one on the server host, later through an owner)."""
    password = _password(password_stdin, required=sso_subject is None)
    data = call(
        "operators.create",
        name=name,
        role=role,
        password=password,
        apps=apps or None,
        sso_subject=sso_subject,
    )
    if as_json:
        emit(data)
    else:
        _show(data)
        out.print(f"Next: grantvault operators token create {data['name']} --name cli")


@operators_cli.command("list")
def operators_list(as_json: JsonOpt = False) -> None:
    """List operators (owners only)."""
    data = call("operators.list")
    if as_json:
        emit(data)
        return
    table(
        "Operators",
        ["name", "role", "apps", "sign-in", "state", "last login"],
        [
            [
                o["name"],
                o["role"],
                ", ".join(o["apps"]) if o["apps"] else "all",
                ", ".join(f for f in ("password", "totp", "sso") if o[f]),
                "disabled" if o["disabled"] else ("locked" if o["locked_until"] else "active"),
                o["last_login_at"],
            ]
            for o in data["operators"]
        ],
    )


@operators_cli.command("show")
def operators_show(name: str, as_json: JsonOpt = False) -> None:
    """Show one operator."""
    data = call("operators.show", operator=name)
    if as_json:
        emit(data)
    else:
        _show(data)


@operators_cli.command("update")
def operators_update(
    name: str,
    role: Annotated[str | None, typer.Option("--role", help="owner, admin or auditor.")] = None,
    apps: AppsOpt = None,
    all_apps: Annotated[bool, typer.Option("--all-apps", help="Lift the app limit.")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Set a new password from stdin.")
    ] = False,
    disable: Annotated[bool, typer.Option("--disable", help="Sign out and refuse.")] = False,
    enable: Annotated[bool, typer.Option("--enable", help="Allow sign-in again.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Change an operator's role, apps, password or state (owners only)."""
    if disable and enable:
        fail("--disable and --enable exclude each other", 2)
    data = call(
        "operators.update",
        operator=name,
        role=role,
        apps=apps or None,
        all_apps=all_apps or None,
        password=_password(password_stdin, required=False),
        disabled=True if disable else (False if enable else None),
    )
    if as_json:
        emit(data)
    else:
        _show(data)


@operators_cli.command("delete")
def operators_delete(name: str, as_json: JsonOpt = False) -> None:
    """Delete an operator; their tokens and sessions stop working at once."""
    data = call("operators.delete", operator=name)
    if as_json:
        emit(data)
    else:
        out.print(f"Deleted operator {data['name']}.")


@operators_cli.command("unlock")
def operators_unlock(name: str, as_json: JsonOpt = False) -> None:
    """Lift a lockout after too many failed sign-ins."""
    data = call("operators.unlock", operator=name)
    if as_json:
        emit(data)
    else:
        _show(data)


@token_cli.command("create")
def token_create(
    operator: Annotated[str, typer.Argument(help="Whose token (yours, or any as an owner).")],
    name: Annotated[str, typer.Option("--name", help="What it is for, e.g. ci.")],
    role: Annotated[
        str | None, typer.Option("--role", help="A lower role than the operator's.")
    ] = None,
    apps: AppsOpt = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime such as 90d; default: until revoked.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a personal API token. It is shown once: store it now."""
    data = call(
        "operators.token.create",
        operator=operator,
        name=name,
        role=role,
        apps=apps or None,
        expires_in=expires_in,
    )
    if as_json:
        emit(data)
        return
    out.print(
        Panel(
            data["token"],
            title=f"Token {data['name']} of {data['operator']} ({data['role']})",
            subtitle="shown once: store it now",
            expand=False,
        )
    )
    out.print("Use it: export GRANTVAULT_SERVER=https://<your vault> GRANTVAULT_TOKEN=<token>")


@token_cli.command("list")
def token_list(
    operator: Annotated[str | None, typer.Argument(help="Whose tokens (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List personal tokens (prefixes only; tokens are stored hashed)."""
    data = call("operators.token.list", operator=operator)
    if as_json:
        emit(data)
        return
    table(
        "Operator tokens",
        ["token_id", "operator", "name", "prefix", "role", "expires", "revoked", "last used"],
        [
            [
                t["token_id"],
                t["operator"],
                t["name"],
                t["prefix"] + "…",
                t["role"],
                t["expires_at"],
                t["revoked_at"],
                t["last_used_at"],
            ]
            for t in data["tokens"]
        ],
    )


@token_cli.command("revoke")
def token_revoke(token_id: str, as_json: JsonOpt = False) -> None:
    """Revoke a token at once."""
    data = call("operators.token.revoke", token_id=token_id)
    if as_json:
        emit(data)
    else:
        out.print(f"Revoked token {data['name']} ({data['prefix']}…).")
