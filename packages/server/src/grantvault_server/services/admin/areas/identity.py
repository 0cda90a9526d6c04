"""``idp.*``, ``users.*``, ``groups.*``: an app's identity provider and its end users.

Everything here belongs to one app, so every handler starts with ``ctx.app(...)``: an
app-scoped operator sees another app's identity provider and users as unknown, and an
auditor (read only) is refused every change before anything is fetched or written.

Secrets never leave: the sign-in client's secret goes in and is only ever reported as
``client_secret_set``; a webhook secret the vault generates is answered once, at creation
(like an API key), and one the IdP generated and the operator imports is never echoed.
"""

from __future__ import annotations

from typing import Any

from pydantic import StrictBool

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError
from grantvault_server.identity.discovery import DiscoveryError, discover
from grantvault_server.services.admin.registry import AppParams, OpContext, operation
from grantvault_server.services.identity import idp as idp_service, service as identity
from grantvault_server.services.identity.idp import active_config, require_config
from grantvault_server.services.identity.users import list_groups, list_users


class SetIdp(AppParams):
    """``None`` keeps the current value (or the default for a new IdP)."""

    issuer: str
    audience: str | None = None
    user_id_claim: str | None = None
    #: ``""`` removes the groups mapping.
    groups_claim: str | None = None
    email_claim: str | None = None
    name_claim: str | None = None
    #: JWS algorithms to accept; ``None``: what discovery advertises.
    algorithms: list[str] | None = None
    #: The vault's OIDC client at the IdP, for sign-in; without a secret it is a public client.
    client_id: str | None = None
    client_secret: str | None = None
    #: Remove the sign-in client. (Strict, like every body flag: ``1`` or ``"yes"`` is no
    #: boolean, and a lax parse could force a change nobody asked for.)
    no_signin: StrictBool = False
    #: Change locked claim mappings, or replace the issuer, after users have signed in.
    force: StrictBool = False


class ShowIdp(AppParams):
    pass


class DiscoverIdp(AppParams):
    issuer: str


class WebhookSecret(AppParams):
    #: A ``whsec_`` secret the IdP generated, to import; ``None``: the vault generates one.
    secret: str | None = None


class ListUsers(AppParams):
    status: str | None = None
    limit: int = 100
    offset: int = 0


class UserStatus(AppParams):
    #: The user's id at the IdP (the ``sub`` claim). In the body, not the path: a subject may
    #: hold any printable character, ``/`` included, which no path segment can carry.
    subject: str
    #: Why (kept in the audit trail).
    reason: str | None = None


class ListGroups(AppParams):
    pass


# --------------------------------------------------------------------------- idp


@operation(
    "idp.set",
    "PUT",
    "/apps/{app}/idp",
    permission="write",
    summary="Point an app at its identity provider (validated by OIDC discovery).",
)
async def set_idp(ctx: OpContext, params: SetIdp) -> dict[str, Any]:
    # Authorised before discovery: a refused operator must not make the vault fetch anything.
    app = await ctx.app(params.app, "write")
    settings = idp_service.IdpSettings(
        issuer=params.issuer,
        audience=params.audience,
        user_id_claim=params.user_id_claim,
        groups_claim=params.groups_claim,
        email_claim=params.email_claim,
        name_claim=params.name_claim,
        algorithms=tuple(params.algorithms) if params.algorithms is not None else None,
        signin_client_id=params.client_id,
        signin_client_secret=params.client_secret,
        clear_signin=params.no_signin,
    )
    return await idp_service.set_idp(ctx.vault, app, ctx.actor, settings, force=params.force)


@operation(
    "idp.show",
    "GET",
    "/apps/{app}/idp",
    permission="read",
    summary="Show the app's identity provider (secrets only as whether they are set).",
)
async def show_idp(ctx: OpContext, params: ShowIdp) -> dict[str, Any]:
    app = await ctx.app(params.app, "read")
    return await idp_service.show_idp(ctx.vault, app)


@operation(
    "idp.discover",
    "POST",
    "/apps/{app}/idp/discover",
    permission="write",
    summary="Fetch an issuer's OIDC discovery document and show what `idp set` would keep.",
)
async def discover_idp(ctx: OpContext, params: DiscoverIdp) -> dict[str, Any]:
    """The portal's "Discover" step: nothing is saved.

    It needs ``write`` on the app (not ``read``) because it makes the vault fetch a URL the
    caller chose; the fetch follows the outbound URL rule like every other.
    """
    app = await ctx.app(params.app, "write")
    try:
        found = await discover(
            params.issuer, ctx.vault.settings.allow_http_hosts, http=ctx.vault.http
        )
    except DiscoveryError as exc:
        raise VaultError(ErrorCode.IDP_DISCOVERY_FAILED, str(exc)) from None
    current = await active_config(ctx.vault, app.id, fresh=True)
    same = current is not None and current.issuer == found.issuer
    mappings = (
        {f: getattr(current, f) for f in idp_service.MAPPING_FIELDS}
        if same and current is not None
        # (services.identity.idp keeps its defaults private; it is the one place they live.)
        else {f: idp_service._DEFAULT_MAPPINGS[f] for f in idp_service.MAPPING_FIELDS}
    )
    return {
        "issuer": found.issuer,
        "jwks_uri": found.jwks_uri,
        "algorithms": list(found.algorithms),
        **found.endpoints(),
        # What `idp set` keeps for this issuer unless told otherwise: the current mappings
        # when the issuer is already configured, else the defaults.
        "claims": {f.removesuffix("_claim"): v for f, v in mappings.items()},
        "configured": same,
    }


@operation(
    "idp.webhook-secret",
    "POST",
    "/apps/{app}/idp/webhook-secret",
    permission="write",
    summary="Create (or import) the deprovisioning webhook's signing secret; shown once.",
)
async def webhook_secret(ctx: OpContext, params: WebhookSecret) -> dict[str, Any]:
    app = await ctx.app(params.app, "write")
    secret = await idp_service.set_webhook_secret(ctx.vault, app, ctx.actor, secret=params.secret)
    url = ctx.vault.settings.effective_public_base_url + idp_service.WEBHOOK_PATH.format(
        app_id=app.id
    )
    # A generated secret is answered once (the IdP must be told it); an imported one the
    # caller already has, so it is not echoed.
    return {"url": url, "secret": None if params.secret is not None else secret}


# --------------------------------------------------------------------------- users, groups


@operation(
    "users.list",
    "GET",
    "/apps/{app}/users",
    permission="read",
    summary="List the app's users (created at their first verified token).",
)
async def users_list(ctx: OpContext, params: ListUsers) -> dict[str, Any]:
    app = await ctx.app(params.app, "read")
    config = require_config(await active_config(ctx.vault, app.id, fresh=True))
    return await list_users(
        ctx.vault, config, status=params.status, limit=params.limit, offset=params.offset
    )


@operation(
    "users.disable",
    "POST",
    "/apps/{app}/users/disable",
    permission="write",
    summary="Cut a user off at once: their tokens are refused and their grants revoked.",
)
async def users_disable(ctx: OpContext, params: UserStatus) -> dict[str, Any]:
    app = await ctx.app(params.app, "write")
    revoked = await identity.disable_user(
        ctx.vault, app.id, params.subject, ctx.actor, reason=params.reason
    )
    return {"subject": params.subject, "status": "disabled", "revoked_grants": revoked}


@operation(
    "users.enable",
    "POST",
    "/apps/{app}/users/enable",
    permission="write",
    summary="Let a disabled user in again (revoked grants stay revoked).",
)
async def users_enable(ctx: OpContext, params: UserStatus) -> dict[str, Any]:
    app = await ctx.app(params.app, "write")
    await identity.enable_user(ctx.vault, app.id, params.subject, ctx.actor, reason=params.reason)
    return {"subject": params.subject, "status": "active"}


@operation(
    "groups.list",
    "GET",
    "/apps/{app}/groups",
    permission="read",
    summary="List the IdP groups seen in the app's user tokens, with member counts.",
)
async def groups_list(ctx: OpContext, params: ListGroups) -> dict[str, Any]:
    app = await ctx.app(params.app, "read")
    config = require_config(await active_config(ctx.vault, app.id, fresh=True))
    return await list_groups(ctx.vault, config)
