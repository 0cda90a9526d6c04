"""Managed secrets: a credential (API key, key pair, Basic pair) plus how and where to use it.

Credential values are write-only: they go in through :func:`set_credential`, are stored as
barrier ciphertext bound to their row, and come out only as a token response for a grant
whose destination check and policy passed. Replacing a value keeps every grant valid.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.crypto.barrier import aad_for
from grantvault_server.errors import InvalidInput, NotFound, VaultError
from grantvault_server.providers.schema import SLUG, InjectionSpec, check_host_rule
from grantvault_server.services.apps import App
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn
from grantvault_server.storage.tables import credentials, managed_secrets
from grantvault_server.timefmt import iso

MAX_VALUE_LENGTH = 8192


@dataclass(frozen=True)
class ManagedSecret:
    id: str
    app_id: str
    slug: str
    name: str
    template: str | None
    injection: InjectionSpec
    allowed_hosts: tuple[str, ...]
    created_at: datetime
    updated_at: datetime

    def as_dict(self, credential_ids: list[str] | None = None) -> dict[str, Any]:
        return {
            "managed_secret_id": self.id,
            "slug": self.slug,
            "name": self.name,
            "template": self.template,
            "auth": self.injection.auth,
            "fields": [f.name for f in self.injection.fields],
            "allowed_hosts": list(self.allowed_hosts),
            "credential_ids": credential_ids or [],
            "has_credential": bool(credential_ids),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


def secret_from_row(row: Any) -> ManagedSecret:
    return ManagedSecret(
        id=row.id,
        app_id=row.app_id,
        slug=row.slug,
        name=row.name,
        template=row.template,
        injection=InjectionSpec.model_validate(row.injection),
        allowed_hosts=tuple(row.allowed_hosts),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def credential_aad(app_id: str, credential_id: str) -> bytes:
    return aad_for("credentials", app_id, credential_id, "secret_ct")


def _invalid_spec(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return InvalidInput(
        f"Invalid secret definition{f' ({where})' if where else ''}: {first['msg']}."
    )


@dataclass(frozen=True)
class _Definition:
    """A secret as the caller defined it (template or custom), before it is checked and stored."""

    slug: str
    name: str
    injection: InjectionSpec
    allowed_hosts: list[str]


async def create_secret(
    vault: Vault,
    app: App,
    actor: dict[str, Any],
    *,
    template: str | None = None,
    slug: str | None = None,
    name: str | None = None,
    injection: dict[str, Any] | None = None,
    allowed_hosts: list[str] | None = None,
) -> ManagedSecret:
    """Create a managed secret from a template (optionally with extra hosts) or from scratch."""
    if template is not None:
        definition = _from_template(vault, template, slug, name, injection, allowed_hosts)
    else:
        definition = _custom(slug, name, injection, allowed_hosts)
    _check_definition(definition)
    now = vault.clock.now()
    secret_id = str(uuid.uuid4())
    try:
        async with vault.db.write() as conn:
            await _insert_secret(conn, app, secret_id, template, definition, now)
            await _audit_secret_created(vault, conn, app, actor, secret_id, template, definition)
    except IntegrityError:
        raise VaultError(
            ErrorCode.INVALID_REQUEST,
            f"This app already has a secret with slug {definition.slug!r}; pick another with "
            "--slug.",
            status=409,
        ) from None
    return await get_secret(vault, app, secret_id)


def _from_template(
    vault: Vault,
    template: str,
    slug: str | None,
    name: str | None,
    injection: dict[str, Any] | None,
    allowed_hosts: list[str] | None,
) -> _Definition:
    """A template fixes the injection; the caller may rename it and add hosts (after the
    template's own, without duplicates), never replace them."""
    tpl = vault.templates.get(template)
    if tpl is None:
        raise InvalidInput(
            f"Unknown template {template!r}; see `grantvault secrets templates`.",
            templates=sorted(vault.templates),
        )
    if injection is not None:
        raise InvalidInput("A template defines the injection; do not pass one as well.")
    hosts = list(tpl.allowed_hosts) + [
        h for h in (allowed_hosts or []) if h not in tpl.allowed_hosts
    ]
    return _Definition(slug or tpl.slug, name or tpl.name, tpl.injection, hosts)


def _custom(
    slug: str | None,
    name: str | None,
    injection: dict[str, Any] | None,
    allowed_hosts: list[str] | None,
) -> _Definition:
    """A secret from scratch needs everything a template would give: the injection, a slug
    and at least one host (the name defaults to the slug)."""
    if not injection:
        raise InvalidInput("A custom secret needs an injection (auth type, header, format).")
    if not slug or not allowed_hosts:
        raise InvalidInput("A custom secret needs a slug and at least one allowed host.")
    try:
        spec = InjectionSpec.model_validate(injection)
    except ValidationError as exc:
        raise _invalid_spec(exc) from None
    return _Definition(slug, name or slug, spec, list(allowed_hosts))


def _check_definition(definition: _Definition) -> None:
    """The rules every secret meets, however defined: slug and name shape, host rules."""
    if not SLUG.fullmatch(definition.slug):
        raise InvalidInput("Slugs are 1-50 characters of a-z, 0-9 and '-'.")
    if not (1 <= len(definition.name) <= 128):
        raise InvalidInput("Names are 1-128 characters.")
    for host in definition.allowed_hosts:
        try:
            check_host_rule(host)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None


async def _insert_secret(
    conn: Conn,
    app: App,
    secret_id: str,
    template: str | None,
    definition: _Definition,
    now: datetime,
) -> None:
    """Store the definition; a duplicate slug in the app fails on the unique index."""
    await conn.execute(
        sa.insert(managed_secrets).values(
            id=secret_id,
            app_id=app.id,
            slug=definition.slug,
            name=definition.name,
            template=template,
            injection=definition.injection.model_dump(mode="json"),
            allowed_hosts=definition.allowed_hosts,
            created_at=now,
            updated_at=now,
        )
    )


async def _audit_secret_created(
    vault: Vault,
    conn: Conn,
    app: App,
    actor: dict[str, Any],
    secret_id: str,
    template: str | None,
    definition: _Definition,
) -> None:
    """Audited in the insert's transaction: no secret exists without its record."""
    await vault.audit.append(
        conn,
        [
            AuditRecord(
                chain=app.id,
                event=AuditEvent.SECRET_CREATED,
                outcome=Outcome.SUCCESS,
                actor=actor,
                provider_id=definition.slug,
                details={
                    "managed_secret_id": secret_id,
                    "template": template,
                    "allowed_hosts": definition.allowed_hosts,
                },
            )
        ],
    )


async def load_secret(conn: Conn, app: App, ident: str) -> ManagedSecret:
    """Find a secret of ``app`` by id or slug; other apps' secrets are simply not found."""
    row = (
        await conn.execute(
            sa.select(managed_secrets).where(
                managed_secrets.c.app_id == app.id,
                sa.or_(managed_secrets.c.id == ident, managed_secrets.c.slug == ident),
            )
        )
    ).first()
    if row is None:
        raise NotFound("managed secret", ident, ErrorCode.SECRET_NOT_FOUND)
    return secret_from_row(row)


async def get_secret(vault: Vault, app: App, ident: str) -> ManagedSecret:
    async with vault.db.read() as conn:
        return await load_secret(conn, app, ident)


async def find_secret_any_app(vault: Vault, secret_id: str) -> tuple[App, ManagedSecret]:
    """Operator lookup by id across apps (the CLI names secrets by id alone)."""
    from grantvault_server.services.apps import find_app

    async with vault.db.read() as conn:
        row = (
            await conn.execute(sa.select(managed_secrets).where(managed_secrets.c.id == secret_id))
        ).first()
        if row is None:
            raise NotFound("managed secret", secret_id, ErrorCode.SECRET_NOT_FOUND)
        app = await find_app(conn, row.app_id)
    return app, secret_from_row(row)


async def credential_ids(conn: Conn, secret_id: str) -> list[str]:
    rows = await conn.execute(
        sa.select(credentials.c.id)
        .where(credentials.c.managed_secret_id == secret_id)
        .order_by(credentials.c.created_at)
    )
    return [r.id for r in rows]


async def list_secrets(vault: Vault, app: App) -> list[tuple[ManagedSecret, list[str]]]:
    async with vault.db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(managed_secrets)
                .where(managed_secrets.c.app_id == app.id)
                .order_by(managed_secrets.c.slug)
            )
        ).all()
        return [(secret_from_row(r), await credential_ids(conn, r.id)) for r in rows]


def validate_values(spec: InjectionSpec, values: dict[str, Any]) -> dict[str, str]:
    """Check supplied credential fields against the secret's schema; apply defaults.

    Messages name fields, never values.
    """
    if not isinstance(values, dict) or not values:
        raise InvalidInput("Supply the credential as a value or a JSON object of fields.")
    known = {f.name: f for f in spec.fields}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidInput(
            f"Unknown credential field(s) {', '.join(unknown)}; this secret takes "
            f"{', '.join(known)}."
        )
    clean: dict[str, str] = {}
    for name, field in known.items():
        value = values.get(name, field.default)
        if value is None or value == "":
            if field.required:
                raise InvalidInput(f"The credential field {name!r} is required.")
            continue
        if not isinstance(value, str):
            raise InvalidInput(f"The credential field {name!r} must be a string.")
        if len(value) > MAX_VALUE_LENGTH:
            raise InvalidInput(
                f"The credential field {name!r} is longer than {MAX_VALUE_LENGTH} characters."
            )
        if any(c in value for c in "\r\n\x00") or value != value.strip():
            raise InvalidInput(
                f"The credential field {name!r} contains line breaks, NUL or surrounding "
                "whitespace; check what was pasted."
            )
        clean[name] = value
    return clean


async def set_credential(
    vault: Vault,
    app: App,
    secret: ManagedSecret,
    values: dict[str, Any],
    actor: dict[str, Any],
    *,
    credential_id: str | None = None,
    add: bool = False,
    label: str | None = None,
) -> str:
    """Store (or replace) a credential value; returns the credential id.

    Replacing keeps the credential id, so every grant that uses it stays valid.
    """
    clean = validate_values(secret.injection, values)
    now = vault.clock.now()
    async with vault.db.write() as conn:
        existing = await credential_ids(conn, secret.id)
        if credential_id is not None and credential_id not in existing:
            raise NotFound("credential", credential_id)
        if credential_id is None and not add and len(existing) > 1:
            raise InvalidInput(
                "This secret holds several credentials; name one with --credential.",
                credential_ids=existing,
            )
        target = credential_id or (existing[0] if existing and not add else None)
        creating = target is None
        target = target or str(uuid.uuid4())
        blob = vault.barrier.encrypt(
            json.dumps(clean, separators=(",", ":")).encode(), credential_aad(app.id, target)
        )
        if creating:
            await conn.execute(
                sa.insert(credentials).values(
                    id=target,
                    app_id=app.id,
                    managed_secret_id=secret.id,
                    label=label,
                    secret_ct=blob,
                    generation=str(uuid.uuid4()),
                    created_at=now,
                    updated_at=now,
                )
            )
        else:
            await conn.execute(
                sa.update(credentials)
                .where(credentials.c.id == target)
                .values(secret_ct=blob, generation=str(uuid.uuid4()), updated_at=now)
            )
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=app.id,
                    event=AuditEvent.SECRET_CREDENTIAL_SET,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    provider_id=secret.slug,
                    details={
                        "managed_secret_id": secret.id,
                        "credential_id": target,
                        "operation": "created" if creating else "replaced",
                        "fields": sorted(clean),
                    },
                )
            ],
        )
    return target


def token_fields(spec: InjectionSpec, values: dict[str, str]) -> dict[str, Any]:
    """Turn decrypted credential fields into the injection fields of a token response."""
    additional: dict[str, str] = {}
    injections: list[dict[str, str]] = []
    if spec.auth == "sigv4":
        additional["secret_key"] = values["secret_access_key"]
        for source, wire in (
            ("session_token", "session_token"),
            ("region", "region"),
            ("service", "service"),
        ):
            if values.get(source):
                additional[wire] = values[source]
        if spec.aws_region and "region" not in additional:
            additional["region"] = spec.aws_region
        if spec.aws_service and "service" not in additional:
            additional["service"] = spec.aws_service
        return {
            "access_token": values["access_key_id"],
            "injection_header": "Authorization",
            "injection_format": "AWS4-HMAC-SHA256",
            "additional_credentials": additional,
            "additional_injections": None,
        }
    if spec.auth == "basic":
        token = base64.b64encode(f"{values['username']}:{values['password']}".encode()).decode()
        header, fmt = "Authorization", "Basic {token}"
    else:
        token = values["token"]
        header, fmt = spec.header, spec.format
    if spec.auth == "query" and spec.query_param:
        injections.append(
            {"target": "query_param", "key": spec.query_param, "value_source": "token"}
        )
    for extra in spec.extra:
        if extra.source == "token":
            source = "token"
        elif extra.source in values:
            additional[extra.source] = values[extra.source]
            source = f"additional_credentials.{extra.source}"
        else:
            continue  # optional field not supplied: nothing to inject
        injections.append({"target": extra.target, "key": extra.key, "value_source": source})
    return {
        "access_token": token,
        "injection_header": header,
        "injection_format": fmt,
        "additional_credentials": additional or None,
        "additional_injections": injections or None,
    }


async def delete_secret(
    vault: Vault, app: App, secret: ManagedSecret, actor: dict[str, Any]
) -> int:
    """Delete a secret, its credentials and its grants; returns how many grants were active.

    The credential ciphertext goes with the rows; the audit trail keeps the history.
    """
    from grantvault_server.storage.tables import grants

    async with vault.db.write() as conn:
        active = (
            await conn.execute(
                sa.select(sa.func.count()).where(
                    grants.c.managed_secret_id == secret.id, grants.c.status == "active"
                )
            )
        ).scalar_one()
        await conn.execute(sa.delete(grants).where(grants.c.managed_secret_id == secret.id))
        await conn.execute(
            sa.delete(credentials).where(credentials.c.managed_secret_id == secret.id)
        )
        await conn.execute(sa.delete(managed_secrets).where(managed_secrets.c.id == secret.id))
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=app.id,
                    event=AuditEvent.SECRET_DELETED,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    provider_id=secret.slug,
                    details={"managed_secret_id": secret.id, "grants_removed": int(active)},
                )
            ],
        )
    return int(active)
