"""``grantvault grants``: who may use which secret.

Each command turns its options into the inputs of a ``grants.*`` operation
(``services.admin.areas.grants``), runs it here or on a remote vault (``cli._invoke``) and
renders the answer, so both modes print the same thing.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from grantvault_server.cli._common import AppOpt, JsonOpt, emit, fail, out, table
from grantvault_server.cli._invoke import call
from grantvault_server.errors import VaultError
from grantvault_server.services import grants as grant_service
from grantvault_server.services.admin.durations import parse_duration

grants_cli = typer.Typer(help="Grants: who may use which secret.", no_args_is_help=True)


@grants_cli.command("create")
def grants_create(
    secret: Annotated[str, typer.Option("--secret", help="managed_secret_id.")],
    principal: Annotated[str, typer.Option(help="system, user or group.")] = "system",
    subject: Annotated[str | None, typer.Option(help="User: the IdP subject id (sub).")] = None,
    group: Annotated[str | None, typer.Option(help="Group: the external group id.")] = None,
    label: Annotated[str | None, typer.Option(help="Label to tell sibling grants apart.")] = None,
    ttl: Annotated[str | None, typer.Option(help="Expire after e.g. 30d.")] = None,
    credential: Annotated[
        str | None, typer.Option(help="Credential id, when the secret has several.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Grant a principal the use of a managed secret."""
    if ttl is not None:
        # A mistyped option is a usage error (exit 2) before anything is sent; the
        # operation parses the same text with the same function.
        try:
            parse_duration(ttl, "--ttl")
        except VaultError as exc:
            fail(exc.message, 2)
    principal_id = subject if principal == "user" else group if principal == "group" else None
    data = call(
        "grants.create",
        managed_secret_id=secret,
        principal_type=principal,
        principal_id=principal_id,
        label=label,
        ttl=ttl,
        credential_id=credential,
    )
    if as_json:
        emit(data)
    else:
        out.print(
            f"Created grant [bold]{data['grant_id']}[/] for {data['principal_type']}"
            + (f" (expires {data['expires_at']})" if data["expires_at"] else "")
            + "."
        )


@grants_cli.command("list")
def grants_list(
    app: AppOpt,
    secret: Annotated[
        str | None, typer.Option(help="Only this secret (slug or id) or OAuth provider id.")
    ] = None,
    status: Annotated[str | None, typer.Option(help="active, revoked or expired.")] = None,
    limit: int = 100,
    offset: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """List an app's grants, with the policies that apply to each.

    A policy marked "(groups)" applies only to calls whose end user is in one of its
    applies_to.groups; one marked "(unreadable)" refuses every call of the app until it is
    stored again or deleted.
    """
    data = call("grants.list", app=app, secret=secret, status=status, limit=limit, offset=offset)
    if as_json:
        emit(data)
        return
    table(
        f"Grants ({data['total']})",
        [
            "grant_id",
            "secret / provider",
            "account",
            "principal",
            "status",
            "expires",
            "last used",
            "scope mismatch",
            "policies",
        ],
        [
            [
                g["grant_id"],
                g.get("managed_secret_slug") or g.get("provider_id"),
                g.get("account_identifier"),
                grant_service.principal_label(g["principal_type"], g["principal_id"]),
                g["status"],
                g["expires_at"],
                g["last_used_at"],
                # The client reported a provider refusal for a missing scope (and the
                # grant has not been reconnected with it since): when.
                g["scope_mismatch_at"] if g["scope_mismatch"] else None,
                ", ".join(_policy_label(p) for p in g["policies"]),
            ]
            for g in data["grants"]
        ],
    )


def _policy_label(policy: dict[str, Any]) -> str:
    if policy.get("broken"):
        return f"{policy['name']} (unreadable)"
    return f"{policy['name']} (groups)" if policy["conditional"] else str(policy["name"])


@grants_cli.command("revoke")
def grants_revoke(
    grant_id: str,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the audit trail).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a grant at once."""
    data = call("grants.revoke", grant_id=grant_id, reason=reason)
    if as_json:
        emit(data)
    else:
        out.print(f"{data['message']} ({data['grant_id']} at {data['revoked_at']})")
