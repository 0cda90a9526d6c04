"""The ``grantvault`` command: run the server and operate it (apps, keys, secrets, grants,
audit, master key).

Commands act on the database named by the same ``GRANTVAULT_*`` settings as the server,
through the same services (so every change is audited), and may run while it serves.
Every command has ``--help``; listing and creating commands take ``--json`` and then print
exactly one JSON object on stdout. Errors go to stderr with a non-zero exit code:
1 for a refused operation, 2 for bad configuration or usage, 3 for a wrong master key.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import json
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from sqlalchemy.exc import IntegrityError

from grantvault.types.errors import ErrorCode
from grantvault_server.config import (
    ConfigError,
    Settings,
    generate_master_key_text,
    load_settings,
    write_key_file,
)
from grantvault_server.crypto.barrier import BarrierError
from grantvault_server.errors import VaultError
from grantvault_server.services import (
    apps as app_service,
    audit_log,
    grants as grant_service,
    secrets as secret_service,
)
from grantvault_server.services.vault import Vault, operator_actor

T = TypeVar("T")

out = Console()
err = Console(stderr=True, soft_wrap=True)

cli = typer.Typer(
    name="grantvault",
    help="Grantvault: the credential vault for apps and AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
apps_cli = typer.Typer(help="Apps: the tenant boundary.", no_args_is_help=True)
keys_cli = typer.Typer(help="API keys of an app (alter_rk_...).", no_args_is_help=True)
secrets_cli = typer.Typer(
    help="Managed secrets: API keys and key pairs the app owns.", no_args_is_help=True
)
grants_cli = typer.Typer(help="Grants: who may use which secret.", no_args_is_help=True)
audit_cli = typer.Typer(help="The audit trail.", no_args_is_help=True)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
mk_cli = typer.Typer(help="The master key that wraps all data keys.", no_args_is_help=True)
for sub, name in (
    (apps_cli, "apps"),
    (keys_cli, "keys"),
    (secrets_cli, "secrets"),
    (grants_cli, "grants"),
    (audit_cli, "audit"),
    (db_cli, "db"),
    (mk_cli, "master-key"),
):
    cli.add_typer(sub, name=name)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
AppOpt = Annotated[str, typer.Option("--app", help="App name or id.")]


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        fail(str(exc), 2)
    except BarrierError as exc:
        fail(f"{exc}", 3)
    except VaultError as exc:
        fail(exc.message, 1)
    except IntegrityError:
        fail("the database refused the change (a conflicting row exists); nothing was changed", 1)
    raise AssertionError("unreachable")


async def with_vault(action: Callable[[Vault], Awaitable[T]], *, migrate: bool | None = None) -> T:
    settings = load_settings()
    vault = await Vault.start(settings, migrate_schema=migrate)
    if vault.key_generated:
        err.print(
            f"[bold yellow]Created a new vault in {settings.data_dir.resolve()}[/] (SQLite database "
            "and master key). Back up master.key; set GRANTVAULT_DATA_DIR to use another vault."
        )
    try:
        return await action(vault)
    finally:
        await vault.close()


def parse_duration(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise typer.BadParameter("use a number and a unit: 30s, 15m, 12h, 90d")
    value, unit = int(match.group(1)), match.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: value})


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    out.print(t)


# -- serve / db --------------------------------------------------------------------------


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (GRANTVAULT_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (GRANTVAULT_PORT).")] = None,
) -> None:
    """Run the vault server (migrates the embedded SQLite database automatically)."""
    import uvicorn

    from grantvault_server.app import create_app
    from grantvault_server.observability import configure_logging

    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        fail(str(exc), 2)
        return
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        vault = await Vault.start(settings)
        try:
            _welcome(vault)
            # Start-up objects (modules, routes, templates) live for the whole process: move
            # them out of the collector's way, and collect young objects less often. Request
            # handling allocates many short-lived objects; the default thresholds spent
            # noticeable time in collections that found nothing to free.
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 50, 100)
            config = uvicorn.Config(
                # The app closes the vault in its shutdown: uvicorn re-raises SIGTERM after
                # shutting down, so code after serve() may never run.
                create_app(vault=vault, close_vault=True),
                host=settings.host,
                port=settings.port,
                log_config=None,
                access_log=False,
                server_header=False,
            )
            await uvicorn.Server(config).serve()
        finally:
            await vault.close()

    run(main())


def _welcome(vault: Vault) -> None:
    s = vault.settings
    lines = [
        f"Grantvault is listening on [bold]{s.effective_public_base_url}[/]",
        f"Database: {'embedded SQLite in ' + str(s.data_dir) if s.is_embedded else 'configured URL'}",
        "",
        "Next steps (in another terminal):",
        "  grantvault apps create demo",
        "  grantvault keys create --app demo",
        "  grantvault secrets create --app demo --template openai",
        "  printf '%s' \"$OPENAI_KEY\" | grantvault secrets set-credential <id> --stdin",
        "  grantvault grants create --secret <id> --principal system",
        "",
        f"Then point the SDK at it: ALTER_BASE_URL={s.effective_public_base_url}",
    ]
    err.print(Panel("\n".join(lines), title="Grantvault", expand=False))
    if vault.key_generated:
        err.print(
            Panel(
                f"A new master key was generated at [bold]{s.data_dir / 'master.key'}[/] (mode 0600).\n"
                "BACK IT UP NOW. Without it, nothing in this vault can ever be decrypted.",
                title="[bold red]master key created[/]",
                border_style="red",
                expand=False,
            )
        )


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (needed for PostgreSQL; SQLite is migrated by `serve`)."""
    from grantvault_server.storage import migrate

    async def action(vault: Vault) -> str:
        return await migrate.current_revision(vault.db) or "none"

    revision = run(with_vault(action, migrate=True))
    out.print(f"Database schema is at revision [bold]{revision}[/].")


# -- apps ---------------------------------------------------------------------------------


@apps_cli.command("create")
def apps_create(
    name: Annotated[str, typer.Argument(help="Lowercase name, e.g. demo.")],
    as_json: JsonOpt = False,
) -> None:
    """Create an app."""
    app = run(with_vault(lambda v: app_service.create_app(v, name, operator_actor())))
    data = {"app_id": app.id, "name": app.name}
    if as_json:
        emit(data)
    else:
        out.print(
            f"Created app [bold]{app.name}[/] ({app.id}). Next: grantvault keys create --app {app.name}"
        )


@apps_cli.command("list")
def apps_list(as_json: JsonOpt = False) -> None:
    """List apps."""
    items = run(with_vault(app_service.list_apps))
    if as_json:
        emit(
            {
                "apps": [
                    {"app_id": a.id, "name": a.name, "created_at": app_service._iso(a.created_at)}
                    for a in items
                ]
            }
        )
    else:
        table(
            "Apps",
            ["name", "app_id", "created"],
            [[a.name, a.id, a.created_at.isoformat()] for a in items],
        )


# -- keys ---------------------------------------------------------------------------------


@keys_cli.command("create")
def keys_create(
    app: AppOpt,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    expires_in: Annotated[str | None, typer.Option(help="Lifetime such as 90d or 12h.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Mint an API key. It is shown once: store it now."""
    expires_at = datetime.now(UTC) + parse_duration(expires_in) if expires_in else None

    async def action(vault: Vault) -> tuple[app_service.ApiKeyInfo, str]:
        target = await app_service.get_app(vault, app)
        return await app_service.create_key(
            vault, target, operator_actor(), name=name, expires_at=expires_at
        )

    info, plaintext = run(with_vault(action))
    if as_json:
        emit(
            {
                "key_id": info.id,
                "api_key": plaintext,
                "key_prefix": info.key_prefix,
                "expires_at": app_service._iso(info.expires_at),
            }
        )
    else:
        out.print(
            Panel(
                plaintext,
                title=f"API key {info.id}",
                subtitle="shown once: store it now",
                expand=False,
            )
        )


@keys_cli.command("list")
def keys_list(app: AppOpt, as_json: JsonOpt = False) -> None:
    """List an app's keys (prefixes only; keys are stored hashed)."""

    async def action(vault: Vault) -> list[app_service.ApiKeyInfo]:
        return await app_service.list_keys(vault, await app_service.get_app(vault, app))

    keys = run(with_vault(action))
    now = datetime.now(UTC)
    if as_json:
        emit({"keys": [k.as_dict(now) for k in keys]})
    else:
        table(
            "API keys",
            ["key_id", "prefix", "name", "status", "expires", "created"],
            [
                [k.id, k.key_prefix + "…", k.name, k.status(now), k.expires_at, k.created_at]
                for k in keys
            ],
        )


@keys_cli.command("revoke")
def keys_revoke(key_id: str, app: AppOpt, as_json: JsonOpt = False) -> None:
    """Revoke a key at once."""

    async def action(vault: Vault) -> app_service.ApiKeyInfo:
        return await app_service.revoke_key(
            vault, await app_service.get_app(vault, app), key_id, operator_actor()
        )

    info = run(with_vault(action))
    if as_json:
        emit(info.as_dict(datetime.now(UTC)))
    else:
        out.print(f"Revoked key {info.id} ({info.key_prefix}…).")


@keys_cli.command("rotate")
def keys_rotate(
    key_id: str,
    app: AppOpt,
    overlap: Annotated[
        str, typer.Option(help="How long the old key keeps working (max 30d).")
    ] = "7d",
    as_json: JsonOpt = False,
) -> None:
    """Mint a successor key; the old one works for the overlap window, then is refused."""

    async def action(vault: Vault) -> tuple[app_service.ApiKeyInfo, str]:
        target = await app_service.get_app(vault, app)
        return await app_service.rotate_key(
            vault, target, key_id, operator_actor(), overlap=parse_duration(overlap)
        )

    info, plaintext = run(with_vault(action))
    if as_json:
        emit(
            {
                "key_id": info.id,
                "api_key": plaintext,
                "key_prefix": info.key_prefix,
                "replaces": key_id,
            }
        )
    else:
        out.print(
            Panel(
                plaintext,
                title=f"API key {info.id} (replaces {key_id})",
                subtitle="shown once",
                expand=False,
            )
        )


@keys_cli.command("expire")
def keys_expire(
    key_id: str,
    app: AppOpt,
    in_: Annotated[str, typer.Option("--in", help="When the key stops working, e.g. 0s, 1h, 30d.")],
    as_json: JsonOpt = False,
) -> None:
    """Set when a key expires."""

    async def action(vault: Vault) -> app_service.ApiKeyInfo:
        target = await app_service.get_app(vault, app)
        return await app_service.set_key_expiry(
            vault, target, key_id, datetime.now(UTC) + parse_duration(in_), operator_actor()
        )

    info = run(with_vault(action))
    if as_json:
        emit(info.as_dict(datetime.now(UTC)))
    else:
        out.print(f"Key {info.id} expires at {info.expires_at}.")


# -- secrets ------------------------------------------------------------------------------


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
        injection = {"auth": auth}
        for key, value in (
            ("header", header),
            ("format", format_),
            ("query_param", query_param),
            ("aws_region", aws_region),
            ("aws_service", aws_service),
        ):
            if value is not None:
                injection[key] = value
        if field:
            # NAME is required, NAME? optional (for instance a key only some calls need).
            injection["fields"] = [
                {"name": f.rstrip("?"), "required": not f.endswith("?")} for f in field
            ]
        if inject:
            extras = []
            for spec in inject:
                m = re.fullmatch(r"(header|query):([^=]+)=(.+)", spec)
                if not m:
                    fail(f"--inject {spec!r}: use header:NAME=SOURCE or query:NAME=SOURCE", 2)
                    return
                extras.append(
                    {
                        "target": "header" if m.group(1) == "header" else "query_param",
                        "key": m.group(2),
                        "source": m.group(3),
                    }
                )
            injection["extra"] = extras

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


# -- grants -------------------------------------------------------------------------------


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
    secret: Annotated[str | None, typer.Option(help="Only this secret (slug or id).")] = None,
    status: Annotated[str | None, typer.Option(help="active, revoked or expired.")] = None,
    limit: int = 100,
    offset: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """List an app's grants."""

    async def action(vault: Vault) -> dict[str, Any]:
        target = await app_service.get_app(vault, app)
        return await grant_service.list_grants(
            vault, target, provider=secret, status=status, limit=limit, offset=offset
        )

    result = run(with_vault(action))
    if as_json:
        emit(result)
    else:
        table(
            f"Grants ({result['total']})",
            ["grant_id", "secret", "principal", "status", "expires", "last used"],
            [
                [
                    g["grant_id"],
                    g["managed_secret_slug"],
                    grant_service.principal_label(g["principal_type"], g["principal_id"]),
                    g["status"],
                    g["expires_at"],
                    g["last_used_at"],
                ]
                for g in result["grants"]
            ],
        )


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


# -- audit --------------------------------------------------------------------------------

AuditFilters = dict[str, Any]


def _audit_filters(
    app: str | None,
    event: str | None,
    grant: str | None,
    outcome: str | None,
    since: str | None,
    limit: int,
) -> AuditFilters:
    return {
        "app": app,
        "event": event,
        "grant_id": grant,
        "outcome": outcome,
        "since": datetime.now(UTC) - parse_duration(since) if since else None,
        "limit": limit,
    }


@audit_cli.command("list")
def audit_list(
    app: Annotated[str | None, typer.Option(help="App name or id (default: all).")] = None,
    event: Annotated[str | None, typer.Option(help="Event, e.g. credential.retrieved.")] = None,
    grant: Annotated[str | None, typer.Option(help="Only this grant.")] = None,
    outcome: Annotated[str | None, typer.Option(help="success, denied or failure.")] = None,
    since: Annotated[str | None, typer.Option(help="Only the last e.g. 24h.")] = None,
    limit: int = 50,
    as_json: JsonOpt = False,
) -> None:
    """Show recent audit events, newest first."""
    filters = _audit_filters(app, event, grant, outcome, since, limit)
    events = run(with_vault(lambda v: audit_log.query(v, **filters)))
    if as_json:
        emit({"events": events})
    else:
        table(
            "Audit events",
            ["time", "app", "event", "outcome", "actor", "grant", "url"],
            [
                [
                    e["occurred_at"],
                    e["app"],
                    e["event"],
                    e["outcome"],
                    audit_log.actor_label(e["actor"]),
                    e["grant_id"],
                    e["url"],
                ]
                for e in events
            ],
        )


@audit_cli.command("export")
def audit_export(
    app: Annotated[str | None, typer.Option(help="App name or id (default: all).")] = None,
    event: Annotated[str | None, typer.Option(help="Event, e.g. credential.retrieved.")] = None,
    grant: Annotated[str | None, typer.Option(help="Only this grant.")] = None,
    outcome: Annotated[str | None, typer.Option(help="success, denied or failure.")] = None,
    since: Annotated[str | None, typer.Option(help="Only the last e.g. 24h.")] = None,
    limit: int = 100_000,
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Write CSV.")] = False,
) -> None:
    """Export audit events (JSON lines by default, or --json / --csv) to stdout."""
    filters = _audit_filters(app, event, grant, outcome, since, limit)
    events = run(with_vault(lambda v: audit_log.query(v, **filters)))
    if as_json:
        emit({"events": events})
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=audit_log.CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for e in events:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in e.items()}
            )
    else:
        for e in events:
            sys.stdout.write(json.dumps(e, default=str) + "\n")


@audit_cli.command("verify")
def audit_verify(
    app: Annotated[
        str | None, typer.Option(help="App name or id, or `system` (default: every chain).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the hash chains: detects edited, deleted and reordered rows."""
    report = run(with_vault(lambda v: audit_log.verify(v, app)))
    if as_json:
        emit(report)
    else:
        for chain_report in report["chains"]:
            status = "[green]intact[/]" if not chain_report["problems"] else "[bold red]TAMPERED[/]"
            out.print(f"{chain_report['name']}: {chain_report['events']} events, {status}")
            for p in chain_report["problems"]:
                where = f"seq {p['seq']}" if p["seq"] is not None else "chain"
                out.print(f"  {where}: {p['problem']}")
    if not report["ok"]:
        raise typer.Exit(1)


# -- master key ---------------------------------------------------------------------------


@mk_cli.command("generate")
def master_key_generate(
    output: Annotated[
        Path | None, typer.Option(help="Write to this file (mode 0600) instead of stdout.")
    ] = None,
) -> None:
    """Generate a new random master key (base64)."""
    text = generate_master_key_text()
    if output:
        if output.exists():
            fail(f"{output} exists; refusing to overwrite a key", 2)
        write_key_file(output, text)
        out.print(f"Wrote a new master key to {output} (mode 0600). Back it up.")
    else:
        sys.stdout.write(text + "\n")


@mk_cli.command("rotate")
def master_key_rotate(
    new_key_file: Annotated[
        Path | None,
        typer.Option(help="The new key (required when the key comes from GRANTVAULT_MASTER_KEY)."),
    ] = None,
    batch: Annotated[int, typer.Option(help="Rows re-encrypted per transaction.")] = 500,
    stop_after: Annotated[
        int | None, typer.Option(hidden=True, help="Stop after N batches (tests).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rotate the master key online: new data key, re-encrypt every row.

    Safe to interrupt: run it again to resume. Servers keep serving throughout; the old key
    stays valid until `grantvault master-key retire-old`.
    """
    from grantvault_server.services import rotation

    settings = load_settings()
    result = run(
        rotation.rotate(
            settings,
            new_key_file=new_key_file,
            batch=batch,
            stop_after=stop_after,
            progress=_progress(),
        )
    )
    if as_json:
        emit(result)
        return
    if not result["complete"]:
        out.print(
            f"Rotation interrupted after {result['rows_reencrypted']} rows; run the command again "
            "to resume. Every row stays readable with either key."
        )
        return
    out.print(
        f"Re-encrypted {result['rows_reencrypted']} rows under master key {result['new_key_id']} "
        f"(data key term {result['active_term']})."
    )
    if result.get("key_file"):
        out.print(
            f"The new key is in [bold]{result['key_file']}[/] (the previous one is kept as "
            f"{result['key_file']}.prev): [bold]back it up now[/]."
        )
    else:
        out.print("Set GRANTVAULT_MASTER_KEY to the new key everywhere the server runs.")
    out.print(
        "Running servers keep working with the old key. Restart each one with the new key, "
        "then run [bold]grantvault master-key retire-old[/]."
    )


@mk_cli.command("retire-old")
def master_key_retire_old(as_json: JsonOpt = False) -> None:
    """Forget the previous master key once every server runs with the new one."""
    from grantvault_server.services import rotation

    result = run(rotation.retire_old(load_settings()))
    if as_json:
        emit(result)
    else:
        out.print(
            f"Retired master key {result['retired_key_id']}; only {result['active_key_id']} "
            "opens this vault now. Servers still running with the old key seal themselves."
        )


def _progress() -> Callable[[str, int], None]:
    def report(stage: str, count: int) -> None:
        err.print(f"[dim]{stage}: {count}[/]")

    return report


def main() -> None:
    cli()


_ = Settings  # re-exported for typing in tests
