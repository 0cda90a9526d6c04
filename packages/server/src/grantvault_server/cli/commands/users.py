"""``grantvault users`` and ``grantvault groups``: an app's end users and their IdP groups."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from grantvault_server.cli._common import AppOpt, JsonOpt, emit, out, run, table, with_vault
from grantvault_server.services import apps as app_service
from grantvault_server.services.identity import service as identity
from grantvault_server.services.identity.idp import active_config, require_config
from grantvault_server.services.identity.users import list_groups, list_users
from grantvault_server.services.vault import Vault, operator_actor

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

    async def action(vault: Vault) -> dict[str, Any]:
        target = await app_service.get_app(vault, app)
        config = require_config(await active_config(vault, target.id, fresh=True))
        return await list_users(vault, config, status=status, limit=limit, offset=offset)

    result = run(with_vault(action))
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

    async def action(vault: Vault) -> list[str]:
        target = await app_service.get_app(vault, app)
        return await identity.disable_user(
            vault, target.id, subject, operator_actor(), reason=reason
        )

    revoked = run(with_vault(action))
    if as_json:
        emit({"subject": subject, "status": "disabled", "revoked_grants": revoked})
    else:
        out.print(
            f"Disabled {subject}; revoked {len(revoked)} grant(s).",
            highlight=False,
        )


@users_cli.command("enable")
def users_enable(
    subject: SubjectArg, app: AppOpt, reason: ReasonOpt = None, as_json: JsonOpt = False
) -> None:
    """Let a disabled user in again (revoked grants stay revoked)."""

    async def action(vault: Vault) -> None:
        target = await app_service.get_app(vault, app)
        await identity.enable_user(vault, target.id, subject, operator_actor(), reason=reason)

    run(with_vault(action))
    if as_json:
        emit({"subject": subject, "status": "active"})
    else:
        out.print(f"Enabled {subject}.", highlight=False)


@groups_cli.command("list")
def groups_list(app: AppOpt, as_json: JsonOpt = False) -> None:
    """List the groups seen in the app's user tokens, with their member counts."""

    async def action(vault: Vault) -> dict[str, Any]:
        target = await app_service.get_app(vault, app)
        config = require_config(await active_config(vault, target.id, fresh=True))
        return await list_groups(vault, config)

    result = run(with_vault(action))
    if as_json:
        emit(result)
    else:
        table(
            f"Groups ({result['total']})",
            ["external id", "members", "first seen"],
            [[g["external_id"], g["members"], g["created_at"]] for g in result["groups"]],
        )
