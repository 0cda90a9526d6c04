"""Credential retrieval (``POST /sdk/token``): the hot path and the most audited one.

Order matters: resolve the grant, check its status and expiry, check the destination
against the secret's allowed hosts, ask the policy engine, and only then decrypt. Every
outcome, allowed or denied, writes an audit row; if that row cannot be written, no token
leaves the vault.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit import chain
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.audit.redact import redact_url
from grantvault_server.crypto.barrier import BarrierError
from grantvault_server.errors import NotFound, VaultError
from grantvault_server.policy.engine import PolicyRequest
from grantvault_server.providers.hosts import check_destination
from grantvault_server.providers.schema import InjectionSpec
from grantvault_server.services.apps import App, _iso
from grantvault_server.services.grants import grant_status, principal_label
from grantvault_server.services.secrets import credential_aad, token_fields
from grantvault_server.services.vault import Vault, utcnow
from grantvault_server.storage.db import Conn
from grantvault_server.storage.tables import credentials, grants, managed_secrets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenRequest:
    method: str
    url: str
    grant_id: str | None = None
    provider_id: str | None = None
    label: str | None = None
    reason: str | None = None
    user_token: str | None = None


_COLUMNS = (
    grants.c.id,
    grants.c.status,
    grants.c.expires_at,
    grants.c.principal_type,
    grants.c.principal_id,
    grants.c.label,
    grants.c.credential_id,
    managed_secrets.c.id.label("secret_id"),
    managed_secrets.c.slug,
    managed_secrets.c.injection,
    managed_secrets.c.allowed_hosts,
)


async def _resolve(conn: Conn, app: App, req: TokenRequest) -> Any:
    base = (
        sa.select(*_COLUMNS)
        .join(managed_secrets, managed_secrets.c.id == grants.c.managed_secret_id)
        .where(grants.c.app_id == app.id)
    )
    if req.grant_id is not None:
        row = (await conn.execute(base.where(grants.c.id == req.grant_id))).first()
        if row is None:
            raise NotFound("grant", req.grant_id, ErrorCode.GRANT_NOT_FOUND)
        return row
    # Identity mode without a user token: the app's own (system) grant for this secret.
    stmt = base.where(
        managed_secrets.c.slug == req.provider_id,
        grants.c.principal_type == "system",
        grants.c.status == "active",
    )
    if req.label is not None:
        stmt = stmt.where(grants.c.label == req.label)
    now = utcnow()
    rows = [
        r for r in (await conn.execute(stmt.limit(51))).all() if grant_status(r, now) == "active"
    ]
    if not rows:
        raise VaultError(
            ErrorCode.GRANT_NOT_FOUND,
            f"This app has no active system grant for {req.provider_id!r}; create one with "
            "`grantvault grants create`.",
            provider_id=req.provider_id,
        )
    if len(rows) > 1:
        raise VaultError(
            ErrorCode.AMBIGUOUS_GRANT,
            f"Several grants match {req.provider_id!r}; pass grant_id or label.",
            provider_id=req.provider_id,
            account_identifiers=[],
            grant_ids=[r.id for r in rows[:50]],
            candidates=[
                {
                    "grant_id": r.id,
                    "label": r.label,
                    "account_identifier": None,
                    "account_display_name": None,
                }
                for r in rows[:50]
            ],
            candidates_truncated=len(rows) > 50,
        )
    return rows[0]


async def retrieve(
    vault: Vault, app: App, actor: dict[str, Any], req: TokenRequest
) -> dict[str, Any]:
    """Return the token response for ``req`` or raise the typed denial (after auditing it)."""
    if req.user_token is not None:
        raise VaultError(
            ErrorCode.IDP_NOT_CONFIGURED,
            "This vault does not verify end-user tokens yet; call without user_token and use "
            "a system grant or an explicit grant_id.",
        )
    row: Any = None
    audit: dict[str, Any] = {
        "chain": app.id,
        "event": AuditEvent.CREDENTIAL_RETRIEVED,
        "actor": actor,
        "reason": req.reason,
        "method": req.method,
        "url": redact_url(req.url),
    }
    try:
        async with vault.db.read() as conn:
            row = await _resolve(conn, app, req)
            now = utcnow()
            status = grant_status(row, now)
            if status == "revoked":
                raise VaultError(
                    ErrorCode.GRANT_REVOKED,
                    "This grant was revoked; create a new grant.",
                    grant_id=row.id,
                )
            if status == "expired":
                raise VaultError(
                    ErrorCode.GRANT_EXPIRED,
                    "This grant has expired; create a new grant.",
                    grant_id=row.id,
                    provider_id=row.slug,
                )
            host = check_destination(
                req.url, row.allowed_hosts, allow_http_hosts=vault.settings.allow_http_hosts
            )
            decision = vault.policy.evaluate(
                PolicyRequest(
                    app_id=app.id,
                    grant_id=row.id,
                    provider_id=row.slug,
                    principal_type=row.principal_type,
                    principal_id=row.principal_id,
                    action="credential.retrieve",
                    method=req.method,
                    url=req.url,
                    host=host,
                    caller=actor.get("caller"),
                )
            )
            if not decision.allowed:
                raise VaultError(
                    ErrorCode.POLICY_DENIED,
                    "A policy denies this use of the grant.",
                    policy_error=decision.reason,
                )
            cred_stmt = sa.select(
                credentials.c.id, credentials.c.secret_ct, credentials.c.generation
            ).where(credentials.c.managed_secret_id == row.secret_id)
            if row.credential_id is not None:
                cred_stmt = cred_stmt.where(credentials.c.id == row.credential_id)
            cred = (
                await conn.execute(cred_stmt.order_by(credentials.c.created_at).limit(1))
            ).first()
            if cred is None:
                raise VaultError(
                    ErrorCode.CREDENTIAL_NOT_SET,
                    f"The secret {row.slug!r} has no credential yet; set one with "
                    "`grantvault secrets set-credential`.",
                )
            try:
                plaintext = await vault.barrier.decrypt_fresh(
                    conn, cred.secret_ct, credential_aad(app.id, cred.id)
                )
            except BarrierError:
                log.error(
                    "stored credential failed authentication", extra={"credential_id": cred.id}
                )
                raise VaultError(
                    ErrorCode.CREDENTIAL_CORRUPT,
                    "The stored credential failed its integrity check and was not used; "
                    "set it again and tell your operator.",
                ) from None
        spec = InjectionSpec.model_validate(row.injection)
        fields = token_fields(spec, json.loads(plaintext))
    except VaultError as denial:
        await _audit_denial(vault, audit, row, denial)
        raise
    async with vault.db.write() as conn:
        await chain.append(
            conn,
            [
                AuditRecord(
                    outcome=Outcome.SUCCESS,
                    principal=principal_label(row.principal_type, row.principal_id),
                    grant_id=row.id,
                    provider_id=row.slug,
                    details={"policy": decision.reason, "token_generation": cred.generation},
                    **audit,
                )
            ],
        )
        await conn.execute(
            sa.update(grants)
            .where(
                grants.c.id == row.id,
                sa.or_(
                    grants.c.last_used_at.is_(None),
                    grants.c.last_used_at < now - timedelta(seconds=60),
                ),
            )
            .values(last_used_at=now)
        )
    return {
        **fields,
        "token_type": "Bearer",
        "expires_in": None,
        "expires_at": None,
        "grant_expires_at": _iso(row.expires_at),
        "scopes": [],
        "grant_id": row.id,
        "provider_id": row.slug,
        "token_generation": cred.generation,
        "scope_mismatch": False,
    }


async def _audit_denial(vault: Vault, audit: dict[str, Any], row: Any, denial: VaultError) -> None:
    """Record a refused retrieval. Unknown grants have no owner row but still leave a trace."""
    if denial.code in {ErrorCode.STORAGE_UNAVAILABLE}:
        return
    try:
        async with vault.db.write() as conn:
            await chain.append(
                conn,
                [
                    AuditRecord(
                        outcome=Outcome.DENIED,
                        principal=principal_label(row.principal_type, row.principal_id)
                        if row
                        else None,
                        grant_id=row.id if row is not None else None,
                        provider_id=row.slug if row is not None else None,
                        details={"error": denial.code.value, "caller_reason": audit["reason"]},
                        **{**audit, "reason": denial.code.value},
                    )
                ],
            )
    except VaultError:
        log.warning("could not audit a denied retrieval", extra={"error_code": denial.code.value})
