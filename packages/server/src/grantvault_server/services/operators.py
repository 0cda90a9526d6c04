"""Operators: the people who run the vault (issue 12), apart from the apps' end users.

* **Roles.** ``owner`` may do everything, including managing operators; ``admin`` everything
  inside the apps it is granted (or every app); ``auditor`` reads, exports and verifies, and
  changes nothing. A personal token can carry less than its operator (a lower role, fewer
  apps), never more: :func:`authorize` checks the token's grant and the operator's, so
  demoting an operator shrinks every token they made at once.
* **Passwords** are hashed with Argon2id (argon2-cffi, RFC 9106 parameters), at least
  12 characters, and refused when they are on a short list of common passwords or contain
  the operator's name. A second factor (TOTP, RFC 6238, through pyotp) is optional; its seed
  is sealed by the barrier and recovery codes are stored as SHA-256 only.
* **Sign-in failures** count per account: after five in a row the account waits
  (``account_locked`` with ``Retry-After``, doubling from one minute up to an hour) until the
  wait passes or an owner unlocks it. Per-address limits are the rate limiter's (the portal's
  login is an unauthenticated surface).
* **Tokens** (``gvat_`` + 32 random bytes, base62) and portal session ids are stored as
  SHA-256 only; a token is shown once. Disabling an operator, or "sign out everywhere"
  (``sessions_valid_after``), kills every session and token issued before it.
* Every change is audited in the ``system`` chain with the acting operator as the actor.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, Literal

import pyotp
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.exc import IntegrityError

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import SYSTEM_CHAIN, AuditEvent, Outcome
from grantvault_server.crypto.barrier import aad_for
from grantvault_server.errors import InvalidInput, NotFound, VaultError
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn
from grantvault_server.storage.tables import (
    NO_APP,
    apps as apps_table,
    operator_tokens,
    operators,
)
from grantvault_server.timefmt import iso

Role = Literal["owner", "admin", "auditor"]
ROLES: tuple[Role, ...] = ("owner", "admin", "auditor")
#: What each role may do: read (list, show, audit export and verify), write (change app
#: objects), owner (operators and vault-wide settings).
_RANK = {"auditor": 0, "admin": 1, "owner": 2}
Permission = Literal["read", "write", "owner"]
_NEEDS = {"read": 0, "write": 1, "owner": 2}

NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
MIN_PASSWORD = 12
MAX_PASSWORD = 256
TOKEN_PREFIX = "gvat_"
#: Failed sign-ins in a row before an account waits.
LOCK_AFTER = 5
LOCK_FIRST = timedelta(minutes=1)
LOCK_MAX = timedelta(hours=1)
RECOVERY_CODES = 10

_hasher = PasswordHasher()  # Argon2id, RFC 9106 second recommended parameters


def _common_passwords() -> frozenset[str]:
    text = resources.files("grantvault_server.services").joinpath("common_passwords.txt")
    return frozenset(
        line.strip().lower()
        for line in text.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )


COMMON_PASSWORDS = _common_passwords()


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Operator:
    id: str
    name: str
    role: Role
    #: App ids the operator is limited to; ``None``: every app.
    apps: frozenset[str] | None
    has_password: bool
    totp_enabled: bool
    sso_subject: str | None
    disabled: bool
    locked_until: datetime | None
    created_at: datetime
    last_login_at: datetime | None
    sessions_valid_after: datetime | None = None

    def public(self) -> dict[str, Any]:
        """What the CLI and the admin API show: never a hash, a seed or a code."""
        return {
            "operator_id": self.id,
            "name": self.name,
            "role": self.role,
            "apps": sorted(self.apps) if self.apps is not None else None,
            "password": self.has_password,
            "totp": self.totp_enabled,
            "sso": self.sso_subject is not None,
            "disabled": self.disabled,
            "locked_until": iso(self.locked_until) if self.locked_until else None,
            "created_at": iso(self.created_at),
            "last_login_at": iso(self.last_login_at) if self.last_login_at else None,
        }


def operator_from_row(row: Any) -> Operator:
    return Operator(
        id=row.id,
        name=row.name,
        role=row.role,
        apps=frozenset(row.apps) if row.apps is not None else None,
        has_password=row.password_hash is not None,
        totp_enabled=row.totp_enabled_at is not None,
        sso_subject=row.sso_subject,
        disabled=row.disabled_at is not None,
        locked_until=row.locked_until,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
        sessions_valid_after=row.sessions_valid_after,
    )


@dataclass(frozen=True)
class Principal:
    """Who is acting through the admin API or the portal, and with how much authority."""

    operator: Operator
    role: Role
    apps: frozenset[str] | None
    via: str  # "token" | "portal" | "cli"
    token_id: str | None = None
    session: str | None = field(default=None, repr=False)

    @property
    def actor(self) -> dict[str, Any]:
        """The audit actor: a named operator account (issue 12's actor kind)."""
        actor: dict[str, Any] = {
            "type": "operator_account",
            "operator_id": self.operator.id,
            "name": self.operator.name,
            "role": self.role,
            "via": self.via,
        }
        if self.token_id is not None:
            actor["token_id"] = self.token_id
        return actor

    def can_see_app(self, app_id: str) -> bool:
        return self.apps is None or app_id in self.apps


def _narrower(
    role: Role, apps: frozenset[str] | None, cap_role: Role, cap_apps: frozenset[str] | None
) -> tuple[Role, frozenset[str] | None]:
    """A grant limited by another: the lower role, the intersection of app scopes."""
    lower: Role = role if _RANK[role] <= _RANK[cap_role] else cap_role
    if apps is None:
        return lower, cap_apps
    if cap_apps is None:
        return lower, apps
    return lower, apps & cap_apps


def authorize(principal: Principal, permission: Permission, app_id: str | None = None) -> None:
    """Refuse (403 ``forbidden``) what the principal's role or app scope does not allow.

    App-scoped principals cannot act on vault-wide objects (``app_id=None`` with ``write``)
    and see other apps' objects as unknown (the caller turns that into a 404 before this).
    """
    if _RANK[principal.role] < _NEEDS[permission]:
        raise VaultError(
            ErrorCode.FORBIDDEN,
            f"The {principal.role} role may not do this (it needs "
            f"{'an owner' if permission == 'owner' else 'an admin or owner'}).",
        )
    if app_id is not None and not principal.can_see_app(app_id):
        raise VaultError(ErrorCode.FORBIDDEN, "This operator may not act on that app.")
    if app_id is None and permission != "read" and principal.apps is not None:
        raise VaultError(
            ErrorCode.FORBIDDEN,
            "An operator limited to some apps may not change vault-wide settings.",
        )


# --------------------------------------------------------------------------- passwords


def check_password(password: str, name: str) -> None:
    """Refuse a weak password with a message that says how to pick a better one."""
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"The password is too short: use at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(f"The password is longer than {MAX_PASSWORD} characters.")
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS or lowered.rstrip("0123456789!") in COMMON_PASSWORDS:
        raise InvalidInput("That password is on the list of common passwords; choose another.")
    if name.lower() in lowered:
        raise InvalidInput("The password may not contain the operator's name.")
    if len(set(password)) < 5:
        raise InvalidInput("The password repeats too few characters; choose a less regular one.")


def _hash_password(password: str) -> str:
    return _hasher.hash(password)


def _verify_password(stored: str | None, password: str) -> bool:
    if stored is None:
        # Same work as a real check, so timing does not tell which accounts have passwords.
        _hasher.hash(password)
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# --------------------------------------------------------------------------- reading


async def _row(conn: Conn, name_or_id: str) -> Any:
    return (
        await conn.execute(
            sa.select(operators).where(
                sa.or_(operators.c.name == name_or_id, operators.c.id == name_or_id)
            )
        )
    ).first()


async def get_operator(vault: Vault, name_or_id: str) -> Operator:
    async with vault.db.read() as conn:
        row = await _row(conn, name_or_id)
    if row is None:
        raise NotFound("operator", name_or_id, hint="See `grantvault operators list`.")
    return operator_from_row(row)


async def list_operators(vault: Vault) -> list[Operator]:
    async with vault.db.read() as conn:
        rows = await conn.execute(sa.select(operators).order_by(operators.c.name))
        return [operator_from_row(r) for r in rows]


async def count_owners(conn: Conn) -> int:
    return int(
        (
            await conn.execute(
                sa.select(sa.func.count()).where(
                    operators.c.role == "owner", operators.c.disabled_at.is_(None)
                )
            )
        ).scalar_one()
    )


async def _app_ids(conn: Conn, names: Iterable[str]) -> list[str]:
    """App names or ids as ids; an unknown one is an error naming it."""
    found: list[str] = []
    for ident in names:
        row = (
            await conn.execute(
                sa.select(apps_table.c.id).where(
                    sa.or_(apps_table.c.name == ident, apps_table.c.id == ident)
                )
            )
        ).first()
        if row is None:
            raise NotFound("app", ident, hint="See `grantvault apps list`.")
        found.append(row.id)
    return sorted(set(found))


# --------------------------------------------------------------------------- writing


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise InvalidInput(f"Unknown role {role!r}: use owner, admin or auditor.")
    return role


def _check_name(name: str) -> None:
    if not NAME.match(name):
        raise InvalidInput(
            "An operator name is 1-64 of a-z, 0-9, '.', '_', '-', not starting or ending "
            "with a punctuation mark."
        )


async def _audit(
    vault: Vault,
    conn: Conn,
    event: AuditEvent,
    actor: dict[str, Any],
    details: dict[str, Any],
    outcome: Outcome = Outcome.SUCCESS,
    reason: str | None = None,
) -> None:
    await vault.audit.append(
        conn,
        [
            AuditRecord(
                chain=SYSTEM_CHAIN,
                event=event,
                outcome=outcome,
                actor=actor,
                reason=reason,
                details=details,
                occurred_at=vault.clock.now(),
            )
        ],
    )


async def create_operator(
    vault: Vault,
    name: str,
    role: str,
    *,
    actor: dict[str, Any],
    password: str | None = None,
    apps: list[str] | None = None,
    sso_subject: str | None = None,
) -> Operator:
    """Create an operator. Needs a password or a single sign-on identity to ever sign in."""
    _check_name(name)
    checked = _check_role(role)
    if password is not None:
        check_password(password, name)
    if checked == "owner" and apps:
        raise InvalidInput("An owner covers every app; leave out --apps.")
    password_hash = _hash_password(password) if password is not None else None
    now = vault.clock.now()
    operator_id = str(uuid.uuid4())
    try:
        async with vault.db.write() as conn:
            app_ids = await _app_ids(conn, apps) if apps else None
            await conn.execute(
                sa.insert(operators).values(
                    id=operator_id,
                    name=name,
                    role=checked,
                    apps=app_ids,
                    password_hash=password_hash,
                    sso_subject=sso_subject,
                    created_at=now,
                )
            )
            await _audit(
                vault,
                conn,
                AuditEvent.OPERATOR_CREATED,
                actor,
                {"operator_id": operator_id, "name": name, "role": checked, "apps": app_ids},
            )
    except IntegrityError:
        raise VaultError(
            ErrorCode.ALREADY_EXISTS, f"An operator named {name!r} already exists."
        ) from None
    return await get_operator(vault, operator_id)


async def update_operator(
    vault: Vault,
    name_or_id: str,
    *,
    actor: dict[str, Any],
    role: str | None = None,
    apps: list[str] | None = None,
    all_apps: bool = False,
    password: str | None = None,
    disabled: bool | None = None,
) -> Operator:
    """Change an operator's role, apps, password or state; the last enabled owner stays."""
    async with vault.db.write() as conn:
        row = await _row(conn, name_or_id)
        if row is None:
            raise NotFound("operator", name_or_id, hint="See `grantvault operators list`.")
        values: dict[str, Any] = {}
        changed: dict[str, Any] = {}
        now = vault.clock.now()
        if role is not None:
            values["role"] = changed["role"] = _check_role(role)
        if all_apps:
            values["apps"] = changed["apps"] = None
        elif apps is not None:
            values["apps"] = changed["apps"] = await _app_ids(conn, apps)
        if password is not None:
            check_password(password, row.name)
            values["password_hash"] = _hash_password(password)
            values["sessions_valid_after"] = now
            changed["password"] = "changed"
        if disabled is not None:
            values["disabled_at"] = now if disabled else None
            if disabled:
                values["sessions_valid_after"] = now
            changed["disabled"] = disabled
        if not values:
            raise InvalidInput("Nothing to change: pass a role, apps, a password or a state.")
        demotes = row.role == "owner" and (
            values.get("role", "owner") != "owner" or values.get("disabled_at") is not None
        )
        await conn.execute(sa.update(operators).where(operators.c.id == row.id).values(**values))
        if demotes and await count_owners(conn) == 0:
            raise InvalidInput("That would leave the vault without an enabled owner.")
        await _audit(
            vault,
            conn,
            AuditEvent.OPERATOR_UPDATED,
            actor,
            {"operator_id": row.id, "name": row.name, **changed},
        )
    return await get_operator(vault, row.id)


async def delete_operator(vault: Vault, name_or_id: str, *, actor: dict[str, Any]) -> None:
    async with vault.db.write() as conn:
        row = await _row(conn, name_or_id)
        if row is None:
            raise NotFound("operator", name_or_id, hint="See `grantvault operators list`.")
        await conn.execute(sa.delete(operators).where(operators.c.id == row.id))
        if row.role == "owner" and await count_owners(conn) == 0:
            raise InvalidInput("That would leave the vault without an enabled owner.")
        await _audit(
            vault,
            conn,
            AuditEvent.OPERATOR_DELETED,
            actor,
            {"operator_id": row.id, "name": row.name},
        )


async def unlock_operator(vault: Vault, name_or_id: str, *, actor: dict[str, Any]) -> Operator:
    """Lift a sign-in lockout (owners only, through the admin surfaces)."""
    async with vault.db.write() as conn:
        row = await _row(conn, name_or_id)
        if row is None:
            raise NotFound("operator", name_or_id, hint="See `grantvault operators list`.")
        await conn.execute(
            sa.update(operators)
            .where(operators.c.id == row.id)
            .values(failed_logins=0, locked_until=None)
        )
        await _audit(
            vault,
            conn,
            AuditEvent.OPERATOR_UNLOCKED,
            actor,
            {"operator_id": row.id, "name": row.name},
        )
    return await get_operator(vault, row.id)


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class TokenInfo:
    id: str
    operator_id: str
    operator: str
    name: str
    prefix: str
    role: Role
    apps: frozenset[str] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def public(self) -> dict[str, Any]:
        return {
            "token_id": self.id,
            "operator": self.operator,
            "name": self.name,
            "prefix": self.prefix,
            "role": self.role,
            "apps": sorted(self.apps) if self.apps is not None else None,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at) if self.expires_at else None,
            "revoked_at": iso(self.revoked_at) if self.revoked_at else None,
            "last_used_at": iso(self.last_used_at) if self.last_used_at else None,
        }


def _token_info(row: Any, operator_name: str) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        operator_id=row.operator_id,
        operator=operator_name,
        name=row.name,
        prefix=row.token_prefix,
        role=row.role,
        apps=frozenset(row.apps) if row.apps is not None else None,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def mint_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def create_token(
    vault: Vault,
    operator_name: str,
    name: str,
    *,
    actor: dict[str, Any],
    role: str | None = None,
    apps: list[str] | None = None,
    expires_in: timedelta | None = None,
) -> tuple[TokenInfo, str]:
    """A personal API token, shown once. It carries at most its operator's authority."""
    if not name or len(name) > 64:
        raise InvalidInput("A token name is 1-64 characters, e.g. 'ci'.")
    now = vault.clock.now()
    token = mint_token()
    async with vault.db.write() as conn:
        row = await _row(conn, operator_name)
        if row is None:
            raise NotFound("operator", operator_name, hint="See `grantvault operators list`.")
        op = operator_from_row(row)
        wanted_role = _check_role(role) if role is not None else op.role
        wanted_apps = frozenset(await _app_ids(conn, apps)) if apps else None
        token_role, token_apps = _narrower(wanted_role, wanted_apps, op.role, op.apps)
        token_id = str(uuid.uuid4())
        await conn.execute(
            sa.insert(operator_tokens).values(
                id=token_id,
                operator_id=op.id,
                name=name,
                token_hash=_sha256(token),
                token_prefix=token[: len(TOKEN_PREFIX) + 6],
                role=token_role,
                apps=sorted(token_apps) if token_apps is not None else None,
                created_at=now,
                expires_at=now + expires_in if expires_in else None,
            )
        )
        await _audit(
            vault,
            conn,
            AuditEvent.OPERATOR_TOKEN_CREATED,
            actor,
            {"operator_id": op.id, "token_id": token_id, "name": name, "role": token_role},
        )
        created = (
            await conn.execute(sa.select(operator_tokens).where(operator_tokens.c.id == token_id))
        ).one()
    return _token_info(created, op.name), token


async def list_tokens(vault: Vault, operator_name: str | None = None) -> list[TokenInfo]:
    async with vault.db.read() as conn:
        stmt = (
            sa.select(operator_tokens, operators.c.name.label("operator_name"))
            .join(operators, operators.c.id == operator_tokens.c.operator_id)
            .order_by(operators.c.name, operator_tokens.c.created_at)
        )
        if operator_name is not None:
            stmt = stmt.where(
                sa.or_(operators.c.name == operator_name, operators.c.id == operator_name)
            )
        return [_token_info(r, r.operator_name) for r in await conn.execute(stmt)]


async def revoke_token(vault: Vault, token_id: str, *, actor: dict[str, Any]) -> TokenInfo:
    now = vault.clock.now()
    async with vault.db.write() as conn:
        row = (
            await conn.execute(
                sa.select(operator_tokens, operators.c.name.label("operator_name"))
                .join(operators, operators.c.id == operator_tokens.c.operator_id)
                .where(operator_tokens.c.id == token_id)
            )
        ).first()
        if row is None:
            raise NotFound("token", token_id)
        if row.revoked_at is None:
            await conn.execute(
                sa.update(operator_tokens)
                .where(operator_tokens.c.id == token_id)
                .values(revoked_at=now)
            )
            await _audit(
                vault,
                conn,
                AuditEvent.OPERATOR_TOKEN_REVOKED,
                actor,
                {"operator_id": row.operator_id, "token_id": token_id, "name": row.name},
            )
    return next(t for t in await list_tokens(vault, row.operator_id) if t.id == token_id)


def _invalid_token(message: str = "The operator token is not valid.") -> VaultError:
    return VaultError(ErrorCode.INVALID_TOKEN, message)


async def authenticate_token(vault: Vault, presented: str) -> Principal:
    """The principal behind a ``gvat_`` token: checked on every request, never cached, so a
    revocation or a demotion applies to the very next call on every replica."""
    if not presented.startswith(TOKEN_PREFIX) or len(presented) > 128:
        raise _invalid_token(
            "Expected an operator token (gvat_...); create one with "
            "`grantvault operators token create`."
        )
    now = vault.clock.now()
    async with vault.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(
                    operator_tokens.c.id.label("token_id"),
                    operator_tokens.c.role.label("token_role"),
                    operator_tokens.c.apps.label("token_apps"),
                    operator_tokens.c.created_at.label("token_created_at"),
                    operator_tokens.c.expires_at.label("token_expires_at"),
                    operator_tokens.c.revoked_at.label("token_revoked_at"),
                    operator_tokens.c.last_used_at.label("token_last_used_at"),
                    operators,
                )
                .join(operators, operators.c.id == operator_tokens.c.operator_id)
                .where(operator_tokens.c.token_hash == _sha256(presented))
            )
        ).first()
    if row is None:
        raise _invalid_token()
    if row.token_revoked_at is not None:
        raise _invalid_token("This operator token was revoked.")
    if row.token_expires_at is not None and row.token_expires_at <= now:
        raise _invalid_token("This operator token has expired; create a new one.")
    op = operator_from_row(row)
    if op.disabled:
        raise _invalid_token("This operator is disabled.")
    if op.sessions_valid_after is not None and row.token_created_at < op.sessions_valid_after:
        raise _invalid_token("This token was issued before its operator signed out everywhere.")
    token_apps = frozenset(row.token_apps) if row.token_apps is not None else None
    role, apps = _narrower(row.token_role, token_apps, op.role, op.apps)
    if row.token_last_used_at is None or now - row.token_last_used_at > timedelta(minutes=1):
        async with vault.db.write() as conn:
            await conn.execute(
                sa.update(operator_tokens)
                .where(operator_tokens.c.id == row.token_id)
                .values(last_used_at=now)
            )
    return Principal(operator=op, role=role, apps=apps, via="token", token_id=row.token_id)


# --------------------------------------------------------------------------- sign-in


@dataclass(frozen=True)
class SignIn:
    """A password check that passed: done, or waiting for the second factor."""

    operator: Operator
    needs_second_factor: bool


def _lock_wait(failures: int) -> timedelta:
    """One minute after the fifth failure in a row, doubling with each further one."""
    steps = failures - LOCK_AFTER
    wait: timedelta = LOCK_FIRST * (2 ** max(0, min(steps, 16)))
    return min(LOCK_MAX, wait)


def locked_error(until: datetime, now: datetime) -> VaultError:
    wait = max(1, math.ceil((until - now).total_seconds()))
    return VaultError(
        ErrorCode.ACCOUNT_LOCKED,
        f"Too many failed sign-ins: try again in {wait} s, or ask an owner to unlock the account.",
        headers={"Retry-After": str(wait)},
        retry_after=wait,
    )


_LOGIN_FAILED = "The name, password or code is not right."


async def sign_in_password(
    vault: Vault, name: str, password: str, *, address: str | None = None
) -> SignIn:
    """Check a name and password; count failures and lock the account after too many.

    The answer never says whether the name exists (same message, same Argon2 work).
    """
    now = vault.clock.now()
    async with vault.db.read() as conn:
        row = await _row(conn, name)
    if row is not None and row.locked_until is not None and row.locked_until > now:
        raise locked_error(row.locked_until, now)
    ok = _verify_password(row.password_hash if row is not None else None, password)
    if row is None or not ok or row.disabled_at is not None:
        if row is not None:
            await _record_failure(vault, row, now, address, "password")
        raise VaultError(ErrorCode.LOGIN_FAILED, _LOGIN_FAILED)
    op = operator_from_row(row)
    if not op.totp_enabled:
        await _record_success(vault, op, now, address, "password")
    return SignIn(op, needs_second_factor=op.totp_enabled)


async def _record_failure(
    vault: Vault, row: Any, now: datetime, address: str | None, step: str
) -> None:
    async with vault.db.write() as conn:
        failures = int(
            (
                await conn.execute(
                    sa.update(operators)
                    .where(operators.c.id == row.id)
                    .values(failed_logins=operators.c.failed_logins + 1)
                    .returning(operators.c.failed_logins)
                )
            ).scalar_one()
        )
        locked = failures >= LOCK_AFTER
        if locked:
            await conn.execute(
                sa.update(operators)
                .where(operators.c.id == row.id)
                .values(locked_until=now + _lock_wait(failures))
            )
        details = {"operator_id": row.id, "name": row.name, "step": step, "address": address}
        await _audit(
            vault,
            conn,
            AuditEvent.OPERATOR_LOCKED_OUT if locked else AuditEvent.OPERATOR_SIGN_IN_FAILED,
            {"type": "anonymous", "address": address},
            {**details, "failures": failures},
            Outcome.DENIED,
            ErrorCode.LOGIN_FAILED.value,
        )


async def _record_success(
    vault: Vault, op: Operator, now: datetime, address: str | None, method: str
) -> None:
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(operators)
            .where(operators.c.id == op.id)
            .values(failed_logins=0, locked_until=None, last_login_at=now)
        )
        await _audit(
            vault,
            conn,
            AuditEvent.OPERATOR_SIGNED_IN,
            {"type": "operator_account", "operator_id": op.id, "name": op.name, "via": "portal"},
            {"operator_id": op.id, "method": method, "address": address},
        )


# --------------------------------------------------------------------------- second factor


def _totp_aad(operator_id: str) -> bytes:
    return aad_for("operators", NO_APP, operator_id, "totp_secret_ct")


async def begin_totp(vault: Vault, operator_id: str) -> str:
    """A fresh TOTP seed for enrolment (stored sealed, not yet enabled); the provisioning
    URI is returned once for the authenticator app."""
    seed = pyotp.random_base32()
    async with vault.db.write() as conn:
        row = await _row(conn, operator_id)
        if row is None:
            raise NotFound("operator", operator_id)
        if row.totp_enabled_at is not None:
            raise InvalidInput("A second factor is already enrolled.")
        sealed = vault.barrier.encrypt(seed.encode(), _totp_aad(row.id))
        await conn.execute(
            sa.update(operators).where(operators.c.id == row.id).values(totp_secret_ct=sealed)
        )
    return pyotp.TOTP(seed).provisioning_uri(name=row.name, issuer_name="Grantvault")


async def totp_seed(vault: Vault, conn: Conn, row: Any) -> str | None:
    if row.totp_secret_ct is None:
        return None
    plain = await vault.barrier.decrypt_fresh(conn, row.totp_secret_ct, _totp_aad(row.id))
    return plain.decode()


def _totp_ok(seed: str, code: str, now: datetime) -> bool:
    code = code.strip().replace(" ", "")
    if not re.fullmatch(r"\d{6}", code):
        return False
    # One step either side: a phone's clock a little off still works.
    return pyotp.TOTP(seed).verify(code, for_time=now, valid_window=1)


async def confirm_totp(vault: Vault, operator_id: str, code: str) -> list[str]:
    """Enable the enrolled seed once a code from it checks; return the recovery codes (shown
    once, stored hashed)."""
    now = vault.clock.now()
    codes = [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(RECOVERY_CODES)]
    async with vault.db.write() as conn:
        row = await _row(conn, operator_id)
        if row is None:
            raise NotFound("operator", operator_id)
        seed = await totp_seed(vault, conn, row)
        if seed is None or row.totp_enabled_at is not None:
            raise InvalidInput("Start the enrolment first.")
        if not _totp_ok(seed, code, now):
            raise InvalidInput("That code does not match; check the authenticator's time.")
        await conn.execute(
            sa.update(operators)
            .where(operators.c.id == row.id)
            .values(totp_enabled_at=now, recovery_codes=[_sha256(c) for c in codes])
        )
        await _audit(
            vault,
            conn,
            AuditEvent.OPERATOR_MFA_ENROLLED,
            {"type": "operator_account", "operator_id": row.id, "name": row.name, "via": "portal"},
            {"operator_id": row.id},
        )
    return codes


async def verify_second_factor(
    vault: Vault, operator_id: str, code: str, *, address: str | None = None
) -> Operator:
    """A TOTP code or an unused recovery code (which is then spent)."""
    now = vault.clock.now()
    async with vault.db.read() as conn:
        row = await _row(conn, operator_id)
        if row is None:
            raise VaultError(ErrorCode.LOGIN_FAILED, _LOGIN_FAILED)
        if row.locked_until is not None and row.locked_until > now:
            raise locked_error(row.locked_until, now)
        seed = await totp_seed(vault, conn, row)
    if seed is not None and _totp_ok(seed, code, now):
        op = operator_from_row(row)
        await _record_success(vault, op, now, address, "totp")
        return op
    hashed = _sha256(code.strip().lower())
    unused = list(row.recovery_codes or [])
    if hashed in unused:
        unused.remove(hashed)
        async with vault.db.write() as conn:
            await conn.execute(
                sa.update(operators).where(operators.c.id == row.id).values(recovery_codes=unused)
            )
        op = operator_from_row(row)
        await _record_success(vault, op, now, address, "recovery_code")
        return op
    await _record_failure(vault, row, now, address, "second_factor")
    raise VaultError(ErrorCode.LOGIN_FAILED, _LOGIN_FAILED)


# The password check and its failure bookkeeping, for the portal's sudo mode
# (``services.portal_sessions.reauthenticate``): the same Argon2 check, the same lockout.
LOGIN_FAILED_MESSAGE = _LOGIN_FAILED
password_matches = _verify_password
record_failure = _record_failure
