"""Operator portal sessions (issue 12): who is signed in to ``/portal/`` in which browser.

* **The id** is 32 random bytes (URL-safe base64) that only the browser's cookie holds; the
  ``operator_sessions`` table keeps its SHA-256, so a database reader cannot sign in with it.
* **Two clocks.** A session ends after ``portal_idle_minutes`` without a request (idle) and
  ``portal_session_hours`` after it began however busy it was (absolute). Both read the vault
  clock, so tests advance time instead of sleeping.
* **Second factor.** A password that checked for an operator with TOTP opens a *pending*
  session (a few minutes) that allows only the TOTP step; the code then replaces it with a
  full session under a new id (no id survives a change of privilege).
* **Dead sessions.** Revoked (signed out), idle, expired, of a disabled or deleted operator,
  or older than the operator's ``sessions_valid_after`` ("sign out everywhere", a password
  change, disabling): each is refused with the reason the sign-in page shows.
* **Sudo mode.** Dangerous actions (minting or revoking API keys, managing operators) need
  the password or a TOTP code re-entered within :data:`SUDO_WINDOW` (:func:`sudo_active`,
  :func:`reauthenticate`); signing in counts as entering it. An operator who signs in only by
  single sign-on has no password or code here to re-enter: the IdP is their authenticator,
  and a fresh round-trip to it would usually pass silently on the IdP's own session, so it
  would prove nothing more than the live session does; their sessions are always in sudo
  mode (the IdP's session and this session's timeouts bound them).
* **Audit.** Signing in is audited by ``services.operators``; signing out and signing out
  everywhere are audited here (``operator.signed_out``), never with the session id.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import pyotp
import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import SYSTEM_CHAIN, AuditEvent, Outcome
from grantvault_server.errors import VaultError
from grantvault_server.services import operators as operator_service
from grantvault_server.services.operators import Operator, Principal
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import operator_sessions, operators

#: How long the password step waits for its second factor.
PENDING_TTL = timedelta(minutes=5)
#: ``last_seen_at`` is written at most this often (a page view is not a write every time);
#: the idle timeout is therefore exact to within this.
TOUCH_EVERY = timedelta(seconds=30)
#: Longest session id accepted from a cookie (ids are 43 characters).
MAX_ID = 128
#: How long a re-entered password or code unlocks dangerous actions.
SUDO_WINDOW = timedelta(minutes=10)

Ended = Literal["missing", "unknown", "revoked", "idle", "expired", "signed_out", "disabled"]

#: What the sign-in page says about a session that ended.
ENDED_MESSAGES: dict[str, str] = {
    "idle": "Your session ended after a period without activity. Sign in again.",
    "expired": "Your session reached its maximum length. Sign in again.",
    "signed_out": "You were signed out everywhere (or your account changed). Sign in again.",
    "revoked": "You signed out.",
    "disabled": "This operator account is disabled. Ask an owner.",
}


class SessionEnded(Exception):
    """No live session: the cookie is missing, unknown, or names a session that ended."""

    def __init__(self, reason: Ended) -> None:
        super().__init__(reason)
        self.reason: Ended = reason


@dataclass(frozen=True)
class PortalSession:
    id_hash: str
    operator: Operator
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    pending_mfa: bool
    reauthenticated_at: datetime | None = None

    @property
    def principal(self) -> Principal:
        """The operator acting through the portal, with the operator's own authority."""
        op = self.operator
        return Principal(
            operator=op, role=op.role, apps=op.apps, via="portal", session=self.id_hash
        )


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def idle_timeout(vault: Vault) -> timedelta:
    return timedelta(minutes=vault.settings.portal_idle_minutes)


def absolute_timeout(vault: Vault) -> timedelta:
    return timedelta(hours=vault.settings.portal_session_hours)


def _actor(op: Operator) -> dict[str, Any]:
    return {"type": "operator_account", "operator_id": op.id, "name": op.name, "via": "portal"}


async def start(
    vault: Vault, operator: Operator, *, pending_mfa: bool
) -> tuple[str, PortalSession]:
    """A new session for ``operator``: the id for the cookie (shown nowhere else) and the row.

    Also drops the operator's sessions that already ended, so the table stays small.
    """
    now = vault.clock.now()
    session_id = secrets.token_urlsafe(32)
    id_hash = _sha256(session_id)
    expires_at = now + (PENDING_TTL if pending_mfa else absolute_timeout(vault))
    async with vault.db.write() as conn:
        await conn.execute(
            sa.delete(operator_sessions).where(
                operator_sessions.c.operator_id == operator.id,
                sa.or_(
                    operator_sessions.c.revoked_at.is_not(None),
                    operator_sessions.c.expires_at <= now,
                ),
            )
        )
        await conn.execute(
            sa.insert(operator_sessions).values(
                id_hash=id_hash,
                operator_id=operator.id,
                created_at=now,
                last_seen_at=now,
                expires_at=expires_at,
                pending_mfa=pending_mfa,
                reauthenticated_at=None if pending_mfa else now,
            )
        )
    return session_id, PortalSession(
        id_hash, operator, now, now, expires_at, pending_mfa, None if pending_mfa else now
    )


async def resolve(vault: Vault, presented: str | None) -> PortalSession:
    """The live session behind a cookie value, or :class:`SessionEnded` saying why not.

    Checked on every request against the operator's current row, so disabling an operator
    or signing out everywhere ends their sessions on the very next request on every replica.
    """
    if not presented or len(presented) > MAX_ID:
        raise SessionEnded("missing")
    now = vault.clock.now()
    id_hash = _sha256(presented)
    async with vault.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(
                    operator_sessions.c.created_at.label("session_created_at"),
                    operator_sessions.c.last_seen_at,
                    operator_sessions.c.expires_at,
                    operator_sessions.c.pending_mfa,
                    operator_sessions.c.revoked_at,
                    operator_sessions.c.reauthenticated_at,
                    operators,
                )
                .join(operators, operators.c.id == operator_sessions.c.operator_id)
                .where(operator_sessions.c.id_hash == id_hash)
            )
        ).first()
    if row is None:
        raise SessionEnded("unknown")
    op = operator_service.operator_from_row(row)  # the same reading of the row as everywhere
    reason = _dead(vault, row, op, now)
    if reason is not None:
        if reason in ("idle", "expired") and row.revoked_at is None:
            await _revoke(vault, id_hash, now)
        raise SessionEnded(reason)
    last_seen: datetime = row.last_seen_at
    if now - last_seen >= TOUCH_EVERY:
        async with vault.db.write() as conn:
            await conn.execute(
                sa.update(operator_sessions)
                .where(operator_sessions.c.id_hash == id_hash)
                .values(last_seen_at=now)
            )
        last_seen = now
    return PortalSession(
        id_hash,
        op,
        row.session_created_at,
        last_seen,
        row.expires_at,
        bool(row.pending_mfa),
        row.reauthenticated_at,
    )


def _dead(vault: Vault, row: Any, op: Operator, now: datetime) -> Ended | None:
    """Why the session in ``row`` is no longer usable (``None``: it is)."""
    if op.disabled:
        return "disabled"
    if op.sessions_valid_after is not None and row.session_created_at < op.sessions_valid_after:
        return "signed_out"
    if row.revoked_at is not None:
        return "revoked"
    if now >= row.expires_at:
        return "expired"
    if now - row.last_seen_at >= idle_timeout(vault):
        return "idle"
    return None


async def _revoke(vault: Vault, id_hash: str, now: datetime) -> None:
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(operator_sessions)
            .where(operator_sessions.c.id_hash == id_hash, operator_sessions.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )


async def complete_second_factor(vault: Vault, pending: PortalSession) -> tuple[str, PortalSession]:
    """The second factor checked: end the pending session and open a full one (new id)."""
    await _revoke(vault, pending.id_hash, vault.clock.now())
    return await start(vault, pending.operator, pending_mfa=False)


async def _audit_signed_out(vault: Vault, op: Operator, scope: str) -> None:
    async with vault.db.write() as conn:
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=SYSTEM_CHAIN,
                    event=AuditEvent.OPERATOR_SIGNED_OUT,
                    outcome=Outcome.SUCCESS,
                    actor=_actor(op),
                    details={"operator_id": op.id, "scope": scope},
                    occurred_at=vault.clock.now(),
                )
            ],
        )


async def sign_out(vault: Vault, session: PortalSession) -> None:
    """End this session (this browser only)."""
    await _revoke(vault, session.id_hash, vault.clock.now())
    if not session.pending_mfa:
        await _audit_signed_out(vault, session.operator, "session")


async def sign_out_everywhere(vault: Vault, operator_id: str) -> Operator:
    """End every portal session of the operator, and every personal token made before now
    (``sessions_valid_after``, which both check on every request)."""
    now = vault.clock.now()
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(operators)
            .where(operators.c.id == operator_id)
            .values(sessions_valid_after=now)
        )
        await conn.execute(
            sa.update(operator_sessions)
            .where(
                operator_sessions.c.operator_id == operator_id,
                operator_sessions.c.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
    op = await operator_service.get_operator(vault, operator_id)
    await _audit_signed_out(vault, op, "everywhere")
    return op


async def pending_totp_uri(vault: Vault, operator_id: str) -> str | None:
    """The provisioning URI of an enrolment begun but not confirmed (to show the enrolment
    page again after a mistyped code); ``None`` once enrolled or before it began."""
    async with vault.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(operators.c.id, operators.c.name, operators.c.totp_secret_ct).where(
                    operators.c.id == operator_id, operators.c.totp_enabled_at.is_(None)
                )
            )
        ).first()
        seed = await operator_service.totp_seed(vault, conn, row) if row is not None else None
    if row is None or seed is None:
        return None
    return pyotp.TOTP(seed).provisioning_uri(name=row.name, issuer_name="Grantvault")


# --------------------------------------------------------------------------- sudo mode


def sso_only(op: Operator) -> bool:
    """Signs in only by single sign-on: no password and no code to re-enter here."""
    return op.sso_subject is not None and not op.has_password and not op.totp_enabled


def sudo_active(vault: Vault, session: PortalSession) -> bool:
    """May this session take a dangerous action now (password or code re-entered within
    :data:`SUDO_WINDOW`, or an SSO-only operator)?"""
    if session.pending_mfa:
        return False
    if sso_only(session.operator):
        return True
    at = session.reauthenticated_at
    return at is not None and vault.clock.now() - at < SUDO_WINDOW


def sudo_until(vault: Vault, session: PortalSession) -> datetime | None:
    at = session.reauthenticated_at
    return at + SUDO_WINDOW if at is not None and sudo_active(vault, session) else None


async def reauthenticate(
    vault: Vault,
    session: PortalSession,
    *,
    password: str | None = None,
    code: str | None = None,
    address: str | None = None,
) -> PortalSession:
    """Check the operator's password (or TOTP / recovery code) again and open the sudo
    window. Failures count towards the account's lockout like a failed sign-in."""
    op = session.operator
    now = vault.clock.now()
    if code:
        if not op.totp_enabled:
            raise VaultError(ErrorCode.LOGIN_FAILED, "This account has no second factor.")
        await operator_service.verify_second_factor(vault, op.id, code, address=address)
    elif password:
        async with vault.db.read() as conn:
            row = (await conn.execute(sa.select(operators).where(operators.c.id == op.id))).first()
        if row is None:
            raise VaultError(ErrorCode.LOGIN_FAILED, operator_service.LOGIN_FAILED_MESSAGE)
        if row.locked_until is not None and row.locked_until > now:
            raise operator_service.locked_error(row.locked_until, now)
        if not operator_service.password_matches(row.password_hash, password):
            await operator_service.record_failure(vault, row, now, address, "reauthenticate")
            raise VaultError(ErrorCode.LOGIN_FAILED, operator_service.LOGIN_FAILED_MESSAGE)
        async with vault.db.write() as conn:
            await conn.execute(
                sa.update(operators)
                .where(operators.c.id == op.id)
                .values(failed_logins=0, locked_until=None)
            )
            await vault.audit.append(
                conn,
                [
                    AuditRecord(
                        chain=SYSTEM_CHAIN,
                        event=AuditEvent.OPERATOR_SIGNED_IN,
                        outcome=Outcome.SUCCESS,
                        actor=_actor(op),
                        details={"operator_id": op.id, "method": "password", "step": "sudo"},
                        occurred_at=now,
                    )
                ],
            )
    else:
        raise VaultError(ErrorCode.LOGIN_FAILED, "Enter your password or a code.")
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(operator_sessions)
            .where(operator_sessions.c.id_hash == session.id_hash)
            .values(reauthenticated_at=now)
        )
    return PortalSession(
        session.id_hash,
        op,
        session.created_at,
        session.last_seen_at,
        session.expires_at,
        session.pending_mfa,
        now,
    )
