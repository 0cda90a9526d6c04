"""``grantvault grants``: who may use which secret."""

from __future__ import annotations

from typing import Annotated, Any

import typer

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
from grantvault_server.policy.cache import AppPolicies
from grantvault_server.services import (
    apps as app_service,
    grants as grant_service,
    policies as policy_service,
    secrets as secret_service,
)
from grantvault_server.services.vault import Vault, operator_actor

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
    principal_id = subject if principal == "user" else group if principal == "group" else None
    policy = (
        grant_service.GrantPolicy(max_ttl_seconds=int(parse_duration(ttl).total_seconds()))
        if ttl
        else None
    )

    async def action(vault: Vault) -> dict[str, Any]:
        app, ms = await secret_service.find_secret_any_app(vault, secret)
        return await grant_service.create_grant(
            vault,
            app,
            ms,
            operator_actor(),
            principal_type=principal,
            principal_id=principal_id,
            label=label,
            policy=policy,
            credential_id=credential,
        )

    result = run(with_vault(action))
    if as_json:
        emit(result)
    else:
        out.print(
            f"Created grant [bold]{result['grant_id']}[/] for {principal}"
            + (f" (expires {result['expires_at']})" if result["expires_at"] else "")
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

    async def action(vault: Vault) -> dict[str, Any]:
        target = await app_service.get_app(vault, app)
        result = await grant_service.list_grants(
            vault, target, provider=secret, status=status, limit=limit, offset=offset
        )
        # The app's policies once for the whole page (none read if it never had one).
        async with vault.db.read() as conn:
            entry = await policy_service.for_app(vault, conn, target)
        for g in result["grants"]:
            g["policies"] = _applying(g, entry)
        return result

    result = run(with_vault(action))
    if as_json:
        emit(result)
    else:
        table(
            f"Grants ({result['total']})",
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
                for g in result["grants"]
            ],
        )


def _applying(grant: dict[str, Any], entry: AppPolicies) -> list[dict[str, Any]]:
    """The policies that govern a grant's calls, in evaluation order (by name).

    ``conditional``: only when the call's end user is in the policy's ``applies_to.groups``.
    ``broken``: a stored policy that no longer compiles; it refuses every call of the app.
    """
    kind = "oauth" if grant["grant_kind"] == "oauth" else "managed_secret"
    credential = grant.get("managed_secret_slug") or grant.get("provider_id") or ""
    found: list[dict[str, Any]] = []
    for policy in entry.compiled:
        applies = policy_service.applies_statically(
            policy, kind, credential, grant["principal_type"]
        )
        if applies is not False:
            found.append(
                {"name": policy.name, "version": policy.version, "conditional": applies is None}
            )
    found.extend(
        {"name": bad.name, "version": bad.version, "conditional": False, "broken": True}
        for bad in entry.broken
    )
    return sorted(found, key=lambda p: str(p["name"]))


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

    async def action(vault: Vault) -> dict[str, Any]:
        app = await grant_service.find_grant_any_app(vault, grant_id)
        return await grant_service.revoke_grant(
            vault, app, grant_id, operator_actor(), reason=reason
        )

    result = run(with_vault(action))
    if as_json:
        emit(result)
    else:
        out.print(f"{result['message']} ({result['grant_id']} at {result['revoked_at']})")
