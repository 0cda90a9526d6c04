"""``grantvault idp``: the app's identity provider (whose JWTs name its end users)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from grantvault_server.cli._common import AppOpt, JsonOpt, emit, err, fail, out, run, with_vault
from grantvault_server.services import apps as app_service
from grantvault_server.services.identity import idp as idp_service
from grantvault_server.services.vault import Vault, operator_actor

idp_cli = typer.Typer(
    help="The app's identity provider: JWT verification, claim mappings, sign-in client, "
    "deprovisioning webhook.",
    no_args_is_help=True,
)


def _print(result: dict[str, Any]) -> None:
    claims = result["claims"]
    signin = result["signin"]
    out.print(f"[bold]Issuer[/]       {result['issuer']}", highlight=False)
    out.print(f"Audience     {result['audience']}", highlight=False)
    out.print(f"JWKS         {result['jwks_uri']}", highlight=False)
    out.print(f"Algorithms   {', '.join(result['algorithms'])}", highlight=False)
    out.print(
        "Claims       "
        + ", ".join(f"{k}={v}" for k, v in claims.items() if v is not None)
        + (
            f" (locked since {result['mappings_locked_at']})"
            if result["mappings_locked_at"]
            else ""
        ),
        highlight=False,
    )
    if signin["client_id"]:
        secret = "with secret" if signin["client_secret_set"] else "public client"
        out.print(f"Sign-in      client {signin['client_id']} ({secret})", highlight=False)
    else:
        out.print("Sign-in      not configured (authenticate() answers idp_signin_not_configured)")
    out.print(f"Redirect URI {signin['redirect_uri']}", highlight=False)
    hook = result["webhook"]
    out.print(
        f"Webhook      {hook['url']} ({'secret set' if hook['secret_set'] else 'no secret yet'})",
        highlight=False,
    )


@idp_cli.command("set")
def idp_set(
    app: AppOpt,
    issuer: Annotated[str, typer.Option(help="The issuer URL, exactly as in the tokens' iss.")],
    audience: Annotated[
        str | None, typer.Option(help="The aud the app's user tokens carry (required at first).")
    ] = None,
    user_id_claim: Annotated[
        str | None, typer.Option(help="Claim holding the user id (default sub).")
    ] = None,
    groups_claim: Annotated[
        str | None, typer.Option(help='Claim holding the groups (list or string); "" removes it.')
    ] = None,
    email_claim: Annotated[str | None, typer.Option(help="Email claim (default email).")] = None,
    name_claim: Annotated[
        str | None, typer.Option(help="Display-name claim (default name).")
    ] = None,
    algorithms: Annotated[
        str | None,
        typer.Option(help="Comma-separated JWS algorithms (default: what discovery advertises)."),
    ] = None,
    client_id: Annotated[
        str | None, typer.Option(help="The vault's OIDC client id at the IdP (for sign-in).")
    ] = None,
    client_secret_stdin: Annotated[
        bool, typer.Option("--client-secret-stdin", help="Read that client's secret from stdin.")
    ] = False,
    no_signin: Annotated[
        bool, typer.Option("--no-signin", help="Remove the sign-in client.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(help="Change locked claim mappings, or replace the issuer, after sign-ins."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Point an app at its identity provider (validated by OIDC discovery)."""
    secret = None
    if client_secret_stdin:
        secret = sys.stdin.read().strip()
        if not secret:
            fail("--client-secret-stdin was given but stdin is empty", 2)
    settings = idp_service.IdpSettings(
        issuer=issuer,
        audience=audience,
        user_id_claim=user_id_claim,
        groups_claim=groups_claim,
        email_claim=email_claim,
        name_claim=name_claim,
        algorithms=tuple(a.strip() for a in algorithms.split(",") if a.strip())
        if algorithms
        else None,
        signin_client_id=client_id,
        signin_client_secret=secret,
        clear_signin=no_signin,
    )

    async def action(vault: Vault) -> dict[str, Any]:
        target = await app_service.get_app(vault, app)
        return await idp_service.set_idp(vault, target, operator_actor(), settings, force=force)

    result = run(with_vault(action))
    if as_json:
        emit(result)
    else:
        _print(result)


@idp_cli.command("show")
def idp_show(app: AppOpt, as_json: JsonOpt = False) -> None:
    """Show the app's identity provider (secrets are never shown, only whether they are set)."""

    async def action(vault: Vault) -> dict[str, Any]:
        return await idp_service.show_idp(vault, await app_service.get_app(vault, app))

    result = run(with_vault(action))
    if as_json:
        emit(result)
    else:
        _print(result)


@idp_cli.command("webhook-secret")
def idp_webhook_secret(
    app: AppOpt,
    from_stdin: Annotated[
        bool,
        typer.Option(
            "--from-stdin", help="Store the whsec_ secret your IdP generated (read from stdin)."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create (or import) the deprovisioning webhook's signing secret; shown once."""
    given = sys.stdin.read().strip() if from_stdin else None
    if from_stdin and not given:
        fail("--from-stdin was given but stdin is empty", 2)

    async def action(vault: Vault) -> tuple[str, str]:
        target = await app_service.get_app(vault, app)
        secret = await idp_service.set_webhook_secret(vault, target, operator_actor(), secret=given)
        url = vault.settings.effective_public_base_url + idp_service.WEBHOOK_PATH.format(
            app_id=target.id
        )
        return secret, url

    secret, url = run(with_vault(action))
    if as_json:
        emit({"url": url, "secret": None if given else secret})
    elif given:
        out.print(f"Stored the webhook secret. Endpoint: {url}", highlight=False)
    else:
        err.print(
            "[bold yellow]This secret is shown once.[/] Configure it at your IdP, with the "
            f"endpoint {url}",
            highlight=False,
        )
        out.print(secret, highlight=False)
