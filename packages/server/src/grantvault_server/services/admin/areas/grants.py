"""``grants.*``: who may use which secret.

The CLI names a secret (``grants create --secret``) and a grant (``grants revoke``) by id
alone, so these operations find the object across apps first and then treat one in an app
the operator may not see exactly like an unknown id: an app-scoped admin learns nothing
about other apps, not even that an id exists.

``grants.list`` adds to each grant the policies that govern its calls (for the operator
deciding whether a grant is safe to hand out); the policies are loaded once per page.
"""

from __future__ import annotations

from typing import Any

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import NotFound
from grantvault_server.policy.cache import AppPolicies
from grantvault_server.services import (
    grants as grant_service,
    policies as policy_service,
    secrets as secret_service,
)
from grantvault_server.services.admin.durations import parse_duration
from grantvault_server.services.admin.registry import AppParams, OpContext, Params, operation
from grantvault_server.services.apps import App
from grantvault_server.services.operators import Permission
from grantvault_server.services.secrets import ManagedSecret


class CreateGrant(Params):
    managed_secret_id: str
    #: ``system``, ``user`` or ``group``.
    principal_type: str = "system"
    #: The user's IdP subject (``sub``) or the group's external id; none for ``system``.
    principal_id: str | None = None
    #: Tells sibling grants of one secret apart.
    label: str | None = None
    #: The grant expires after this long (``30d``, ``12h``).
    ttl: str | None = None
    #: The credential the grant uses, when the secret holds several.
    credential_id: str | None = None


class ListGrants(AppParams):
    #: Only this secret (slug or id) or OAuth provider id.
    secret: str | None = None
    #: ``active``, ``revoked`` or ``expired``.
    status: str | None = None
    limit: int = 100
    offset: int = 0


class RevokeGrant(Params):
    grant_id: str
    #: Why (kept in the audit trail).
    reason: str | None = None


async def _secret(ctx: OpContext, ident: str, permission: Permission) -> tuple[App, ManagedSecret]:
    """The secret ``ident`` if this principal may see its app, with ``permission`` checked
    on that app; a secret of an unseen app answers like an unknown one."""
    app, secret = await secret_service.find_secret_any_app(ctx.vault, ident)
    if not ctx.principal.can_see_app(app.id):
        raise NotFound("managed secret", ident, ErrorCode.SECRET_NOT_FOUND)
    return await ctx.app(app.id, permission), secret


async def _grant_app(ctx: OpContext, grant_id: str, permission: Permission) -> App:
    """The app of grant ``grant_id`` if this principal may see it (else "no such grant")."""
    app = await grant_service.find_grant_any_app(ctx.vault, grant_id)
    if not ctx.principal.can_see_app(app.id):
        raise NotFound("grant", grant_id, ErrorCode.GRANT_NOT_FOUND)
    return await ctx.app(app.id, permission)


@operation(
    "grants.create",
    "POST",
    "/secrets/{managed_secret_id}/grants",
    permission="write",
    summary="Grant a principal (system, user or group) the use of a managed secret.",
)
async def create_grant(ctx: OpContext, params: CreateGrant) -> dict[str, Any]:
    app, secret = await _secret(ctx, params.managed_secret_id, "write")
    policy = (
        grant_service.GrantPolicy(
            max_ttl_seconds=int(parse_duration(params.ttl, "ttl").total_seconds())
        )
        if params.ttl
        else None
    )
    return await grant_service.create_grant(
        ctx.vault,
        app,
        secret,
        ctx.actor,
        principal_type=params.principal_type,
        principal_id=params.principal_id,
        label=params.label,
        policy=policy,
        credential_id=params.credential_id,
    )


@operation(
    "grants.list",
    "GET",
    "/apps/{app}/grants",
    permission="read",
    summary="List an app's grants, with the policies that apply to each.",
)
async def list_grants(ctx: OpContext, params: ListGrants) -> dict[str, Any]:
    app = await ctx.app(params.app, "read")
    result = await grant_service.list_grants(
        ctx.vault,
        app,
        provider=params.secret,
        status=params.status,
        limit=params.limit,
        offset=params.offset,
    )
    # The app's policies once for the whole page (none read if it never had one).
    async with ctx.vault.db.read() as conn:
        entry = await policy_service.for_app(ctx.vault, conn, app)
    for item in result["grants"]:
        item["policies"] = applying(item, entry)
    return result


def applying(grant: dict[str, Any], entry: AppPolicies) -> list[dict[str, Any]]:
    """The policies that govern a grant's calls, in evaluation order (by name).

    ``conditional``: only when the call's end user is in the policy's ``applies_to.groups``
    (which only the call can tell). ``broken``: a stored policy that no longer compiles; it
    refuses every call of the app, so it is listed on every grant.
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


@operation(
    "grants.revoke",
    "POST",
    "/grants/{grant_id}/revoke",
    permission="write",
    summary="Revoke a grant at once (an OAuth grant's tokens are revoked at the provider).",
)
async def revoke_grant(ctx: OpContext, params: RevokeGrant) -> dict[str, Any]:
    app = await _grant_app(ctx, params.grant_id, "write")
    return await grant_service.revoke_grant(
        ctx.vault, app, params.grant_id, ctx.actor, reason=params.reason
    )
