"""``grantvault secrets``: managed secrets and their credentials."""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Any

import typer

from grantvault.types.errors import ErrorCode
from grantvault_server.cli._common import (
    AppOpt,
    JsonOpt,
    emit,
    fail,
    out,
    run,
    table,
    with_vault,
)
from grantvault_server.errors import VaultError
from grantvault_server.services import apps as app_service, secrets as secret_service
from grantvault_server.services.vault import Vault, operator_actor

secrets_cli = typer.Typer(
    help="Managed secrets: API keys and key pairs the app owns.", no_args_is_help=True
)


@secrets_cli.command("templates")
def secrets_templates(as_json: JsonOpt = False) -> None:
    """List the ready-made templates."""
    from grantvault_server.providers.catalog import load_templates

    templates = load_templates()
    if as_json:
        emit({"templates": [t.model_dump(mode="json") for t in templates.values()]})
    else:
        table(
            "Templates",
            ["slug", "name", "auth", "allowed hosts"],
            [
                [t.slug, t.name, t.injection.auth, ", ".join(t.allowed_hosts)]
                for t in templates.values()
            ],
        )


@secrets_cli.command("create")
def secrets_create(
    app: AppOpt,
    template: Annotated[
        str | None, typer.Option(help="Template slug (see `secrets templates`).")
    ] = None,
    slug: Annotated[str | None, typer.Option(help="Slug (default: the template's).")] = None,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    auth: Annotated[
        str | None, typer.Option(help="Custom: bearer, header, query, basic or sigv4.")
    ] = None,
    header: Annotated[
        str | None, typer.Option(help="Custom: header that carries the credential.")
    ] = None,
    format_: Annotated[
        str | None, typer.Option("--format", help="Custom: header value with {token}.")
    ] = None,
    query_param: Annotated[str | None, typer.Option(help="Custom (query): parameter name.")] = None,
    field: Annotated[
        list[str] | None,
        typer.Option(help="Custom: credential field name, NAME? if optional (repeat)."),
    ] = None,
    inject: Annotated[
        list[str] | None,
        typer.Option(
            help="Custom: extra injection header:NAME=SOURCE or query:NAME=SOURCE (repeat)."
        ),
    ] = None,
    aws_region: Annotated[str | None, typer.Option(help="Custom (sigv4): region.")] = None,
    aws_service: Annotated[str | None, typer.Option(help="Custom (sigv4): service.")] = None,
    allowed_host: Annotated[
        list[str] | None, typer.Option(help="Host the credential may be sent to (repeat).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a managed secret from a template or a custom definition."""
    injection: dict[str, Any] | None = None
    custom_flags = [auth, header, format_, query_param, field, inject, aws_region, aws_service]
    if template is not None and any(v for v in custom_flags):
        fail("--template defines the injection; drop --auth/--header/--format/--field/--inject", 2)
    if template is None:
        if auth is None:
            fail("pass --template, or --auth (and --slug, --allowed-host) for a custom secret", 2)
            return
        injection = _custom_injection(
            auth,
            {
                "header": header,
                "format": format_,
                "query_param": query_param,
                "aws_region": aws_region,
                "aws_service": aws_service,
            },
            field or [],
            inject or [],
        )

    async def action(vault: Vault) -> secret_service.ManagedSecret:
        target = await app_service.get_app(vault, app)
        return await secret_service.create_secret(
            vault,
            target,
            operator_actor(),
            template=template,
            slug=slug,
            name=name,
            injection=injection,
            allowed_hosts=allowed_host,
        )

    secret = run(with_vault(action))
    if as_json:
        emit(secret.as_dict())
    else:
        out.print(
            f"Created secret [bold]{secret.slug}[/] ({secret.id}). Next: "
            f"printf '%s' \"$VALUE\" | grantvault secrets set-credential {secret.id} --stdin"
        )


def _custom_injection(
    auth: str, settings: dict[str, str | None], fields: list[str], inject: list[str]
) -> dict[str, Any]:
    """The injection spec of a custom secret, from its command-line options: only what was
    given is set, so the schema's defaults (and its error messages) apply to the rest."""
    injection: dict[str, Any] = {"auth": auth}
    injection.update({key: value for key, value in settings.items() if value is not None})
    if fields:
        # NAME is required, NAME? optional (for instance a key only some calls need).
        injection["fields"] = [
            {"name": f.rstrip("?"), "required": not f.endswith("?")} for f in fields
        ]
    if inject:
        injection["extra"] = [_extra_injection(spec) for spec in inject]
    return injection


def _extra_injection(spec: str) -> dict[str, str]:
    """One ``--inject`` value (header:NAME=SOURCE or query:NAME=SOURCE) as a schema entry."""
    m = re.fullmatch(r"(header|query):([^=]+)=(.+)", spec)
    if not m:
        fail(f"--inject {spec!r}: use header:NAME=SOURCE or query:NAME=SOURCE", 2)
        raise AssertionError("unreachable")
    return {
        "target": "header" if m.group(1) == "header" else "query_param",
        "key": m.group(2),
        "source": m.group(3),
    }


@secrets_cli.command("list")
def secrets_list(app: AppOpt, as_json: JsonOpt = False) -> None:
    """List an app's managed secrets (never their values)."""

    async def action(vault: Vault) -> list[tuple[secret_service.ManagedSecret, list[str]]]:
        return await secret_service.list_secrets(vault, await app_service.get_app(vault, app))

    items = run(with_vault(action))
    if as_json:
        emit({"secrets": [s.as_dict(c) for s, c in items]})
    else:
        table(
            "Managed secrets",
            ["managed_secret_id", "slug", "auth", "credential", "allowed hosts"],
            [
                [
                    s.id,
                    s.slug,
                    s.injection.auth,
                    "set" if c else "missing",
                    ", ".join(s.allowed_hosts),
                ]
                for s, c in items
            ],
        )


@secrets_cli.command("show")
def secrets_show(managed_secret_id: str, as_json: JsonOpt = False) -> None:
    """Show a secret's definition (never its value)."""

    async def action(vault: Vault) -> dict[str, Any]:
        _, secret = await secret_service.find_secret_any_app(vault, managed_secret_id)
        async with vault.db.read() as conn:
            ids = await secret_service.credential_ids(conn, secret.id)
        return {**secret.as_dict(ids), "injection": secret.injection.model_dump(mode="json")}

    data = run(with_vault(action))
    if as_json:
        emit(data)
    else:
        table(
            f"Secret {data['slug']}",
            ["field", "value"],
            [[k, json.dumps(v) if isinstance(v, dict | list) else v] for k, v in data.items()],
        )


@secrets_cli.command("delete")
def secrets_delete(
    managed_secret_id: str,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: its grants stop working at once.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a secret with its credentials and grants."""
    if not yes:
        fail("deleting a secret revokes every grant on it; pass --yes to confirm", 2)

    async def action(vault: Vault) -> int:
        app, secret = await secret_service.find_secret_any_app(vault, managed_secret_id)
        return await secret_service.delete_secret(vault, app, secret, operator_actor())

    removed = run(with_vault(action))
    if as_json:
        emit(
            {
                "managed_secret_id": managed_secret_id,
                "deleted": True,
                "active_grants_removed": removed,
            }
        )
    else:
        out.print(f"Deleted secret {managed_secret_id} and {removed} active grant(s).")


@secrets_cli.command("set-credential")
def secrets_set_credential(
    managed_secret_id: str,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the value from standard input.")
    ] = False,
    credential: Annotated[
        str | None, typer.Option(help="Replace this credential (when there are several).")
    ] = None,
    add: Annotated[bool, typer.Option(help="Add another credential instead of replacing.")] = False,
    label: Annotated[str | None, typer.Option(help="Label of an added credential.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Store the secret's credential, read from stdin (never from arguments: they leak).

    A single-field secret takes the raw value; multi-field secrets (basic, sigv4, extra
    fields) take a JSON object such as {"username": "...", "password": "..."}.
    """
    if not stdin:
        fail(
            "pass --stdin and pipe the value in; values on the command line end up in shell history",
            2,
        )
    raw = sys.stdin.read()
    raw = raw[:-1] if raw.endswith("\n") else raw

    async def action(vault: Vault) -> str:
        app, secret = await secret_service.find_secret_any_app(vault, managed_secret_id)
        names = [f.name for f in secret.injection.fields]
        values: dict[str, Any]
        if raw.lstrip().startswith("{"):
            try:
                values = json.loads(raw)
            except ValueError:
                raise VaultError(
                    ErrorCode.INVALID_REQUEST,
                    "stdin starts with '{' but is not valid JSON.",
                ) from None
        elif names == ["token"] or (
            len([f for f in secret.injection.fields if f.required]) == 1 and "token" in names
        ):
            values = {"token": raw}
        else:
            raise VaultError(
                ErrorCode.INVALID_REQUEST,
                f"This secret has several fields ({', '.join(names)}); pipe a JSON object.",
            )
        return await secret_service.set_credential(
            vault,
            app,
            secret,
            values,
            operator_actor(),
            credential_id=credential,
            add=add,
            label=label,
        )

    credential_id = run(with_vault(action))
    if as_json:
        emit({"managed_secret_id": managed_secret_id, "credential_id": credential_id})
    else:
        out.print(
            f"Stored credential {credential_id} (encrypted). Grants on this secret use it at once."
        )
