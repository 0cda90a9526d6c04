"""Grants: the right of one principal (system, user, group) to use one managed secret."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.errors import InvalidInput, NotFound, VaultError
from grantvault_server.identity.claims import Identity
from grantvault_server.services.apps import App
from grantvault_server.services.oauth_tokens import detach_tokens_for_revocation, run_revocations
from grantvault_server.services.secrets import ManagedSecret, credential_ids
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn
from grantvault_server.storage.sql import page
from grantvault_server.storage.tables import (
    credentials,
    grants,
    managed_secrets,
    oauth_providers,
    oauth_tokens,
)
from grantvault_server.timefmt import iso

log = logging.getLogger(__name__)

#: How long a revocation waits for the provider before leaving the rest to housekeeping.
INLINE_REVOCATION_TIMEOUT_S = 10.0

PRINCIPAL_TYPES = ("system", "user", "group")
GRANT_STATUSES = ("active", "revoked", "expired")


@dataclass(frozen=True)
class GrantPolicy:
    expires_at: datetime | None = None
    max_ttl_seconds: int | None = None
    default_ttl_seconds: int | None = None

    def effective_expiry(self, now: datetime) -> datetime | None:
        candidates = [t for t in (self.expires_at,) if t is not None]
        if self.max_ttl_seconds:
            candidates.append(now + timedelta(seconds=self.max_ttl_seconds))
        if not candidates and self.default_ttl_seconds:
            candidates.append(now + timedelta(seconds=self.default_ttl_seconds))
        return min(candidates) if candidates else None


def principal_label(principal_type: str, principal_id: str | None) -> str:
    return principal_type if principal_id is None else f"{principal_type}:{principal_id}"


def grant_status(row: Any, now: datetime) -> str:
    if row.status == "revoked":
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return str(row.status)


def grant_item(row: Any, now: datetime) -> dict[str, Any]:
    """A grant as ``ManagedSecretGrantItem`` or ``OAuthGrantItem`` on the wire."""
    if row.kind == "oauth":
        return {
            "grant_kind": "oauth",
            "grant_id": row.id,
            "provider_id": row.slug,
            "scopes": list(row.scopes or []),
            "account_identifier": row.account_identifier,
            "account_display_name": row.account_display_name,
            "api_base_url": row.api_base_url,
            "status": grant_status(row, now),
            "scope_mismatch": scope_mismatch_open(row),
            "scope_mismatch_at": iso(row.scope_mismatch_at),
            "needs_reconnect": bool(row.needs_reconnect),
            "label": row.label,
            "grant_policy": row.policy,
            "expires_at": iso(row.expires_at),
            "grant_expires_at": iso(row.expires_at),
            "created_at": iso(row.created_at),
            "last_used_at": iso(row.last_used_at),
            "principal_type": row.principal_type,
            "principal_id": row.principal_id,
            "revoked_at": iso(row.revoked_at),
        }
    return {
        "grant_kind": "managed_secret",
        "grant_id": row.id,
        "managed_secret_id": row.managed_secret_id,
        "managed_secret_slug": row.slug,
        "managed_secret_name": row.name,
        "label": row.label,
        "status": grant_status(row, now),
        "grant_policy": row.policy,
        "expires_at": iso(row.expires_at),
        "grant_expires_at": iso(row.expires_at),
        "created_at": iso(row.created_at),
        "last_used_at": iso(row.last_used_at),
        "principal_type": row.principal_type,
        "principal_id": row.principal_id,
        "credential_id": row.credential_id,
        "credential_kind": "developer",
        "revoked_at": iso(row.revoked_at),
        "scope_mismatch": scope_mismatch_open(row),
        "scope_mismatch_at": iso(row.scope_mismatch_at),
    }


def scope_mismatch_open(row: Any) -> bool:
    """Whether a reported scope mismatch still stands for this grant.

    An OAuth grant's flag clears by itself once the grant holds every scope the provider
    said was missing, or (when the provider named none) once its scopes changed since the
    report: both mean the user reconnected with more. A managed-secret grant has no scopes
    the vault could compare, so its flag stands until it is reported again or revoked.
    """
    if row.scope_mismatch_at is None:
        return False
    report = row.scope_mismatch if isinstance(row.scope_mismatch, dict) else {}
    if row.kind != "oauth":
        return True
    held = set(row.scopes or [])
    missing = [s for s in report.get("missing_scopes") or [] if isinstance(s, str)]
    if missing:
        return not set(missing) <= held
    return held == set(report.get("scopes_at_report") or [])


def _grant_select() -> sa.Select[Any]:
    return (
        sa.select(
            grants,
            sa.func.coalesce(managed_secrets.c.slug, oauth_providers.c.provider_id).label("slug"),
            managed_secrets.c.name,
            sa.func.coalesce(oauth_tokens.c.needs_reconnect, sa.false()).label("needs_reconnect"),
        )
        .outerjoin(managed_secrets, managed_secrets.c.id == grants.c.managed_secret_id)
        .outerjoin(oauth_providers, oauth_providers.c.id == grants.c.oauth_provider_id)
        .outerjoin(oauth_tokens, oauth_tokens.c.grant_id == grants.c.id)
    )


def _check_principal(principal_type: str, principal_id: str | None) -> str | None:
    """The principal id a grant stores (none for ``system``)."""
    if principal_type not in PRINCIPAL_TYPES:
        raise InvalidInput(f"principal must be one of {', '.join(PRINCIPAL_TYPES)}.")
    if principal_type == "system":
        return None
    if not principal_id or len(principal_id) > 255:
        raise InvalidInput(f"A {principal_type} grant needs its external id (1-255 characters).")
    return principal_id


def _check_policy(policy: GrantPolicy, now: datetime) -> None:
    if policy.expires_at is not None:
        if policy.expires_at.tzinfo is None:
            raise InvalidInput("grant_policy.expires_at needs a UTC offset (e.g. ...Z).")
        if policy.expires_at <= now:
            raise InvalidInput("grant_policy.expires_at must be in the future.")
        if policy.expires_at > now + timedelta(days=3650):
            raise InvalidInput("grant_policy.expires_at is more than ten years away.")
    for name in ("max_ttl_seconds", "default_ttl_seconds"):
        value = getattr(policy, name)
        if value is not None and not 0 < value <= 315_360_000:
            raise InvalidInput(f"grant_policy.{name} must be 1 to 315360000 seconds (ten years).")


async def _check_credential(conn: Conn, secret: ManagedSecret, credential_id: str | None) -> None:
    """The named credential is the secret's; none named is fine only if it holds one."""
    existing = await credential_ids(conn, secret.id)
    if credential_id is not None and credential_id not in existing:
        raise NotFound("credential", credential_id)
    if credential_id is None and len(existing) > 1:
        labels = {
            r.id: r.label
            for r in await conn.execute(
                sa.select(credentials.c.id, credentials.c.label).where(
                    credentials.c.managed_secret_id == secret.id
                )
            )
        }
        raise VaultError(
            ErrorCode.CREDENTIAL_ID_REQUIRED,
            "This secret holds several credentials; choose one with credential_id "
            "(CLI: --credential).",
            details={"credentials": [{"id": c, "label": labels.get(c) or ""} for c in existing]},
        )


async def create_grant(
    vault: Vault,
    app: App,
    secret: ManagedSecret,
    actor: dict[str, Any],
    *,
    principal_type: str,
    principal_id: str | None = None,
    idp_id: str | None = None,
    label: str | None = None,
    policy: GrantPolicy | None = None,
    credential_id: str | None = None,
) -> dict[str, Any]:
    principal_id = _check_principal(principal_type, principal_id)
    if label is not None and not (1 <= len(label) <= 255):
        raise InvalidInput("Labels are 1-255 characters.")
    policy = policy or GrantPolicy()
    now = vault.clock.now()
    _check_policy(policy, now)
    expires_at = policy.effective_expiry(now)
    grant_id = str(uuid.uuid4())
    async with vault.db.write() as conn:
        await _check_credential(conn, secret, credential_id)
        record = {
            "expires_at": iso(expires_at),
            "max_ttl_seconds": policy.max_ttl_seconds,
            # Never the operator's OS account: this record is visible to the app.
            "created_by": actor.get("key_prefix") or "operator",
            "created_at": iso(now),
        }
        await conn.execute(
            sa.insert(grants).values(
                id=grant_id,
                app_id=app.id,
                managed_secret_id=secret.id,
                credential_id=credential_id,
                principal_type=principal_type,
                principal_id=principal_id,
                idp_id=idp_id,
                label=label,
                status="active",
                expires_at=expires_at,
                policy=record,
                created_by=record["created_by"],
                created_at=now,
            )
        )
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=app.id,
                    event=AuditEvent.GRANT_CREATED,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    principal=principal_label(principal_type, principal_id),
                    grant_id=grant_id,
                    provider_id=secret.slug,
                    details={"expires_at": iso(expires_at), "label": label},
                )
            ],
        )
    return {
        "grant_id": grant_id,
        "principal_type": principal_type,
        "label": label,
        "created_at": iso(now),
        "credential_id": credential_id,
        "expires_at": iso(expires_at),
        "managed_secret_id": secret.id,
    }


async def load_grant(conn: Conn, app: App, grant_id: str) -> Any:
    row = (
        await conn.execute(
            _grant_select().where(grants.c.app_id == app.id, grants.c.id == grant_id)
        )
    ).first()
    if row is None:
        raise NotFound("grant", grant_id, ErrorCode.GRANT_NOT_FOUND)
    return row


async def list_grants(
    vault: Vault,
    app: App,
    *,
    provider: str | None = None,
    status: str | None = None,
    label: str | None = None,
    account: str | None = None,
    principal_type: str | None = None,
    identity: Identity | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    if not 1 <= limit <= 1000 or offset < 0:
        raise InvalidInput("limit must be 1-1000 and offset at least 0.")
    if status is not None and status not in GRANT_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(GRANT_STATUSES)}.")
    now = vault.clock.now()
    stmt = _grant_select().where(grants.c.app_id == app.id)
    if provider:
        stmt = stmt.where(
            sa.or_(
                managed_secrets.c.slug == provider,
                managed_secrets.c.id == provider,
                oauth_providers.c.provider_id == provider,
            )
        )
    if account is not None:
        stmt = stmt.where(grants.c.account_identifier == account)
    if label is not None:
        stmt = stmt.where(grants.c.label == label)
    if principal_type is not None:
        stmt = stmt.where(grants.c.principal_type == principal_type)
    if identity is not None:
        # An end user sees their own grants and those of their groups, nothing else.
        stmt = stmt.where(
            sa.or_(grants.c.idp_id.is_(None), grants.c.idp_id == identity.idp_id),
            sa.or_(
                sa.and_(
                    grants.c.principal_type == "user",
                    grants.c.principal_id == identity.subject,
                ),
                sa.and_(
                    grants.c.principal_type == "group",
                    grants.c.principal_id.in_(sorted(identity.groups) or [""]),
                ),
            ),
        )
    if status == "revoked":
        stmt = stmt.where(grants.c.status == "revoked")
    elif status == "expired":
        stmt = stmt.where(grants.c.status == "active", grants.c.expires_at <= now)
    elif status == "active":
        stmt = stmt.where(
            grants.c.status == "active",
            sa.or_(grants.c.expires_at.is_(None), grants.c.expires_at > now),
        )
    async with vault.db.read() as conn:
        total, rows = await page(conn, stmt, (grants.c.created_at, grants.c.id), limit, offset)
    return {
        "grants": [grant_item(r, now) for r in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
        "has_more": offset + len(rows) < total,
    }


async def revoke_grant(
    vault: Vault,
    app: App,
    grant_id: str,
    actor: dict[str, Any],
    *,
    reason: str | None = None,
    identity: Identity | None = None,
) -> dict[str, Any]:
    """Revoke a grant at once; revoking a revoked grant answers with its original time.

    With ``identity`` (a user token was sent) only that user's own grants can be revoked;
    anyone else's answers like an unknown grant.
    """
    if reason is not None and len(reason) > 512:
        raise InvalidInput("reason is at most 512 characters.")
    async with vault.db.write() as conn:
        row = await load_grant(conn, app, grant_id)
        if identity is not None and (
            row.principal_type != "user"
            or row.principal_id != identity.subject
            or (row.idp_id is not None and row.idp_id != identity.idp_id)
        ):
            raise NotFound("grant", grant_id, ErrorCode.GRANT_NOT_FOUND)
        if row.status == "revoked":
            return {
                "success": True,
                "message": "Grant was already revoked.",
                "grant_id": grant_id,
                "revoked_at": iso(row.revoked_at),
            }
        now = vault.clock.now()
        queued = await revoke_in(
            conn, vault, app.id, [Revocable.of(row)], actor=actor, reason=reason, now=now
        )
    for revoked_id in queued:
        await revoke_at_provider(vault, revoked_id)
    return {
        "success": True,
        "message": "Grant revoked.",
        "grant_id": grant_id,
        "revoked_at": iso(now),
    }


async def revoke_at_provider(vault: Vault, grant_id: str) -> None:
    """Tell the provider now (refresh token first); if it is down, housekeeping retries."""
    try:
        await asyncio.wait_for(
            run_revocations(vault, grant_id=grant_id), timeout=INLINE_REVOCATION_TIMEOUT_S
        )
    except Exception:  # the queue keeps the work; never fail a revocation on the provider
        log.warning("provider revocation deferred", extra={"grant_id": grant_id}, exc_info=True)


@dataclass(frozen=True)
class Revocable:
    """A grant as the revoke path needs it."""

    grant_id: str
    kind: str
    status: str
    principal_type: str
    principal_id: str | None
    oauth_provider_id: str | None = None
    #: What the audit row names as ``provider_id`` (the secret's or provider's slug).
    slug: str | None = None

    @classmethod
    def of(cls, row: Any) -> Revocable:
        """From a :func:`load_grant` row."""
        return cls(
            grant_id=row.id,
            kind=row.kind,
            status=row.status,
            principal_type=row.principal_type,
            principal_id=row.principal_id,
            oauth_provider_id=row.oauth_provider_id,
            slug=row.slug,
        )


async def revoke_in(
    conn: Conn,
    vault: Vault,
    app_id: str,
    targets: Sequence[Revocable],
    *,
    actor: dict[str, Any],
    reason: str | None,
    now: datetime,
    records: list[AuditRecord] | None = None,
) -> list[str]:
    """The one way grants are revoked, inside the caller's write transaction.

    Every grant not yet revoked is marked revoked (``reason`` stored) and audited
    ``grant.revoked``. An OAuth grant's tokens leave it at once and are queued for
    revocation at the provider, refresh token first (an already revoked grant's too: a
    refresh may have stored tokens after the revocation). The audit records go to
    ``records`` when given (the caller appends them with its own, in order), else they are
    appended here. Returns the ids of the grants with queued tokens: after the commit, hand
    each to :func:`revoke_at_provider`.
    """
    fresh = [t for t in targets if t.status != "revoked"]
    if fresh:
        await conn.execute(
            sa.update(grants)
            .where(grants.c.id.in_([t.grant_id for t in fresh]), grants.c.status != "revoked")
            .values(status="revoked", revoked_at=now, revoke_reason=reason)
        )
    audit = [
        AuditRecord(
            chain=app_id,
            event=AuditEvent.GRANT_REVOKED,
            outcome=Outcome.SUCCESS,
            actor=actor,
            reason=reason,
            principal=principal_label(t.principal_type, t.principal_id),
            grant_id=t.grant_id,
            provider_id=t.slug,
        )
        for t in fresh
    ]
    queued: list[str] = []
    for t in targets:
        # The tokens leave the vault's grant at once; the provider is told next.
        if (
            t.kind == "oauth"
            and t.oauth_provider_id is not None
            and await detach_tokens_for_revocation(
                vault, conn, app_id, t.grant_id, t.oauth_provider_id
            )
        ):
            queued.append(t.grant_id)
    if records is not None:
        records.extend(audit)
    elif audit:
        await vault.audit.append(conn, audit)
    return queued


async def revoke_user_oauth_grants(vault: Vault, app_id: str, subject: str) -> None:
    """A user was disabled or deleted: revoke their OAuth grants, drop the tokens and tell the
    providers (one of the ``services.identity.service.on_user_disabled`` hooks)."""
    now = vault.clock.now()
    async with vault.db.write() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    grants.c.id, grants.c.status, grants.c.kind, grants.c.oauth_provider_id
                ).where(
                    grants.c.app_id == app_id,
                    grants.c.kind == "oauth",
                    grants.c.principal_type == "user",
                    grants.c.principal_id == subject,
                )
            )
        ).all()
        queued = await revoke_in(
            conn,
            vault,
            app_id,
            [Revocable(r.id, r.kind, r.status, "user", subject, r.oauth_provider_id) for r in rows],
            actor={"type": "vault", "via": "deprovisioning"},
            reason="user deprovisioned",
            now=now,
        )
    for grant_id in queued:
        await revoke_at_provider(vault, grant_id)


#: Bounds of a scope-mismatch report as stored (the client clamps to the same bounds).
MAX_REPORTED_SCOPES = 50
MAX_REPORTED_SCOPE_CHARS = 256


@dataclass(frozen=True)
class ScopeMismatchReport:
    """What the client saw: the provider's status and error code, and the scopes it named."""

    provider_status_code: int
    provider_error_code: str
    missing_scopes: list[str] | None
    api_endpoint: str
    correlation_id: str | None = None


def _endpoint_summary(url: str) -> str | None:
    """Host and first path segment of the provider URL: enough to tell which API refused,
    never a query string or deeper path (those can carry ids or credentials)."""
    parsed = urlsplit(url[:2048])
    if not parsed.hostname:
        return None
    first = parsed.path.lstrip("/").split("/", 1)[0]
    return f"{parsed.hostname}/{first}"[:300] if first else parsed.hostname[:255]


async def report_scope_mismatch(
    vault: Vault, app: App, grant_id: str, actor: dict[str, Any], report: ScopeMismatchReport
) -> None:
    """Record the client's report that the provider refused this grant for a missing scope.

    The flag is shown in grant lists (``scope_mismatch``) so the app can ask the user to
    reconnect with more scopes before the next call fails. Any grant of the app may be
    flagged (a revoked one too: the report describes the past call); another app's grant
    answers ``grant_not_found``. The last report wins; each one is audited.
    """
    missing = (
        [s[:MAX_REPORTED_SCOPE_CHARS] for s in report.missing_scopes[:MAX_REPORTED_SCOPES]]
        if report.missing_scopes is not None
        else None
    )
    endpoint = _endpoint_summary(report.api_endpoint)
    now = vault.clock.now()
    async with vault.db.write() as conn:
        row = await load_grant(conn, app, grant_id)
        record = {
            "missing_scopes": missing,
            "scopes_at_report": list(row.scopes or []),
            "provider_status_code": report.provider_status_code,
            "provider_error_code": report.provider_error_code[:64],
            "api_endpoint": endpoint,
        }
        await conn.execute(
            sa.update(grants)
            .where(grants.c.id == grant_id)
            .values(scope_mismatch_at=now, scope_mismatch=record)
        )
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=app.id,
                    event=AuditEvent.GRANT_SCOPE_MISMATCH_REPORTED,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    principal=principal_label(row.principal_type, row.principal_id),
                    grant_id=grant_id,
                    provider_id=row.slug,
                    details={
                        "missing_scopes": missing,
                        "provider_status_code": report.provider_status_code,
                        "provider_error_code": report.provider_error_code[:64],
                        "api_endpoint": endpoint,
                        "correlation_id": (report.correlation_id or "")[:64] or None,
                    },
                )
            ],
        )


async def find_grant_any_app(vault: Vault, grant_id: str) -> App:
    from grantvault_server.services.apps import find_app

    async with vault.db.read() as conn:
        row = (
            await conn.execute(sa.select(grants.c.app_id).where(grants.c.id == grant_id))
        ).first()
        if row is None:
            raise NotFound("grant", grant_id, ErrorCode.GRANT_NOT_FOUND)
        return await find_app(conn, row.app_id)
