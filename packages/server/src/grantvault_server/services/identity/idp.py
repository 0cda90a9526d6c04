"""An app's identity provider: configured by OIDC discovery, one active per app.

The claim mappings (which claim is the user id, the groups, the email, the name) lock at the
first sign-in: changing ``user_id_claim`` afterwards would silently give existing users new
ids (and their grants to nobody), so it needs ``force``. The sign-in client's secret and the
webhook secret are stored as barrier ciphertext bound to their row.
"""

from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.crypto.barrier import aad_for
from grantvault_server.errors import InvalidInput, VaultError
from grantvault_server.identity.discovery import (
    Discovery,
    DiscoveryError,
    check_algorithms,
    discover,
)
from grantvault_server.identity.state import IdpConfig
from grantvault_server.identity.webhook_signature import WEBHOOK_SECRET_PREFIX, webhook_key
from grantvault_server.services.apps import App
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn
from grantvault_server.storage.fastread import PreparedRead
from grantvault_server.storage.sql import for_update
from grantvault_server.storage.tables import identity_providers
from grantvault_server.timefmt import iso

CALLBACK_PATH = "/sdk/auth/callback"
WEBHOOK_PATH = "/webhooks/idp/{app_id}"
MAPPING_FIELDS = ("user_id_claim", "groups_claim", "email_claim", "name_claim")
_KEEP: Any = object()

_CONFIG_COLUMNS = (
    identity_providers.c.id,
    identity_providers.c.app_id,
    identity_providers.c.issuer,
    identity_providers.c.jwks_uri,
    identity_providers.c.algorithms,
    identity_providers.c.audience,
    identity_providers.c.user_id_claim,
    identity_providers.c.groups_claim,
    identity_providers.c.email_claim,
    identity_providers.c.name_claim,
    identity_providers.c.mappings_locked_at,
    identity_providers.c.signin_client_id,
    identity_providers.c.endpoints,
    identity_providers.c.updated_at,
)
_ACTIVE_BY_APP = PreparedRead(
    sa.select(*_CONFIG_COLUMNS).where(
        identity_providers.c.app_id == sa.bindparam("app_id"),
        identity_providers.c.active.is_(sa.true()),
    )
)


def secret_aad(app_id: str, idp_id: str, column: str) -> bytes:
    return aad_for(identity_providers.name, app_id, idp_id, column)


def _config(row: Any) -> IdpConfig:
    return IdpConfig(
        id=row.id,
        app_id=row.app_id,
        issuer=row.issuer,
        jwks_uri=row.jwks_uri,
        algorithms=frozenset(row.algorithms),
        audience=row.audience,
        user_id_claim=row.user_id_claim,
        groups_claim=row.groups_claim,
        email_claim=row.email_claim,
        name_claim=row.name_claim,
        mappings_locked=row.mappings_locked_at is not None,
        signin_client_id=row.signin_client_id,
        endpoints=dict(row.endpoints or {}),
        version=row.updated_at.isoformat(),
    )


async def read_config(conn: Conn, app_id: str) -> IdpConfig | None:
    row = await _ACTIVE_BY_APP.first(conn, {"app_id": app_id})
    return None if row is None else _config(row)


async def active_config(vault: Vault, app_id: str, *, fresh: bool = False) -> IdpConfig | None:
    """The app's active IdP, from this process's short-lived cache unless ``fresh``."""
    state = vault.identity
    now = state.clock()
    cached = state.configs.get(app_id)
    if not fresh and cached is not None and cached[0] > now:
        return cached[1]
    async with vault.db.read() as conn:
        config = await read_config(conn, app_id)
    state.configs[app_id] = (now + state.config_ttl_s, config)
    return config


def require_config(config: IdpConfig | None) -> IdpConfig:
    if config is None:
        raise VaultError(
            ErrorCode.IDP_NOT_CONFIGURED,
            "This app has no identity provider; configure one with `grantvault idp set --app "
            "<app> --issuer <url> --audience <aud>` before sending user tokens.",
        )
    return config


def _claim_name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isprintable():
        raise InvalidInput(f"{what} must be a claim name of 1-255 printable characters.")
    return value


@dataclass(frozen=True)
class IdpSettings:
    """What an operator sets; ``None`` keeps the current value (or the default for a new IdP)."""

    issuer: str
    audience: str | None = None
    user_id_claim: str | None = None
    #: ``""`` removes the groups mapping.
    groups_claim: str | None = None
    email_claim: str | None = None
    name_claim: str | None = None
    algorithms: tuple[str, ...] | None = None
    signin_client_id: str | None = None
    #: Set with ``signin_client_id``; None there means a public client (PKCE only).
    signin_client_secret: str | None = None
    clear_signin: bool = False


def _check_settings(settings: IdpSettings) -> None:
    """Refuse malformed operator input before anything is fetched."""
    for name in MAPPING_FIELDS:
        _claim_name(getattr(settings, name) or None, name)
    if settings.audience is not None and not 1 <= len(settings.audience) <= 512:
        raise InvalidInput("The audience is 1-512 characters.")
    if settings.signin_client_id is not None and not 1 <= len(settings.signin_client_id) <= 255:
        raise InvalidInput("The sign-in client id is 1-255 characters.")
    if (
        settings.signin_client_secret is not None
        and not 1 <= len(settings.signin_client_secret) <= 4096
    ):
        raise InvalidInput("The sign-in client secret is 1-4096 characters.")
    if settings.signin_client_secret is not None and settings.signin_client_id is None:
        raise InvalidInput("A client secret needs its client id (--client-id).")


async def _discover(vault: Vault, settings: IdpSettings) -> tuple[Discovery, tuple[str, ...]]:
    """The issuer's validated discovery document, and the algorithms to accept."""
    try:
        found = await discover(settings.issuer, vault.settings.allow_http_hosts, http=vault.http)
    except DiscoveryError as exc:
        raise VaultError(ErrorCode.IDP_DISCOVERY_FAILED, str(exc)) from None
    if settings.algorithms is None:
        return found, found.algorithms
    algorithms = check_algorithms(settings.algorithms)
    if not algorithms or len(algorithms) != len(settings.algorithms):
        raise InvalidInput(
            "--algorithms takes asymmetric JWS algorithms only (RS256, PS256, ES256, "
            "EdDSA, ...); `none` and HS* are never accepted."
        )
    return found, algorithms


_DEFAULT_MAPPINGS: dict[str, Any] = {
    "user_id_claim": "sub",
    "groups_claim": None,
    "email_claim": "email",
    "name_claim": "name",
    "audience": None,
}


@dataclass(frozen=True)
class _Plan:
    """What :func:`set_idp` decided: the row to write and what it replaces."""

    current: Any
    #: The same issuer as the active row: updated in place (else a new row replaces it).
    same: bool
    idp_id: str
    #: Mappings and audience before, and as they will be.
    base: dict[str, Any]
    wanted: dict[str, Any]

    @property
    def remapped(self) -> list[str]:
        return [f for f in MAPPING_FIELDS if self.wanted[f] != self.base[f]]


def _plan(current: Any, settings: IdpSettings, *, force: bool) -> _Plan:
    """Decide the mappings and whether the change is allowed (locked mappings need force)."""
    same = current is not None and current.issuer == settings.issuer
    fields = (*MAPPING_FIELDS, "audience")
    base = {f: getattr(current, f) for f in fields} if same else dict(_DEFAULT_MAPPINGS)
    wanted = dict(base)
    for name in fields:
        value = getattr(settings, name)
        if value is not None:
            wanted[name] = (value or None) if name == "groups_claim" else value
    if not wanted["audience"]:
        raise InvalidInput("An IdP needs the audience its tokens carry (--audience).")
    plan = _Plan(current, same, current.id if same else str(uuid.uuid4()), base, wanted)
    locked = current is not None and current.mappings_locked_at is not None
    if locked and not force and not same:
        raise VaultError(
            ErrorCode.IDP_MAPPINGS_LOCKED,
            "Users of this app have signed in with the current issuer; replacing it "
            "makes their ids and grants unusable. Re-run with --force to replace it.",
        )
    if locked and not force and plan.remapped:
        raise VaultError(
            ErrorCode.IDP_MAPPINGS_LOCKED,
            f"The claim mappings locked at the first sign-in ({', '.join(plan.remapped)} "
            "would change, and existing users would get other ids or groups). "
            "Re-run with --force if that is intended.",
        )
    return plan


def _signin_values(vault: Vault, app_id: str, idp_id: str, settings: IdpSettings) -> dict[str, Any]:
    """The sign-in client columns to write (the secret sealed to its row), if any change."""
    if settings.clear_signin:
        return {"signin_client_id": None, "signin_client_secret_ct": None}
    if settings.signin_client_id is None:
        return {}
    secret = settings.signin_client_secret
    return {
        "signin_client_id": settings.signin_client_id,
        "signin_client_secret_ct": (
            vault.barrier.encrypt(
                secret.encode(), secret_aad(app_id, idp_id, "signin_client_secret_ct")
            )
            if secret is not None
            else None
        ),
    }


async def _write_idp(
    conn: Conn, app_id: str, issuer: str, plan: _Plan, values: dict[str, Any], now: datetime
) -> None:
    """Update the active row in place, or deactivate it and insert the new one."""
    if plan.same:
        await conn.execute(
            sa.update(identity_providers)
            .where(identity_providers.c.id == plan.idp_id)
            .values(**values)
        )
        return
    if plan.current is not None:
        await conn.execute(
            sa.update(identity_providers)
            .where(identity_providers.c.id == plan.current.id)
            .values(active=False, updated_at=now)
        )
    await conn.execute(
        sa.insert(identity_providers).values(
            id=plan.idp_id, app_id=app_id, issuer=issuer, active=True, created_at=now, **values
        )
    )


def _configured(
    app_id: str,
    actor: dict[str, Any],
    settings: IdpSettings,
    plan: _Plan,
    values: dict[str, Any],
    *,
    force: bool,
) -> AuditRecord:
    return AuditRecord(
        chain=app_id,
        event=AuditEvent.IDP_CONFIGURED,
        outcome=Outcome.SUCCESS,
        actor=actor,
        details={
            "idp_id": plan.idp_id,
            "issuer": settings.issuer,
            "audience": plan.wanted["audience"],
            "mappings": {f: plan.wanted[f] for f in MAPPING_FIELDS},
            "algorithms": values["algorithms"],
            "replaced_issuer": (None if plan.same or plan.current is None else plan.current.issuer),
            "signin_client_id": values.get("signin_client_id"),
            "forced": force,
        },
    )


async def set_idp(
    vault: Vault, app: App, actor: dict[str, Any], settings: IdpSettings, *, force: bool = False
) -> dict[str, Any]:
    """Configure (or reconfigure) the app's IdP after validating its discovery document.

    Same issuer: the row is updated in place. Another issuer: the old row is deactivated and
    a new one created (needs ``force`` once users have signed in, because their ids belong
    to the old issuer).
    """
    _check_settings(settings)
    found, algorithms = await _discover(vault, settings)
    now = vault.clock.now()
    async with vault.db.write() as conn:
        current = (
            await conn.execute(
                for_update(
                    conn,
                    sa.select(identity_providers).where(
                        identity_providers.c.app_id == app.id,
                        identity_providers.c.active.is_(sa.true()),
                    ),
                )
            )
        ).first()
        plan = _plan(current, settings, force=force)
        values: dict[str, Any] = {
            **plan.wanted,
            "jwks_uri": found.jwks_uri,
            "algorithms": list(algorithms),
            "endpoints": found.endpoints(),
            "updated_at": now,
        }
        if plan.same and force and plan.remapped:
            values["mappings_locked_at"] = None
        values.update(_signin_values(vault, app.id, plan.idp_id, settings))
        await _write_idp(conn, app.id, settings.issuer, plan, values, now)
        await vault.audit.append(
            conn, [_configured(app.id, actor, settings, plan, values, force=force)]
        )
    vault.identity.forget_config(app.id)
    return await show_idp(vault, app)


async def show_idp(vault: Vault, app: App) -> dict[str, Any]:
    """The app's IdP configuration, without secrets (only whether they are set)."""
    async with vault.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(identity_providers).where(
                    identity_providers.c.app_id == app.id,
                    identity_providers.c.active.is_(sa.true()),
                )
            )
        ).first()
    require_config(None if row is None else _config(row))
    assert row is not None
    base = vault.settings.effective_public_base_url
    return {
        "idp_id": row.id,
        "app_id": app.id,
        "issuer": row.issuer,
        "audience": row.audience,
        "jwks_uri": row.jwks_uri,
        "algorithms": list(row.algorithms),
        "claims": {f.removesuffix("_claim"): getattr(row, f) for f in MAPPING_FIELDS},
        "mappings_locked_at": iso(row.mappings_locked_at),
        "signin": {
            "client_id": row.signin_client_id,
            "client_secret_set": row.signin_client_secret_ct is not None,
            "redirect_uri": base + CALLBACK_PATH,
        },
        "webhook": {
            "url": base + WEBHOOK_PATH.format(app_id=app.id),
            "secret_set": row.webhook_secret_ct is not None,
        },
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


async def set_webhook_secret(
    vault: Vault, app: App, actor: dict[str, Any], *, secret: str | None = None
) -> str:
    """Store the webhook signing secret (a new random one unless given); returns it once.

    Secrets are Standard Webhooks style ``whsec_<base64>`` (what Svix and Clerk issue): the
    HMAC key is the decoded part. An IdP that generates its own secret is imported as is.
    """
    if secret is None:
        secret = WEBHOOK_SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()
    webhook_key(secret)  # validates
    async with vault.db.write() as conn:
        config = require_config(await read_config(conn, app.id))
        await conn.execute(
            sa.update(identity_providers)
            .where(identity_providers.c.id == config.id)
            .values(
                webhook_secret_ct=vault.barrier.encrypt(
                    secret.encode(), secret_aad(app.id, config.id, "webhook_secret_ct")
                ),
                updated_at=vault.clock.now(),
            )
        )
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=app.id,
                    event=AuditEvent.IDP_WEBHOOK_SECRET_CREATED,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    details={"idp_id": config.id},
                )
            ],
        )
    vault.identity.forget_config(app.id)
    return secret
