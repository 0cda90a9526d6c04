"""Credential retrieval (``POST /sdk/token``): the hot path and the most audited one.

Order matters: resolve the grant, check its status and expiry, check the destination
against the secret's allowed hosts, judge the app's policies (``services.policies``), and
only then decrypt. Every outcome, allowed or denied, writes an audit row; if that row cannot
be written, no token leaves the vault. Quota and rate-limit charges are applied in the same
write transaction as that row, so a call is counted exactly when its token is released.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.audit.redact import redact_url
from grantvault_server.crypto.barrier import BarrierError, CorruptCiphertext
from grantvault_server.errors import NotFound, VaultError
from grantvault_server.identity.claims import Identity
from grantvault_server.policy.cache import AppPolicies
from grantvault_server.policy.engine import Decision, decide
from grantvault_server.providers.hosts import check_destination
from grantvault_server.services import (
    oauth_providers as oauth_configs,
    oauth_tokens,
    policies as policy_service,
)
from grantvault_server.services.apps import App
from grantvault_server.services.grants import grant_status, principal_label, scope_mismatch_open
from grantvault_server.services.group_commit import Replayed, RetrievalWrite, nonce_expiry
from grantvault_server.services.identity.service import resolve_user
from grantvault_server.services.last_used import TOUCH_GRANT, needs_touch
from grantvault_server.services.nonces import claim_nonce_in
from grantvault_server.services.policy_counters import apply_charges
from grantvault_server.services.secrets import credential_aad, token_fields
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import Clock
from grantvault_server.storage.db import Conn
from grantvault_server.storage.fastread import PreparedRead
from grantvault_server.storage.tables import credentials, grants, managed_secrets, oauth_providers
from grantvault_server.timefmt import iso

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenRequest:
    method: str
    url: str
    grant_id: str | None = None
    provider_id: str | None = None
    label: str | None = None
    account: str | None = None
    reason: str | None = None
    user_token: str | None = None
    #: The calling app server's address: the socket peer, or the X-Forwarded-For entry a
    #: trusted proxy added (``GRANTVAULT_TRUSTED_PROXIES``); a policy's ``ip_allow`` fact.
    caller_ip: str | None = None


def _credential_for_grant() -> sa.ColumnElement[Any]:
    """The grant's own credential, else the secret's first credential."""
    first = (
        sa.select(credentials.c.id)
        .where(credentials.c.managed_secret_id == managed_secrets.c.id)
        .order_by(credentials.c.created_at, credentials.c.id)
        .limit(1)
        .correlate(managed_secrets)
        .scalar_subquery()
    )
    return sa.func.coalesce(grants.c.credential_id, first)


def _resolve_base() -> sa.Select[Any]:
    """Grant, secret and credential in one round trip (the retrieval hot path)."""
    return (
        sa.select(
            grants.c.id,
            grants.c.status,
            grants.c.expires_at,
            grants.c.principal_type,
            grants.c.principal_id,
            grants.c.idp_id,
            grants.c.label,
            grants.c.account_identifier,
            grants.c.last_used_at,
            grants.c.kind,
            grants.c.oauth_provider_id,
            grants.c.scopes,
            grants.c.api_base_url,
            grants.c.scope_mismatch_at,
            grants.c.scope_mismatch,
            sa.func.coalesce(managed_secrets.c.slug, oauth_providers.c.provider_id).label("slug"),
            managed_secrets.c.injection,
            managed_secrets.c.allowed_hosts,
            credentials.c.id.label("cred_id"),
            credentials.c.secret_ct,
            credentials.c.generation,
        )
        .outerjoin(managed_secrets, managed_secrets.c.id == grants.c.managed_secret_id)
        .outerjoin(oauth_providers, oauth_providers.c.id == grants.c.oauth_provider_id)
        .outerjoin(credentials, credentials.c.id == _credential_for_grant())
        .where(grants.c.app_id == sa.bindparam("app_id"))
    )


# Built once: reusing the statement object skips expression building and cache-key work.
_BY_GRANT_ID = PreparedRead(_resolve_base().where(grants.c.id == sa.bindparam("grant_id")))

_CANDIDATES = 101


def _optional(column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
    """``column = :name`` when the parameter is given, no condition when it is NULL."""
    param = sa.bindparam(name, type_=sa.String)
    return sa.or_(param.is_(None), column == param)


_BY_PROVIDER = PreparedRead(
    _resolve_base()
    .where(
        sa.or_(
            managed_secrets.c.slug == sa.bindparam("provider"),
            oauth_providers.c.provider_id == sa.bindparam("provider"),
        ),
        grants.c.status == "active",
        # Users' grants only for the calling user; group and system rows are sifted in Python.
        sa.or_(
            grants.c.principal_type != "user",
            grants.c.principal_id == sa.bindparam("subject", type_=sa.String),
        ),
        _optional(grants.c.label, "label"),
        _optional(grants.c.account_identifier, "account"),
    )
    .order_by(grants.c.created_at, grants.c.id)
    .limit(_CANDIDATES)
)


def system_grant_mismatch(grant_id: str | None = None) -> VaultError:
    return VaultError(
        ErrorCode.SYSTEM_GRANT_USER_TOKEN_MISMATCH,
        "This grant belongs to the app itself, not to an end user, and a user token was "
        "sent; call without user_token to use the app's own grant.",
        grant_id=grant_id,
    )


def usable_by(row: Any, identity: Identity | None) -> bool:
    """Whether the caller may use the grant: anything of the app without a user token (the
    app's own authority, as with ``grant_id``); with one, only the user's own grants and
    those of groups the token says they are in."""
    if identity is None:
        return True
    if row.idp_id is not None and row.idp_id != identity.idp_id:
        # Made under an identity provider the app has since replaced: its subjects are
        # another issuer's, even when the strings are equal.
        return False
    if row.principal_type == "user":
        return bool(row.principal_id == identity.subject)
    if row.principal_type == "group":
        return row.principal_id in identity.groups
    return False


async def _resolve(
    conn: Conn, app: App, req: TokenRequest, identity: Identity | None, now: datetime
) -> Any:
    """The one grant the request names: by ``grant_id``, else by provider (identity mode).

    Only the reads happen here, one awaited statement per lookup (two when the candidates
    overflow); which row the caller may use is decided by the pure helpers below.
    """
    if req.grant_id is not None:
        row = await _BY_GRANT_ID.first(conn, {"app_id": app.id, "grant_id": req.grant_id})
        return _visible(row, req.grant_id, identity)
    # Identity mode: the end user's grants (and their groups') for this provider, or without
    # a user token the app's own (system) grant. One prepared statement serves every shape
    # (label/account optional); which principals may use a row is decided by usable_by.
    params = _provider_params(app, req, identity)
    raw = await _BY_PROVIDER.many(conn, params, _CANDIDATES)
    if len(raw) == _CANDIDATES:
        # Many grants on this provider (group or system ones the caller may not use): ask
        # the database for exactly the usable ones instead of sifting a truncated list.
        raw = list((await conn.execute(_exact_candidates(identity), params)).all())
    return _choose(raw, req, identity, now)


def _visible(row: Any, grant_id: str, identity: Identity | None) -> Any:
    """The grant named by id, if this caller may know it exists; else the denial."""
    if row is None:
        raise NotFound("grant", grant_id, ErrorCode.GRANT_NOT_FOUND)
    if identity is not None and not usable_by(row, identity):
        if row.principal_type == "system":
            raise system_grant_mismatch(row.id)
        # Another user's grant answers exactly like an unknown one.
        raise NotFound("grant", grant_id, ErrorCode.GRANT_NOT_FOUND)
    return row


def _provider_params(app: App, req: TokenRequest, identity: Identity | None) -> dict[str, Any]:
    """Bind values for ``_BY_PROVIDER``; a NULL label or account means "any"."""
    return {
        "app_id": app.id,
        "provider": req.provider_id,
        "subject": identity.subject if identity is not None else None,
        "label": req.label,
        "account": req.account,
    }


def _exact_candidates(identity: Identity | None) -> sa.Select[Any]:
    """``_BY_PROVIDER`` narrowed in SQL to the principals the caller may use: built per
    call (the group list varies) and only when the prepared read's candidates overflowed."""
    return _BY_PROVIDER.statement.where(
        grants.c.principal_type == "system"
        if identity is None
        else sa.or_(
            grants.c.principal_type.in_(["user", "system"]),
            grants.c.principal_id.in_(sorted(identity.groups) or [""]),
        )
    )


def _choose(raw: list[Any], req: TokenRequest, identity: Identity | None, now: datetime) -> Any:
    """Exactly one active grant the caller may use, else the denial that says what to pass
    or create. Without a user token only the app's own (system) grants count."""
    found = [r for r in raw if grant_status(r, now) == "active"]
    if identity is None:
        found = [r for r in found if r.principal_type == "system"]
    rows = [r for r in found if usable_by(r, identity)]
    if not rows:
        raise _no_usable_grant(req, identity, found)
    if len(rows) > 1:
        raise _ambiguous_grant(req, rows)
    return rows[0]


def _no_usable_grant(req: TokenRequest, identity: Identity | None, found: list[Any]) -> VaultError:
    """Nothing usable: a user token sent where only the app's own grant exists is named as
    such, so the caller drops the token instead of connecting an account for nothing."""
    if identity is not None and any(r.principal_type == "system" for r in found):
        return system_grant_mismatch()
    who = "this user" if identity is not None else "this app (system)"
    return VaultError(
        ErrorCode.GRANT_NOT_FOUND,
        f"No active grant of {who} for {req.provider_id!r}; connect the account "
        "(create_connect_session) or create a grant.",
        provider_id=req.provider_id,
    )


def _ambiguous_grant(req: TokenRequest, rows: list[Any]) -> VaultError:
    """Several usable grants: name (up to 50 of) them so the caller can pick one."""
    return VaultError(
        ErrorCode.AMBIGUOUS_GRANT,
        f"Several grants match {req.provider_id!r}; pass account=, label= or grant_id.",
        provider_id=req.provider_id,
        account_identifiers=sorted({r.account_identifier for r in rows if r.account_identifier}),
        account_was_provided=req.account is not None,
        grant_ids=[r.id for r in rows[:50]],
        candidates=[
            {
                "grant_id": r.id,
                "label": r.label,
                "account_identifier": r.account_identifier,
                "account_display_name": None,
            }
            for r in rows[:50]
        ],
        candidates_truncated=len(rows) > 50,
    )


@dataclass(frozen=True)
class PendingNonce:
    """A nonce to claim in the same transaction as the audit row (see ``api.deps``)."""

    key_id: str
    nonce: str
    key_last_used_at: datetime | None = None


async def retrieve(
    vault: Vault,
    app: App,
    actor: dict[str, Any],
    req: TokenRequest,
    *,
    nonce: PendingNonce | None = None,
) -> dict[str, Any]:
    """Return the token response for ``req`` or raise the typed denial (after auditing it).

    The hot path: every read, the decryption, an OAuth refresh and the audit write are
    awaited here and only here (an awaited helper would add a coroutine per request); the
    checks, the decisions and the answer are the plain functions that follow.
    """
    row: Any = None
    audit = _audit_fields(app, actor, req)
    try:
        identity = None
        if req.user_token is not None:
            identity = await resolve_user(vault, app.id, req.user_token)
        async with vault.db.read() as conn:
            now = vault.clock.now()
            row = await _resolve(conn, app, req, identity, now)
            _check_status(row, now)
            cfg = None
            if row.kind == "oauth":
                cfg = await oauth_configs.get_config_by_id(conn, app.id, row.oauth_provider_id)
            # The app's compiled policies: a dictionary read while they are unchanged, a
            # load (inside this read) on the first call after a change on any replica.
            entry = vault.policies.current(app.id, app.policy_generation)
            if entry is None:
                entry = await policy_service.reload(vault, conn, app.id)
            decision = _authorize(vault, app, req, row, cfg, entry, identity, now)
            if cfg is None:
                _check_credential_set(row)
                try:
                    plaintext = await vault.barrier.decrypt_fresh(
                        conn, row.secret_ct, credential_aad(app.id, row.cred_id)
                    )
                except BarrierError as exc:
                    raise _unreadable(exc, row.cred_id) from None
        if cfg is not None:
            # Outside the read transaction: a refresh talks to the provider.
            token = await oauth_tokens.access_token(vault, cfg, row.id)
            generation, fields = token.generation, _oauth_fields(token, vault.clock)
        else:
            generation = row.generation
            fields = token_fields(vault.injection_spec(row.injection), json.loads(plaintext))
    except VaultError as denial:
        await _audit_denial(vault, audit, row, denial, nonce)
        raise
    record = _success_record(audit, row, decision, generation)
    stale = needs_touch(row.last_used_at, now)
    if nonce is None:
        refusal = None
        async with vault.db.write() as conn:
            if decision.charges:
                [refusal] = await apply_charges(conn, [decision.charges], now)
            if refusal is None:
                await vault.audit.append(conn, [record])
                if stale:
                    await conn.execute(TOUCH_GRANT, {"gid": row.id, "used_at": now})
        if refusal is not None:
            await _audit_denial(vault, audit, row, refusal, None)
            raise refusal
    else:
        try:
            await vault.retrieval_writer.commit(
                _retrieval_write(vault, row, nonce, record, stale, now, decision)
            )
        except Replayed:
            raise replayed_error() from None
        # A VaultError here means the grant or key was revoked between the checks above and
        # the commit: refused, and audited as denied in that same transaction.
    return _token_answer(fields, row, generation)


def _audit_fields(app: App, actor: dict[str, Any], req: TokenRequest) -> dict[str, Any]:
    """What every retrieval's audit row says, allowed or denied (the URL redacted)."""
    return {
        "chain": app.id,
        "event": AuditEvent.CREDENTIAL_RETRIEVED,
        "actor": actor,
        "reason": req.reason,
        "method": req.method,
        "url": redact_url(req.url),
    }


def _check_status(row: Any, now: datetime) -> None:
    """A revoked or expired grant is refused before anything else is looked at."""
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


def _authorize(
    vault: Vault,
    app: App,
    req: TokenRequest,
    row: Any,
    cfg: oauth_configs.ProviderConfig | None,
    entry: AppPolicies,
    identity: Identity | None,
    now: datetime,
) -> Decision:
    """The destination must be one of the grant's hosts, then the app's policies decide.

    An OAuth grant's hosts come from its provider (or the API origin named at connect
    time); a managed secret's are its own. Refusals raise; the allowing decision (with the
    counter charges the write must apply) is kept for the audit row.
    """
    if cfg is not None:
        allowed_hosts = oauth_configs.api_hosts(cfg, row.api_base_url)
    else:
        allowed_hosts = row.allowed_hosts
    host = check_destination(
        req.url, allowed_hosts, allow_http_hosts=vault.settings.allow_http_hosts
    )
    del host  # checked; policies see the whole URL
    if not entry.compiled and not entry.broken:
        return _NO_POLICY
    facts = policy_service.call_facts(
        app.id,
        row,
        identity,
        method=req.method,
        url=req.url,
        at=now,
        caller_ip=policy_service.caller_address(req.caller_ip),
    )
    decision = decide(entry, facts)
    if not decision.allowed:
        raise policy_service.denial_error(decision)
    return decision


_NO_POLICY = Decision(allowed=True, reason="no_policy_applies")


def _check_credential_set(row: Any) -> None:
    """A managed secret without a credential yet has nothing to decrypt."""
    if row.cred_id is None:
        raise VaultError(
            ErrorCode.CREDENTIAL_NOT_SET,
            f"The secret {row.slug!r} has no credential yet; set one with "
            "`grantvault secrets set-credential`.",
        )


def _unreadable(exc: BarrierError, credential_id: str) -> VaultError:
    """The denial for a credential the barrier would not open, logged for the operator: a
    tampered ciphertext, or a master key that a rotation retired."""
    if isinstance(exc, CorruptCiphertext):
        log.error("stored credential failed authentication", extra={"credential_id": credential_id})
        return VaultError(
            ErrorCode.CREDENTIAL_CORRUPT,
            "The stored credential failed its integrity check and was not used; "
            "set it again and tell your operator.",
        )
    log.error("barrier sealed: the keyring no longer opens with this master key")
    return VaultError(
        ErrorCode.SEALED,
        "This server's master key was retired by a key rotation; restart it with "
        "the current master key.",
    )


def _oauth_fields(token: oauth_tokens.AccessToken, clock: Clock) -> dict[str, Any]:
    """The token response's credential part for an OAuth grant: always a Bearer header, and
    the access token's own expiry (seconds counted on the vault's clock) when known."""
    fields: dict[str, Any] = {
        "access_token": token.value,
        "injection_header": "Authorization",
        "injection_format": "Bearer {token}",
    }
    if token.expires_at is not None:
        fields["expires_at"] = iso(token.expires_at)
        fields["expires_in"] = max(0, int((token.expires_at - clock.now()).total_seconds()))
    if token.retry_info is not None:
        fields["retry_info"] = token.retry_info
    return fields


def _success_record(
    audit: dict[str, Any], row: Any, decision: Decision, generation: str
) -> AuditRecord:
    """The audit row of an allowed retrieval; no token leaves unless it is written."""
    return AuditRecord(
        outcome=Outcome.SUCCESS,
        principal=principal_label(row.principal_type, row.principal_id),
        grant_id=row.id,
        provider_id=row.slug,
        details={
            "policy": decision.reason,
            # "name@version": compact, since every applying policy is listed on every row.
            "policies": [f"{n}@{v}" for n, v in decision.applied],
            "token_generation": generation,
        }
        if decision.applied
        else {"policy": decision.reason, "token_generation": generation},
        **audit,
    )


def _retrieval_write(
    vault: Vault,
    row: Any,
    nonce: PendingNonce,
    record: AuditRecord,
    stale: bool,
    now: datetime,
    decision: Decision,
) -> RetrievalWrite:
    """The group-committed write of a signed retrieval: the nonce claim, the audit row and
    the last-used touches land in one transaction (see ``services.group_commit``)."""
    return RetrievalWrite(
        grant_id=row.id,
        key_id=nonce.key_id,
        nonce=nonce.nonce,
        nonce_expires_at=nonce_expiry(now, vault.settings.clock_skew_seconds),
        record=record,
        touch_grant=row.id if stale else None,
        touch_key=needs_touch(nonce.key_last_used_at, now),
        used_at=now,
        charges=decision.charges,
    )


def _token_answer(fields: dict[str, Any], row: Any, generation: str) -> dict[str, Any]:
    """The ``/sdk/token`` response body: the credential fields plus the grant's facts."""
    return {
        **fields,
        "token_type": "Bearer",
        "grant_expires_at": iso(row.expires_at),
        "scopes": list(row.scopes or []),
        "grant_id": row.id,
        "provider_id": row.slug,
        "token_generation": generation,
        # A standing report (grant.scope_mismatch_reported) tells the app to ask the user to
        # reconnect with more scopes before the provider refuses the call.
        "scope_mismatch": scope_mismatch_open(row),
    }


async def credential_strings(vault: Vault, conn: Conn, app: App, grant_id: str) -> list[str]:
    """Every string a grant's credential could appear as in a request or response body.

    The raw field values and the injected forms (a Basic value is base64), longest first so
    that scrubbing replaces a whole token before any part of it.
    """
    row = await _BY_GRANT_ID.first(conn, {"app_id": app.id, "grant_id": grant_id})
    if row is not None and row.kind == "oauth":
        return await oauth_tokens.token_strings(vault, conn, app.id, grant_id)
    if row is None or row.cred_id is None:
        return []
    try:
        values = json.loads(
            await vault.barrier.decrypt_fresh(
                conn, row.secret_ct, credential_aad(app.id, row.cred_id)
            )
        )
    except BarrierError:
        return []
    fields = token_fields(vault.injection_spec(row.injection), values)
    found = {str(v) for v in values.values()} | {fields["access_token"]}
    found |= set((fields.get("additional_credentials") or {}).values())
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def policy_details(error: VaultError) -> dict[str, Any]:
    """The policy, version and rule behind a policy refusal, for its audit row."""
    return {k: error.extra[k] for k in ("policy", "policy_version", "rule") if k in error.extra}


def replayed_error() -> VaultError:
    return VaultError(
        ErrorCode.REPLAYED_REQUEST, "This request was already received (nonce reused)."
    )


async def _audit_denial(
    vault: Vault, audit: dict[str, Any], row: Any, denial: VaultError, nonce: PendingNonce | None
) -> None:
    """Record a refused retrieval. Unknown grants have no owner row but still leave a trace."""
    if denial.code in {ErrorCode.STORAGE_UNAVAILABLE}:
        return
    try:
        async with vault.db.write() as conn:
            if nonce is not None and not await claim_nonce_in(
                conn, vault, nonce.key_id, nonce.nonce, vault.clock.now()
            ):
                raise replayed_error()
            await vault.audit.append(
                conn,
                [
                    AuditRecord(
                        outcome=Outcome.DENIED,
                        principal=principal_label(row.principal_type, row.principal_id)
                        if row
                        else None,
                        grant_id=row.id if row is not None else None,
                        provider_id=row.slug if row is not None else None,
                        details={
                            "error": denial.code.value,
                            "caller_reason": audit["reason"],
                            **policy_details(denial),
                        },
                        **{**audit, "reason": denial.code.value},
                    )
                ],
            )
    except Exception as exc:
        if isinstance(exc, VaultError) and exc.code is ErrorCode.REPLAYED_REQUEST:
            raise
        log.warning("could not audit a denied retrieval", extra={"error_code": denial.code.value})
