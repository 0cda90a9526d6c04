"""``grantvault secrets``: managed secrets and their credentials.

Each command turns its options into the inputs of a ``secrets.*`` operation
(``services.admin.areas.secrets``), runs it here or on a remote vault (``cli._invoke``) and
renders the answer. Credential values are read from stdin here and sent as write-only inputs;
no answer carries them back.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Any

import typer

from grantvault_server.cli._common import AppOpt, JsonOpt, emit, fail, out, table
from grantvault_server.cli._invoke import call

secrets_cli = typer.Typer(
    help="Managed secrets: API keys and key pairs the app owns.", no_args_is_help=True
)


@secrets_cli.command("templates")
def secrets_templates(as_json: JsonOpt = False) -> None:
    """List the ready-made templates."""
    data = call("secrets.templates")
    if as_json:
        emit(data)
    else:
        table(
            "Templates",
            ["slug", "name", "auth", "allowed hosts"],
            [
                [t["slug"], t["name"], t["injection"]["auth"], ", ".join(t["allowed_hosts"])]
                for t in data["templates"]
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

    data = call(
        "secrets.create",
        app=app,
        template=template,
        slug=slug,
        name=name,
        injection=injection,
        allowed_hosts=allowed_host,
    )
    if as_json:
        emit(data)
    else:
        out.print(
            f"Created secret [bold]{data['slug']}[/] ({data['managed_secret_id']}). Next: "
            f"printf '%s' \"$VALUE\" | grantvault secrets set-credential "
            f"{data['managed_secret_id']} --stdin"
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
    data = call("secrets.list", app=app)
    if as_json:
        emit(data)
    else:
        table(
            "Managed secrets",
            ["managed_secret_id", "slug", "auth", "credential", "allowed hosts"],
            [
                [
                    s["managed_secret_id"],
                    s["slug"],
                    s["auth"],
                    "set" if s["has_credential"] else "missing",
                    ", ".join(s["allowed_hosts"]),
                ]
                for s in data["secrets"]
            ],
        )


@secrets_cli.command("show")
def secrets_show(managed_secret_id: str, as_json: JsonOpt = False) -> None:
    """Show a secret's definition (never its value)."""
    data = call("secrets.show", managed_secret_id=managed_secret_id)
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
    data = call("secrets.delete", managed_secret_id=managed_secret_id)
    if as_json:
        emit(data)
    else:
        out.print(
            f"Deleted secret {data['managed_secret_id']} and "
            f"{data['active_grants_removed']} active grant(s)."
        )


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
    value: str | None = raw
    values: dict[str, Any] | None = None
    if raw.lstrip().startswith("{"):
        # A JSON object carries the fields of a multi-field secret; the operation decides
        # whether a bare value fits this secret (it knows the secret's fields).
        try:
            values = json.loads(raw)
        except ValueError:
            fail("stdin starts with '{' but is not valid JSON.", 1)
        value = None
    data = call(
        "secrets.set-credential",
        managed_secret_id=managed_secret_id,
        value=value,
        values=values,
        credential_id=credential,
        add=add,
        label=label,
    )
    if as_json:
        emit(data)
    else:
        out.print(
            f"Stored credential {data['credential_id']} (encrypted). "
            "Grants on this secret use it at once."
        )
