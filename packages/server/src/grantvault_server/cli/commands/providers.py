"""``grantvault providers``: an app's OAuth client registrations at providers.

Each command turns its options into the inputs of a ``providers.*`` operation
(``services.admin.areas.providers``), runs it here or on a remote vault (``cli._invoke``)
and renders the answer. The client secret is read from stdin here and sent as a write-only
input; no answer carries it back.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from grantvault_server.cli._common import AppOpt, JsonOpt, emit, fail, out, table
from grantvault_server.cli._invoke import call

providers_cli = typer.Typer(
    help="OAuth providers: the app's client id and secret at Google, GitHub, any OIDC server.",
    no_args_is_help=True,
)


@providers_cli.command("catalog")
def providers_catalog(as_json: JsonOpt = False) -> None:
    """List the providers the vault knows (endpoints, scopes and quirks are built in)."""
    data = call("providers.catalog")
    if as_json:
        emit(data)
        return
    table(
        "OAuth provider catalog",
        ["id", "name", "category", "refresh", "pkce", "default scopes"],
        [
            [
                s["id"],
                s["display_name"],
                s["category"],
                "yes" if s["supports_refresh"] else "no",
                s["pkce"],
                " ".join(s["default_scopes"]),
            ]
            for s in data["providers"].values()
        ],
    )


def _split(values: list[str] | None) -> list[str] | None:
    """Scopes as typed: repeated options, each space- or comma-separated."""
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
# whole custom provider (an issuer, or an authorize and a token URL). Declared here so the
# command's signature reads as the list of what it takes.
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
    data = call(
        "providers.add",
        app=app,
        provider=provider,
        client_id=client_id,
        client_secret=_read_client_secret() if client_secret_stdin else None,
        scopes=_split(scopes),
        allowed_scopes=_split(allowed_scopes),
        params=_pairs(param, "--param"),
        overrides=_pairs(override, "--override"),
        api_hosts=api_host or [],
        issuer=issuer,
        authorize_url=authorize_url,
        token_url=token_url,
        revocation_url=revocation_url,
        userinfo_url=userinfo_url,
        account_field=account_field,
        display_name=display_name,
        replace=replace,
    )
    _report_registered(data, as_json=as_json)


def _read_client_secret() -> str:
    """The client secret from stdin (arguments end up in shell history); empty is refused."""
    secret = sys.stdin.read().strip()
    if not secret:
        fail("--client-secret-stdin was given but stdin was empty", 2)
    return secret


def _report_registered(data: dict[str, Any], *, as_json: bool) -> None:
    """Tell the operator the redirect URI to register at the provider, and when it was
    derived from the listen address rather than configured."""
    if as_json:
        emit(data)
        return
    out.print(
        f"Registered [bold]{data['provider_id']}[/] ({data['display_name']}) for this app. "
        f"Register this redirect URI at the provider: [bold]{data['redirect_uri']}[/]"
    )
    if data.get("redirect_uri_derived"):
        out.print(
            "(derived from GRANTVAULT_HOST and GRANTVAULT_PORT; set "
            "GRANTVAULT_PUBLIC_BASE_URL to the URL users' browsers reach the vault at)"
        )


@providers_cli.command("list")
def providers_list(app: AppOpt, as_json: JsonOpt = False) -> None:
    """The app's registrations (client secrets are never shown)."""
    data = call("providers.list", app=app)
    if as_json:
        emit(data)
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
            for i in data["providers"]
        ],
    )


@providers_cli.command("remove")
def providers_remove(
    app: AppOpt,
    provider: Annotated[str, typer.Argument(help="Provider id.")],
    as_json: JsonOpt = False,
) -> None:
    """Remove a registration (refused while it has grants that are not revoked)."""
    data = call("providers.remove", app=app, provider=provider)
    if as_json:
        emit(data)
    else:
        out.print(f"Removed {data['provider_id']}.")
