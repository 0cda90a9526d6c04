"""``grantvault providers``: an app's OAuth client registrations at providers."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from grantvault_server.cli._common import AppOpt, JsonOpt, emit, fail, out, run, table, with_vault
from grantvault_server.config import Settings
from grantvault_server.errors import InvalidInput
from grantvault_server.outbound import oidc
from grantvault_server.providers.oauth_schema import OAuthProviderSpec
from grantvault_server.services import apps as app_service, oauth_providers as providers
from grantvault_server.services.vault import Vault, operator_actor

providers_cli = typer.Typer(
    help="OAuth providers: the app's client id and secret at Google, GitHub, any OIDC server.",
    no_args_is_help=True,
)


@providers_cli.command("catalog")
def providers_catalog(as_json: JsonOpt = False) -> None:
    """List the providers the vault knows (endpoints, scopes and quirks are built in)."""
    from grantvault_server.providers.oauth_catalog import catalog_item, load_oauth_catalog

    catalog = load_oauth_catalog()
    if as_json:
        emit({"providers": {pid: catalog_item(spec) for pid, spec in catalog.items()}})
        return
    table(
        "OAuth provider catalog",
        ["id", "name", "category", "refresh", "pkce", "default scopes"],
        [
            [
                s.id,
                s.display_name,
                s.category,
                "yes" if s.supports_refresh else "no",
                s.pkce,
                " ".join(s.default_scopes),
            ]
            for s in catalog.values()
        ],
    )


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    out_: list[str] = []
    for v in values:
        out_.extend(p for p in v.replace(",", " ").split() if p)
    return out_


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{what} takes NAME=VALUE, got {item!r}")
        result[name.strip()] = value.strip()
    return result


# The options of `providers add` that describe endpoints: overrides of a catalog entry, or a
# whole custom provider (see _CustomProvider). Declared here so the command's signature
# reads as the list of what it takes.
_OverrideOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Endpoint override NAME=URL (authorize_url, token_url, revocation_url, "
        "userinfo_url, api_base_url, issuer), e.g. for GitHub Enterprise Server."
    ),
]
_ApiHostOpt = Annotated[
    list[str] | None,
    typer.Option(help="Custom/override: API host the tokens may be sent to (repeat)."),
]
_IssuerOpt = Annotated[
    str | None, typer.Option(help="Custom OIDC provider: issuer URL (discovery is used).")
]
_AuthorizeUrlOpt = Annotated[str | None, typer.Option(help="Custom OAuth 2.0: authorize URL.")]
_TokenUrlOpt = Annotated[str | None, typer.Option(help="Custom OAuth 2.0: token URL.")]
_RevocationUrlOpt = Annotated[str | None, typer.Option(help="Custom: RFC 7009 URL.")]
_UserinfoUrlOpt = Annotated[
    str | None, typer.Option(help="Custom: URL answering who the account is.")
]
_AccountFieldOpt = Annotated[
    str | None, typer.Option(help="Custom: claim/field naming the account (default sub).")
]
_DisplayNameOpt = Annotated[str | None, typer.Option(help="Custom: name shown to users.")]


@providers_cli.command("add")
def providers_add(
    app: AppOpt,
    provider: Annotated[str, typer.Argument(help="Catalog id (google) or a custom id.")],
    client_id: Annotated[str, typer.Option(help="The OAuth client id from the provider.")],
    client_secret_stdin: Annotated[
        bool, typer.Option(help="Read the client secret from stdin (never pass it as an argument).")
    ] = False,
    scopes: Annotated[
        list[str] | None, typer.Option("--scopes", help="Default scopes (space/comma separated).")
    ] = None,
    allowed_scopes: Annotated[
        list[str] | None,
        typer.Option(help="Scopes sessions may add with required_scopes (default: any)."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(help="Deployment parameter NAME=VALUE, e.g. tenant=contoso.onmicrosoft.com."),
    ] = None,
    override: _OverrideOpt = None,
    api_host: _ApiHostOpt = None,
    issuer: _IssuerOpt = None,
    authorize_url: _AuthorizeUrlOpt = None,
    token_url: _TokenUrlOpt = None,
    revocation_url: _RevocationUrlOpt = None,
    userinfo_url: _UserinfoUrlOpt = None,
    account_field: _AccountFieldOpt = None,
    display_name: _DisplayNameOpt = None,
    replace: Annotated[bool, typer.Option(help="Replace an existing registration.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register an OAuth client for an app (catalog provider, custom OAuth 2.0, or OIDC)."""
    secret = _read_client_secret() if client_secret_stdin else None
    overrides = _pairs(override, "--override")
    if api_host:
        overrides["api_hosts"] = api_host  # type: ignore[assignment]
    custom = _CustomProvider(
        provider,
        issuer=issuer,
        authorize_url=authorize_url,
        token_url=token_url,
        revocation_url=revocation_url,
        userinfo_url=userinfo_url,
        account_field=account_field,
        display_name=display_name,
        api_hosts=api_host or [],
    )

    async def action(vault: Vault) -> tuple[providers.ProviderConfig, str, bool]:
        redirect_uri = _redirect_uri(vault.settings)
        found = await app_service.get_app(vault, app)
        scope_list = _split(scopes)
        spec = await _custom_spec(vault, custom, scope_list) if custom.requested else None
        cfg = await providers.add_provider(
            vault,
            found,
            provider,
            operator_actor(),
            client_id=client_id,
            client_secret=secret,
            scopes=scope_list,
            allowed_scopes=_split(allowed_scopes),
            overrides=None if custom.requested else (overrides or None),
            params=_pairs(param, "--param"),
            spec=spec,
            replace=replace,
        )
        return cfg, redirect_uri, not vault.settings.public_base_url

    try:
        cfg, redirect_uri, derived = run(with_vault(action))
    except oidc.DiscoveryError as exc:
        fail(f"the provider's discovery document could not be used: {exc}", 1)
        return
    _report_registered(cfg, redirect_uri, derived=derived, as_json=as_json)


def _read_client_secret() -> str:
    """The client secret from stdin (arguments end up in shell history); empty is refused."""
    secret = sys.stdin.read().strip()
    if not secret:
        fail("--client-secret-stdin was given but stdin was empty", 2)
    return secret


@dataclass(frozen=True)
class _CustomProvider:
    """The options of ``providers add`` that describe a provider the catalog does not know."""

    provider: str
    issuer: str | None
    authorize_url: str | None
    token_url: str | None
    revocation_url: str | None
    userinfo_url: str | None
    account_field: str | None
    display_name: str | None
    api_hosts: list[str]

    @property
    def requested(self) -> bool:
        """An issuer, authorize URL or token URL makes the registration a custom one."""
        return bool(self.issuer or self.authorize_url or self.token_url)


async def _custom_spec(
    vault: Vault, custom: _CustomProvider, scope_list: list[str] | None
) -> OAuthProviderSpec:
    """The spec of a custom provider: from the issuer's discovery document when an issuer
    is given, else from the URLs on the command line. Runs inside the vault's action, after
    the app is found, so a missing app is reported before a missing URL."""
    allow = vault.settings.allow_http_hosts
    if custom.issuer:
        # The one OIDC discovery (exact issuer, every endpoint on the URL rule),
        # through the vault's outbound client, as the server's IdP set-up uses it.
        doc = await oidc.discover(
            vault.http, custom.issuer, required=("authorization_endpoint", "token_endpoint")
        )
        return providers.spec_from_discovery(
            custom.provider,
            doc,
            display_name=custom.display_name,
            api_hosts=custom.api_hosts,
            api_base_url=None,
            scopes=scope_list or ["openid"],
            account_field=custom.account_field,
            allow_http_hosts=allow,
        )
    if not (custom.authorize_url and custom.token_url):
        fail("a custom OAuth 2.0 provider needs --authorize-url and --token-url", 2)
    return providers.custom_spec(
        custom.provider,
        display_name=custom.display_name,
        authorize_url=custom.authorize_url or "",
        token_url=custom.token_url or "",
        revocation_url=custom.revocation_url,
        userinfo_url=custom.userinfo_url,
        issuer=None,
        iss_parameter=False,
        api_hosts=custom.api_hosts,
        api_base_url=None,
        scopes=scope_list or [],
        account_field=custom.account_field,
        allow_http_hosts=allow,
    )


def _report_registered(
    cfg: providers.ProviderConfig, redirect_uri: str, *, derived: bool, as_json: bool
) -> None:
    """Tell the operator the redirect URI to register at the provider, and when it was
    derived from the listen address rather than configured."""
    if as_json:
        emit({**cfg.public(), "redirect_uri": redirect_uri})
        return
    out.print(
        f"Registered [bold]{cfg.provider_id}[/] ({cfg.spec.display_name}) for this app. "
        f"Register this redirect URI at the provider: [bold]{redirect_uri}[/]"
    )
    if derived:
        out.print(
            "(derived from GRANTVAULT_HOST and GRANTVAULT_PORT; set "
            "GRANTVAULT_PUBLIC_BASE_URL to the URL users' browsers reach the vault at)"
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
    return f"{settings.effective_public_base_url}/sdk/oauth/callback"


@providers_cli.command("list")
def providers_list(app: AppOpt, as_json: JsonOpt = False) -> None:
    """The app's registrations (client secrets are never shown)."""

    async def action(vault: Vault) -> list[dict[str, Any]]:
        found = await app_service.get_app(vault, app)
        async with vault.db.read() as conn:
            return [c.public() for c in await providers.list_configs(conn, found.id)]

    items = run(with_vault(action))
    if as_json:
        emit({"providers": items})
        return
    table(
        "OAuth providers",
        ["provider", "name", "client id", "secret", "default scopes"],
        [
            [
                i["provider_id"],
                i["display_name"],
                i["client_id"],
                "set" if i["client_secret_set"] else "-",
                " ".join(i["default_scopes"]),
            ]
            for i in items
        ],
    )


@providers_cli.command("remove")
def providers_remove(
    app: AppOpt, provider: Annotated[str, typer.Argument(help="Provider id.")]
) -> None:
    """Remove a registration (refused while it has grants that are not revoked)."""

    async def action(vault: Vault) -> None:
        found = await app_service.get_app(vault, app)
        await providers.remove_provider(vault, found, provider, operator_actor())

    run(with_vault(action))
    out.print(f"Removed {provider}.")
