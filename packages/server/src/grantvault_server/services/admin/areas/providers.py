"""``providers.*``: an app's OAuth client registrations at providers.

A registration is a catalog provider (with endpoint overrides and deployment parameters),
a custom OAuth 2.0 server (its URLs), or an OpenID Connect issuer (found by discovery,
through this vault's outbound client). The client secret is write-only: accepted by
``providers.add``, sealed by the barrier, and only ever reported as ``client_secret_set``.
The redirect URI to register at the provider is derived from the settings of the vault that
runs the operation, so a remote CLI prints the server's, not the laptop's.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, StrictBool

from grantvault.types.errors import ErrorCode
from grantvault_server.config import Settings
from grantvault_server.errors import InvalidInput, VaultError
from grantvault_server.outbound import oidc
from grantvault_server.providers.oauth_catalog import catalog_item, load_oauth_catalog
from grantvault_server.providers.oauth_schema import OAuthProviderSpec
from grantvault_server.services import oauth_providers as provider_service
from grantvault_server.services.admin.registry import AppParams, OpContext, Params, operation
from grantvault_server.services.connect import CALLBACK_PATH
from grantvault_server.services.vault import Vault


class ListCatalog(Params):
    pass


class AddProvider(AppParams):
    #: A catalog id (``google``) or the id of a custom provider.
    provider: str
    client_id: str
    #: Write-only: stored sealed, never returned.
    client_secret: str | None = None
    #: Default scopes (``None``: the provider's).
    scopes: list[str] | None = None
    #: Scopes sessions may add (``None``: any).
    allowed_scopes: list[str] | None = None
    #: Deployment parameters (a Microsoft tenant).
    params: dict[str, str] = Field(default_factory=dict)
    #: Endpoint overrides of a catalog provider (authorize_url, token_url, ...).
    overrides: dict[str, str] = Field(default_factory=dict)
    #: API hosts the tokens may be sent to (custom providers and overrides).
    api_hosts: list[str] = Field(default_factory=list)
    #: A custom OpenID Connect provider: its issuer (discovery finds the endpoints).
    issuer: str | None = None
    #: A custom OAuth 2.0 provider: its endpoints.
    authorize_url: str | None = None
    token_url: str | None = None
    revocation_url: str | None = None
    userinfo_url: str | None = None
    account_field: str | None = None
    display_name: str | None = None
    #: Replace an existing registration (its id stays, so its grants keep working).
    replace: StrictBool = False

    @property
    def custom(self) -> bool:
        """An issuer, authorize URL or token URL makes the registration a custom one."""
        return bool(self.issuer or self.authorize_url or self.token_url)


class ListProviders(AppParams):
    pass


class ProviderRef(AppParams):
    provider: str


@operation(
    "providers.catalog",
    "GET",
    "/provider-catalog",
    permission="read",
    summary="List the OAuth providers the vault knows (endpoints, scopes and quirks built in).",
)
async def list_catalog(ctx: OpContext, params: ListCatalog) -> dict[str, Any]:  # noqa: ARG001
    ctx.require("read")
    # catalog_item is what /sdk/oauth/provider-catalog lists; ``pkce`` adds whether PKCE is
    # required, supported or unsupported, which the operator's table shows.
    return {
        "providers": {
            pid: {**catalog_item(spec), "pkce": spec.pkce}
            for pid, spec in load_oauth_catalog().items()
        }
    }


@operation(
    "providers.add",
    "POST",
    "/apps/{app}/providers",
    permission="write",
    summary="Register an OAuth client for an app (catalog provider, custom OAuth 2.0, or OIDC).",
)
async def add_provider(ctx: OpContext, params: AddProvider) -> dict[str, Any]:
    # First: a redirect URI that cannot be derived refuses before anything is looked up.
    redirect_uri = _redirect_uri(ctx.vault.settings)
    app = await ctx.app(params.app, "write")
    overrides: dict[str, Any] = dict(params.overrides)
    if params.api_hosts:
        overrides["api_hosts"] = list(params.api_hosts)
    # After the app is found, so a missing app is reported before a missing URL.
    spec = await _custom_spec(ctx.vault, params) if params.custom else None
    cfg = await provider_service.add_provider(
        ctx.vault,
        app,
        params.provider,
        ctx.actor,
        client_id=params.client_id,
        client_secret=params.client_secret,
        scopes=params.scopes,
        allowed_scopes=params.allowed_scopes,
        overrides=None if params.custom else (overrides or None),
        params=params.params,
        spec=spec,
        replace=params.replace,
    )
    return {
        **cfg.public(),
        "redirect_uri": redirect_uri,
        # The human output says when the URI came from the listen address, which is
        # rarely what browsers reach; the renderer has only this dictionary to go on.
        "redirect_uri_derived": not ctx.vault.settings.public_base_url,
    }


async def _custom_spec(vault: Vault, params: AddProvider) -> OAuthProviderSpec:
    """The spec of a custom provider: from the issuer's discovery document when an issuer
    is given, else from the URLs given."""
    allow = vault.settings.allow_http_hosts
    if params.issuer:
        # The one OIDC discovery (exact issuer, every endpoint on the URL rule), through
        # the vault's outbound client, as the server's IdP set-up uses it.
        try:
            doc = await oidc.discover(
                vault.http, params.issuer, required=("authorization_endpoint", "token_endpoint")
            )
        except oidc.DiscoveryError as exc:
            raise VaultError(
                ErrorCode.IDP_DISCOVERY_FAILED,
                f"the provider's discovery document could not be used: {exc}",
                reason=exc.code,
            ) from None
        return provider_service.spec_from_discovery(
            params.provider,
            doc,
            display_name=params.display_name,
            api_hosts=params.api_hosts,
            api_base_url=None,
            scopes=params.scopes or ["openid"],
            account_field=params.account_field,
            allow_http_hosts=allow,
        )
    if not (params.authorize_url and params.token_url):
        raise InvalidInput(
            "A custom OAuth 2.0 provider needs both an authorize URL and a token URL "
            "(--authorize-url and --token-url)."
        )
    return provider_service.custom_spec(
        params.provider,
        display_name=params.display_name,
        authorize_url=params.authorize_url,
        token_url=params.token_url,
        revocation_url=params.revocation_url,
        userinfo_url=params.userinfo_url,
        issuer=None,
        iss_parameter=False,
        api_hosts=params.api_hosts,
        api_base_url=None,
        scopes=params.scopes or [],
        account_field=params.account_field,
        allow_http_hosts=allow,
    )


#: Listen addresses that mean "every interface": no browser can be sent there.
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})  # noqa: S104 - recognised, never bound


def _redirect_uri(settings: Settings) -> str:
    """The URI Connect sends (``services.connect``), from the settings the server reads.

    Derived from GRANTVAULT_HOST/PORT only when that names a reachable host: a wildcard
    listen address would print a redirect URI no browser can follow.
    """
    if not settings.public_base_url and settings.host.strip() in _WILDCARD_HOSTS:
        raise InvalidInput(
            f"GRANTVAULT_HOST is {settings.host!r} (every interface), so the redirect URI to "
            "register at the provider cannot be derived from it: set "
            "GRANTVAULT_PUBLIC_BASE_URL to the URL users' browsers reach the vault at "
            "(https://vault.example.com), then run this again."
        )
    return f"{settings.effective_public_base_url}{CALLBACK_PATH}"


@operation(
    "providers.list",
    "GET",
    "/apps/{app}/providers",
    permission="read",
    summary="List an app's OAuth registrations (client secrets are never shown).",
)
async def list_providers(ctx: OpContext, params: ListProviders) -> dict[str, Any]:
    app = await ctx.app(params.app, "read")
    async with ctx.vault.db.read() as conn:
        configs = await provider_service.list_configs(conn, app.id)
    return {"providers": [c.public() for c in configs]}


@operation(
    "providers.remove",
    "DELETE",
    "/apps/{app}/providers/{provider}",
    permission="write",
    summary="Remove a registration (refused while it has grants that are not revoked).",
)
async def remove_provider(ctx: OpContext, params: ProviderRef) -> dict[str, Any]:
    app = await ctx.app(params.app, "write")
    await provider_service.remove_provider(ctx.vault, app, params.provider, ctx.actor)
    return {"provider_id": params.provider.lower(), "removed": True}
