"""Apps (the tenant boundary) and their API keys."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from grantvault.protocol.key_format import display_prefix, mint_key
from grantvault.types.errors import ErrorCode
from grantvault_server.audit import chain
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.auth.api_keys import KeyRecord, hash_key
from grantvault_server.errors import InvalidInput, NotFound, VaultError
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import utcnow
from grantvault_server.storage.db import Conn
from grantvault_server.storage.fastread import PreparedRead
from grantvault_server.storage.tables import api_keys, apps
from grantvault_server.timefmt import iso

APP_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
MAX_OVERLAP = timedelta(days=30)


@dataclass(frozen=True)
class App:
    id: str
    name: str
    created_at: datetime
    #: The app's ``policy_generation`` as read with the caller's key (``None``: not read,
    #: so ``services.policies`` reads it itself). Tells a replica whether its compiled
    #: policies of the app are current without another query.
    policy_generation: int | None = None


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    app_id: str
    name: str | None
    key_type: str
    key_prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    grace_expires_at: datetime | None
    rotated_to_id: str | None
    last_used_at: datetime | None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.grace_expires_at is not None:
            return "rotated_expired" if self.grace_expires_at <= now else "rotating"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "key_id": self.id,
            "name": self.name,
            "key_prefix": self.key_prefix,
            "key_type": self.key_type,
            "status": self.status(now),
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "grace_expires_at": iso(self.grace_expires_at),
            "rotated_to": self.rotated_to_id,
            "last_used_at": iso(self.last_used_at),
        }


def _record(app: App, event: AuditEvent, actor: dict[str, Any], **kw: Any) -> AuditRecord:
    return AuditRecord(chain=app.id, event=event, outcome=Outcome.SUCCESS, actor=actor, **kw)


async def register_app(vault: Vault, name: str, actor: dict[str, Any]) -> App:
    """Create an app (a tenant: its keys, grants and audit chain) named ``name``."""
    if not APP_NAME.fullmatch(name):
        raise InvalidInput(
            "App names are 1-64 characters of lowercase letters, digits and '-' "
            "(no leading or trailing '-')."
        )
    app = App(id=str(uuid.uuid4()), name=name, created_at=vault.clock.now())
    try:
        async with vault.db.write() as conn:
            await conn.execute(
                sa.insert(apps).values(id=app.id, name=name, created_at=app.created_at)
            )
            # The app's chain starts with the app: from now on a missing chain is tampering.
            await chain.start(conn, app.id)
            await vault.audit.append(
                conn, [_record(app, AuditEvent.APP_CREATED, actor, details={"name": name})]
            )
    except IntegrityError:
        raise VaultError(
            ErrorCode.INVALID_REQUEST, f"An app named {name!r} already exists.", status=409
        ) from None
    return app


async def list_apps(vault: Vault) -> list[App]:
    async with vault.db.read() as conn:
        rows = (await conn.execute(sa.select(apps).order_by(apps.c.name))).all()
    return [App(r.id, r.name, r.created_at) for r in rows]


async def find_app(conn: Conn, name_or_id: str) -> App:
    row = (
        await conn.execute(
            sa.select(apps).where(sa.or_(apps.c.name == name_or_id, apps.c.id == name_or_id))
        )
    ).first()
    if row is None:
        raise NotFound("app", name_or_id, hint="See `grantvault apps list`.")
    return App(row.id, row.name, row.created_at, row.policy_generation)


async def get_app(vault: Vault, name_or_id: str) -> App:
    async with vault.db.read() as conn:
        return await find_app(conn, name_or_id)


def _key_info(row: Any) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        app_id=row.app_id,
        name=row.name,
        key_type=row.key_type,
        key_prefix=row.key_prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        grace_expires_at=row.grace_expires_at,
        rotated_to_id=row.rotated_to_id,
        last_used_at=row.last_used_at,
    )


async def _insert_key(
    conn: Conn, app: App, name: str | None, expires_at: datetime | None
) -> tuple[ApiKeyInfo, str]:
    plaintext = mint_key("rk")
    values = {
        "id": str(uuid.uuid4()),
        "app_id": app.id,
        "name": name,
        "key_type": "rk",
        "key_prefix": display_prefix(plaintext),
        "key_hash": hash_key(plaintext),
        "created_at": utcnow(),
        "expires_at": expires_at,
    }
    await conn.execute(sa.insert(api_keys).values(**values))
    row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == values["id"]))).one()
    return _key_info(row), plaintext


async def create_key(
    vault: Vault,
    app: App,
    actor: dict[str, Any],
    *,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKeyInfo, str]:
    """Mint a key. The plaintext is returned once and never stored."""
    if name is not None and not (1 <= len(name) <= 128):
        raise InvalidInput("Key names are 1-128 characters.")
    if expires_at is not None and expires_at <= vault.clock.now():
        raise InvalidInput("The key's expiry must be in the future.")
    async with vault.db.write() as conn:
        info, plaintext = await _insert_key(conn, app, name, expires_at)
        await vault.audit.append(
            conn,
            [
                _record(
                    app,
                    AuditEvent.KEY_CREATED,
                    actor,
                    details={
                        "key_id": info.id,
                        "key_prefix": info.key_prefix,
                        "expires_at": iso(expires_at),
                    },
                )
            ],
        )
    return info, plaintext


async def list_keys(vault: Vault, app: App) -> list[ApiKeyInfo]:
    async with vault.db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(api_keys)
                .where(api_keys.c.app_id == app.id)
                .order_by(api_keys.c.created_at)
            )
        ).all()
    return [_key_info(r) for r in rows]


async def _lock_key(conn: Conn, app: App, key_id: str) -> ApiKeyInfo:
    row = (
        await conn.execute(
            sa.select(api_keys).where(api_keys.c.app_id == app.id, api_keys.c.id == key_id)
        )
    ).first()
    if row is None:
        raise NotFound("API key", key_id)
    return _key_info(row)


async def revoke_key(vault: Vault, app: App, key_id: str, actor: dict[str, Any]) -> ApiKeyInfo:
    async with vault.db.write() as conn:
        key = await _lock_key(conn, app, key_id)
        if key.revoked_at is not None:
            return key
        now = vault.clock.now()
        await conn.execute(
            sa.update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=now)
        )
        await vault.audit.append(
            conn,
            [
                _record(
                    app,
                    AuditEvent.KEY_REVOKED,
                    actor,
                    details={"key_id": key_id, "key_prefix": key.key_prefix},
                )
            ],
        )
        return await _lock_key(conn, app, key_id)


async def rotate_key(
    vault: Vault, app: App, key_id: str, actor: dict[str, Any], *, overlap: timedelta
) -> tuple[ApiKeyInfo, str]:
    """Mint a successor; the old key keeps working for ``overlap``, then is refused."""
    if overlap < timedelta(0) or overlap > MAX_OVERLAP:
        raise InvalidInput("The overlap window must be between 0 and 30 days.")
    async with vault.db.write() as conn:
        old = await _lock_key(conn, app, key_id)
        now = vault.clock.now()
        if old.status(now) not in {"active"}:
            raise VaultError(
                ErrorCode.INVALID_REQUEST,
                f"Key {key_id} is {old.status(now)}; only an active key can be rotated.",
                status=409,
            )
        new, plaintext = await _insert_key(conn, app, old.name, old.expires_at)
        await conn.execute(
            sa.update(api_keys)
            .where(api_keys.c.id == key_id)
            .values(grace_expires_at=now + overlap, rotated_to_id=new.id)
        )
        await vault.audit.append(
            conn,
            [
                _record(
                    app,
                    AuditEvent.KEY_ROTATED,
                    actor,
                    details={
                        "key_id": key_id,
                        "successor_key_id": new.id,
                        "overlap_seconds": int(overlap.total_seconds()),
                    },
                )
            ],
        )
    return new, plaintext


async def set_key_expiry(
    vault: Vault, app: App, key_id: str, expires_at: datetime, actor: dict[str, Any]
) -> ApiKeyInfo:
    async with vault.db.write() as conn:
        await _lock_key(conn, app, key_id)
        await conn.execute(
            sa.update(api_keys).where(api_keys.c.id == key_id).values(expires_at=expires_at)
        )
        await vault.audit.append(
            conn,
            [
                _record(
                    app,
                    AuditEvent.KEY_EXPIRY_SET,
                    actor,
                    details={"key_id": key_id, "expires_at": iso(expires_at)},
                )
            ],
        )
        return await _lock_key(conn, app, key_id)


_KEY_BY_HASH = PreparedRead(
    sa.select(
        api_keys.c.id,
        api_keys.c.app_id,
        api_keys.c.key_prefix,
        api_keys.c.expires_at,
        api_keys.c.revoked_at,
        api_keys.c.grace_expires_at,
        api_keys.c.last_used_at,
        apps.c.name,
        apps.c.policy_generation,
    )
    .join(apps, apps.c.id == api_keys.c.app_id)
    .where(api_keys.c.key_hash == sa.bindparam("key_hash"))
)


async def lookup_key(vault: Vault, presented: str) -> KeyRecord | None:
    """Find the key whose hash matches ``presented`` (the hash is unique and indexed).

    Read on every request, never cached: a revoked key must fail on its very next use, on
    every replica.
    """
    async with vault.db.read() as conn:
        row = await _KEY_BY_HASH.first(conn, {"key_hash": hash_key(presented)})
    if row is None:
        return None
    return KeyRecord(
        id=row.id,
        app_id=row.app_id,
        app_name=row.name,
        key_prefix=row.key_prefix,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        grace_expires_at=row.grace_expires_at,
        last_used_at=row.last_used_at,
        policy_generation=row.policy_generation,
    )
