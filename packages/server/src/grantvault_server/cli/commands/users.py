"""``grantvault users`` and ``grantvault groups``: an app's end users and their IdP groups."""

from __future__ import annotations

from typing import Annotated

import typer

from grantvault_server.cli._common import AppOpt, JsonOpt, emit, out, table
from grantvault_server.cli._invoke import call

users_cli = typer.Typer(
    help="An app's end users (created at their first verified token).", no_args_is_help=True
)
groups_cli = typer.Typer(help="The IdP groups seen in an app's user tokens.", no_args_is_help=True)

SubjectArg = Annotated[str, typer.Argument(help="The user's id at the IdP (the sub claim).")]
ReasonOpt = Annotated[str | None, typer.Option(help="Why (kept in the audit trail).")]


@users_cli.command("list")
def users_list(
    app: AppOpt,
    status: Annotated[str | None, typer.Option(help="active, disabled or deleted.")] = None,
    limit: int = 100,
    offset: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """List the app's users."""
    result = call("users.list", app=app, status=status, limit=limit, offset=offset)
    if as_json:
        emit(result)
    else:
        table(
            f"Users ({result['total']})",
            ["subject", "email", "name", "status", "groups", "last seen"],
            [
                [
                    u["subject"],
                    u["email"],
                    u["display_name"],
                    u["status"],
                    ", ".join(u["groups"][:5]) + (" ..." if len(u["groups"]) > 5 else ""),
                    u["last_seen_at"],
                ]
                for u in result["users"]
            ],
        )


@users_cli.command("disable")
def users_disable(
    subject: SubjectArg, app: AppOpt, reason: ReasonOpt = None, as_json: JsonOpt = False
) -> None:
    """Cut a user off at once: their tokens are refused and their grants revoked."""
    result = call("users.disable", app=app, subject=subject, reason=reason)
    if as_json:
        emit(result)
    else:
        out.print(
            f"Disabled {result['subject']}; revoked {len(result['revoked_grants'])} grant(s).",
            highlight=False,
        )


@users_cli.command("enable")
def users_enable(
    subject: SubjectArg, app: AppOpt, reason: ReasonOpt = None, as_json: JsonOpt = False
) -> None:
    """Let a disabled user in again (revoked grants stay revoked)."""
    result = call("users.enable", app=app, subject=subject, reason=reason)
    if as_json:
        emit(result)
    else:
        out.print(f"Enabled {result['subject']}.", highlight=False)


@groups_cli.command("list")
def groups_list(app: AppOpt, as_json: JsonOpt = False) -> None:
    """List the groups seen in the app's user tokens, with their member counts."""
    result = call("groups.list", app=app)
    if as_json:
        emit(result)
    else:
        table(
            f"Groups ({result['total']})",
            ["external id", "members", "first seen"],
            [[g["external_id"], g["members"], g["created_at"]] for g in result["groups"]],
        )
