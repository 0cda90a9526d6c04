"""``grantvault idp``: the app's identity provider (whose JWTs name its end users)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from grantvault_server.cli._common import AppOpt, JsonOpt, emit, err, fail, out
from grantvault_server.cli._invoke import call

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
    result = call(
        "idp.set",
        app=app,
        issuer=issuer,
        audience=audience,
        user_id_claim=user_id_claim,
        groups_claim=groups_claim,
        email_claim=email_claim,
        name_claim=name_claim,
        algorithms=[a.strip() for a in algorithms.split(",") if a.strip()] if algorithms else None,
        client_id=client_id,
        client_secret=secret,
        no_signin=no_signin,
        force=force,
    )
    if as_json:
        emit(result)
    else:
        _print(result)


@idp_cli.command("show")
def idp_show(app: AppOpt, as_json: JsonOpt = False) -> None:
    """Show the app's identity provider (secrets are never shown, only whether they are set)."""
    result = call("idp.show", app=app)
    if as_json:
        emit(result)
    else:
        _print(result)


@idp_cli.command("discover")
def idp_discover(
    app: AppOpt,
    issuer: Annotated[str, typer.Option(help="The issuer URL to discover.")],
    as_json: JsonOpt = False,
) -> None:
    """Fetch an issuer's OIDC discovery document and show what `idp set` would keep.

    Nothing is saved. The vault (the server, in remote mode) fetches the document.
    """
    result = call("idp.discover", app=app, issuer=issuer)
    if as_json:
        emit(result)
        return
    out.print(f"[bold]Issuer[/]       {result['issuer']}", highlight=False)
    out.print(f"JWKS         {result['jwks_uri']}", highlight=False)
    out.print(f"Algorithms   {', '.join(result['algorithms'])}", highlight=False)
    out.print(f"Authorize    {result['authorization_endpoint'] or '-'}", highlight=False)
    out.print(f"Token        {result['token_endpoint'] or '-'}", highlight=False)
    out.print(
        "Claims       "
        + ", ".join(f"{k}={v}" for k, v in result["claims"].items() if v is not None)
        + (" (as configured)" if result["configured"] else " (defaults)"),
        highlight=False,
    )


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
    result = call("idp.webhook-secret", app=app, secret=given)
    if as_json:
        emit(result)
    elif given:
        out.print(f"Stored the webhook secret. Endpoint: {result['url']}", highlight=False)
    else:
        err.print(
            "[bold yellow]This secret is shown once.[/] Configure it at your IdP, with the "
            f"endpoint {result['url']}",
            highlight=False,
        )
        out.print(result["secret"], highlight=False)
