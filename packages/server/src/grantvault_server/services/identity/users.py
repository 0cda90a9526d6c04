"""App users and groups: created just in time from verified claims, kept in sync cheaply.

The hot path (:func:`sync_user`) is one point read of the user's row, which holds the
status, the profile and the external group ids of the last token. Only when something
changed (a new user, other groups, a new email or name, or ``last_seen_at`` a minute old)
does it open a write transaction, re-read the row under lock and apply the difference,
with audit records for every user and group change.

Group removals announced by the IdP (the deprovisioning webhook) are kept on the user row
with their time: a token issued *before* the removal still lists the group, so that group
is ignored for it; a token issued after it means the IdP added the user back.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.errors import InvalidInput, VaultError
from grantvault_server.identity.claims import (
    MAX_GROUP_ID,
    Identity,
    MappedClaims,
    effective_groups,
    storable,
)
from grantvault_server.identity.state import IdpConfig
from grantvault_server.services.grants import Revocable, principal_label, revoke_in
from grantvault_server.services.last_used import needs_touch
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn
from grantvault_server.storage.fastread import PreparedRead
from grantvault_server.storage.sql import for_update, insert_ignore, page
from grantvault_server.storage.tables import (
    app_group_members,
    app_groups,
    app_users,
    grants,
    identity_providers,
    managed_secrets,
)
from grantvault_server.timefmt import iso

USER_STATUSES = ("active", "disabled", "deleted")
#: Group removals older than this are forgotten: no token lives that long.
REMOVAL_MEMORY = timedelta(days=7)
#: At most this many group ids in one audit record's details (the count is always exact).
AUDIT_LIST_LIMIT = 100


def user_disabled(status: str) -> VaultError:
    what = "deleted at the identity provider" if status == "deleted" else "disabled"
    return VaultError(
        ErrorCode.USER_DISABLED,
        f"This user was {what} for this app; an operator can re-enable them with "
        "`grantvault users enable`.",
    )


_USER_COLUMNS = (
    app_users.c.id,
    app_users.c.subject,
    app_users.c.status,
    app_users.c.email,
    app_users.c.display_name,
    app_users.c.groups,
    app_users.c.group_removals,
    app_users.c.last_seen_at,
)
_USER_BY_SUBJECT = PreparedRead(
    sa.select(*_USER_COLUMNS).where(
        app_users.c.idp_id == sa.bindparam("idp_id"),
        app_users.c.subject == sa.bindparam("subject"),
    )
)


def _user_lock(conn: Conn, idp_id: str, subject: str) -> sa.Select[Any]:
    return for_update(
        conn,
        sa.select(*_USER_COLUMNS).where(
            app_users.c.idp_id == idp_id, app_users.c.subject == subject
        ),
    )


def _identity(row: Any, config: IdpConfig, groups: frozenset[str]) -> Identity:
    return Identity(
        user_id=row.id,
        subject=row.subject,
        idp_id=config.id,
        groups=groups,
        email=row.email,
        display_name=row.display_name,
    )


def _unchanged(row: Any, mapped: MappedClaims, groups: frozenset[str], now: datetime) -> bool:
    return (
        groups == frozenset(row.groups)
        # A token issued after a removal lists the group again: the marker must go.
        and not groups & set(row.group_removals)
        and (mapped.email is None or mapped.email == row.email)
        and (mapped.display_name is None or mapped.display_name == row.display_name)
        and not needs_touch(row.last_seen_at, now)
    )


def _listed(values: set[str] | frozenset[str]) -> dict[str, Any]:
    ordered = sorted(values)
    return {"groups": ordered[:AUDIT_LIST_LIMIT], "count": len(ordered)}


class _Changes:
    """Audit records of one write transaction (user and group changes)."""

    def __init__(self, config: IdpConfig, subject: str, actor: dict[str, Any]) -> None:
        self.config = config
        self.principal = principal_label("user", subject)
        self.actor = actor
        self.records: list[AuditRecord] = []

    def add(self, event: AuditEvent, details: dict[str, Any], *, reason: str | None = None) -> None:
        self.records.append(
            AuditRecord(
                chain=self.config.app_id,
                event=event,
                outcome=Outcome.SUCCESS,
                actor=self.actor,
                reason=reason,
                principal=self.principal,
                details={"idp_id": self.config.id, **details},
            )
        )


async def _group_ids(
    conn: Conn, config: IdpConfig, external_ids: set[str], now: datetime, changes: _Changes
) -> dict[str, str]:
    """Ids of the app's groups named ``external_ids``, creating the missing ones."""
    created = set()
    for external_id in sorted(external_ids):
        inserted = await insert_ignore(
            conn,
            app_groups,
            {
                "id": str(uuid.uuid4()),
                "app_id": config.app_id,
                "idp_id": config.id,
                "external_id": external_id,
                "created_at": now,
            },
        )
        if inserted:
            created.add(external_id)
    if created:
        changes.add(AuditEvent.GROUP_CREATED, _listed(created))
    rows = await conn.execute(
        sa.select(app_groups.c.id, app_groups.c.external_id).where(
            app_groups.c.idp_id == config.id, app_groups.c.external_id.in_(sorted(external_ids))
        )
    )
    return {r.external_id: r.id for r in rows}


async def _set_memberships(
    conn: Conn,
    config: IdpConfig,
    user_id: str,
    current: frozenset[str],
    wanted: frozenset[str],
    now: datetime,
    changes: _Changes,
    reason: str | None = None,
) -> None:
    added, removed = wanted - current, current - wanted
    if added:
        ids = await _group_ids(conn, config, set(added), now, changes)
        for external_id in sorted(added):
            await insert_ignore(
                conn,
                app_group_members,
                {"group_id": ids[external_id], "user_id": user_id, "created_at": now},
            )
        changes.add(AuditEvent.GROUP_MEMBER_ADDED, _listed(added), reason=reason)
    if removed:
        group_ids = sa.select(app_groups.c.id).where(
            app_groups.c.idp_id == config.id, app_groups.c.external_id.in_(sorted(removed))
        )
        await conn.execute(
            sa.delete(app_group_members).where(
                app_group_members.c.user_id == user_id,
                app_group_members.c.group_id.in_(group_ids.scalar_subquery()),
            )
        )
        changes.add(AuditEvent.GROUP_MEMBER_REMOVED, _listed(removed), reason=reason)


def _new_user(config: IdpConfig, subject: str, now: datetime, **values: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "app_id": config.app_id,
        "idp_id": config.id,
        "subject": subject,
        "status": "active",
        "groups": [],
        "group_removals": {},
        "created_at": now,
        "updated_at": now,
        **values,
    }


async def _lock_or_create(
    conn: Conn, config: IdpConfig, subject: str, now: datetime, changes: _Changes, **values: Any
) -> Any:
    """The user's row under lock, inserting it first when missing (concurrency-safe)."""
    row = (await conn.execute(_user_lock(conn, config.id, subject))).first()
    if row is not None:
        return row
    fresh = _new_user(config, subject, now, **values)
    if await insert_ignore(conn, app_users, fresh):
        changes.add(
            AuditEvent.USER_CREATED,
            {"user_id": fresh["id"], "status": fresh["status"]},
        )
    return (await conn.execute(_user_lock(conn, config.id, subject))).one()


async def sync_user(
    vault: Vault, config: IdpConfig, mapped: MappedClaims, actor: dict[str, Any]
) -> Identity:
    """The app user behind verified claims: created on first sight, synced when changed."""
    async with vault.db.read() as conn:
        row = await _USER_BY_SUBJECT.first(conn, {"idp_id": config.id, "subject": mapped.subject})
    now = vault.clock.now()
    if row is not None:
        if row.status != "active":
            raise user_disabled(row.status)
        groups = effective_groups(mapped.groups, row.group_removals, mapped.issued_at)
        if _unchanged(row, mapped, groups, now):
            return _identity(row, config, groups)
    changes = _Changes(config, mapped.subject, actor)
    async with vault.db.write() as conn:
        row = await _lock_or_create(
            conn,
            config,
            mapped.subject,
            now,
            changes,
            email=mapped.email,
            display_name=mapped.display_name,
        )
        if row.status != "active":
            raise user_disabled(row.status)
        if changes.records and not config.mappings_locked:
            await _lock_mappings(conn, config, now)
        groups, removals = _synced_groups(row, mapped, now)
        current = frozenset(row.groups)
        await _set_memberships(conn, config, row.id, current, groups, now, changes)
        values: dict[str, Any] = {"last_seen_at": now}
        if groups != current or removals != row.group_removals:
            values["groups"] = sorted(groups)
            values["group_removals"] = removals
        profile = _profile_changes(row, mapped)
        if profile:
            values.update(profile)
            if not any(r.event is AuditEvent.USER_CREATED for r in changes.records):
                changes.add(AuditEvent.USER_UPDATED, {"changed": sorted(profile)})
        if len(values) > 1:
            values["updated_at"] = now
        await conn.execute(sa.update(app_users).where(app_users.c.id == row.id).values(**values))
        if changes.records:
            await vault.audit.append(conn, changes.records)
    return Identity(
        user_id=row.id,
        subject=mapped.subject,
        idp_id=config.id,
        groups=groups,
        email=profile.get("email", row.email),
        display_name=profile.get("display_name", row.display_name),
    )


async def _lock_mappings(conn: Conn, config: IdpConfig, now: datetime) -> None:
    """The first user of this IdP: the claim mappings are now in use."""
    await conn.execute(
        sa.update(identity_providers)
        .where(
            identity_providers.c.id == config.id,
            identity_providers.c.mappings_locked_at.is_(None),
        )
        .values(mappings_locked_at=now)
    )


def _synced_groups(
    row: Any, mapped: MappedClaims, now: datetime
) -> tuple[frozenset[str], dict[str, float]]:
    """The user's groups from this token, and the IdP's removals still worth remembering."""
    removals: dict[str, float] = dict(row.group_removals)
    groups = effective_groups(mapped.groups, removals, mapped.issued_at)
    # The IdP added the user back to a group it had removed them from.
    for readded in groups & set(removals):
        del removals[readded]
    cutoff = (now - REMOVAL_MEMORY).timestamp()
    return groups, {g: t for g, t in removals.items() if t > cutoff}


def _profile_changes(row: Any, mapped: MappedClaims) -> dict[str, str]:
    """The profile fields the token changes (a claim left out changes nothing)."""
    return {
        name: new
        for name, new, old in (
            ("email", mapped.email, row.email),
            ("display_name", mapped.display_name, row.display_name),
        )
        if new is not None and new != old
    }


async def _revoke_user_grants(
    conn: Conn,
    vault: Vault,
    config: IdpConfig,
    subject: str,
    reason: str,
    now: datetime,
    changes: _Changes,
) -> list[str]:
    """Revoke the user's active managed-secret grants (OAuth grants: the disable hooks)."""
    rows = (
        await conn.execute(
            sa.select(
                grants.c.id, grants.c.kind, grants.c.oauth_provider_id, managed_secrets.c.slug
            )
            .join(managed_secrets, managed_secrets.c.id == grants.c.managed_secret_id)
            .where(
                grants.c.app_id == config.app_id,
                grants.c.principal_type == "user",
                grants.c.principal_id == subject,
                grants.c.status == "active",
                sa.or_(grants.c.idp_id.is_(None), grants.c.idp_id == config.id),
            )
            .order_by(grants.c.created_at, grants.c.id)
        )
    ).all()
    if not rows:
        return []
    targets = [
        Revocable(r.id, r.kind, "active", "user", subject, r.oauth_provider_id, r.slug)
        for r in rows
    ]
    await revoke_in(
        conn,
        vault,
        config.app_id,
        targets,
        actor=changes.actor,
        reason=reason,
        now=now,
        records=changes.records,
    )
    return [t.grant_id for t in targets]


_STATUS_EVENTS = {
    "active": AuditEvent.USER_ENABLED,
    "disabled": AuditEvent.USER_DISABLED,
    "deleted": AuditEvent.USER_DELETED,
}


async def change_status(
    conn: Conn,
    vault: Vault,
    config: IdpConfig,
    subject: str,
    status: str,
    actor: dict[str, Any],
    reason: str | None = None,
) -> list[str]:
    """Set a user's status inside the caller's write transaction; returns revoked grant ids.

    Disabling (or deleting) someone the vault has not seen yet creates their row already
    disabled, so their first token is refused too. Disabled and deleted users lose their
    managed-secret grants in the same transaction.
    """
    if status not in USER_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(USER_STATUSES)}.")
    if not 1 <= len(subject) <= 255 or not storable(subject):
        raise InvalidInput("A user id (subject) is 1-255 characters, without control characters.")
    if reason is not None and len(reason) > 512:
        raise InvalidInput("reason is at most 512 characters.")
    now = vault.clock.now()
    changes = _Changes(config, subject, actor)
    row = await _lock_or_create(conn, config, subject, now, changes, status=status)
    if row.status != status or changes.records:
        await conn.execute(
            sa.update(app_users)
            .where(app_users.c.id == row.id)
            .values(status=status, status_reason=reason, status_changed_at=now, updated_at=now)
        )
        changes.add(
            _STATUS_EVENTS[status], {"user_id": row.id, "previous": row.status}, reason=reason
        )
    revoked: list[str] = []
    if status != "active":
        why = reason or f"user {status}"
        revoked = await _revoke_user_grants(conn, vault, config, subject, why, now, changes)
    if status == "deleted" and row.groups:
        await _set_memberships(
            conn,
            config,
            row.id,
            frozenset(row.groups),
            frozenset(),
            now,
            changes,
            reason="user deleted",
        )
        await conn.execute(sa.update(app_users).where(app_users.c.id == row.id).values(groups=[]))
    if changes.records:
        await vault.audit.append(conn, changes.records)
    return revoked


async def remove_group_member(
    conn: Conn,
    vault: Vault,
    config: IdpConfig,
    subject: str,
    group: str,
    at: datetime,
    actor: dict[str, Any],
) -> None:
    """The IdP removed ``subject`` from ``group`` at ``at``: tokens issued before lose it."""
    if not 1 <= len(group) <= MAX_GROUP_ID or not storable(group):
        raise InvalidInput(
            f"A group id is 1-{MAX_GROUP_ID} characters, without control characters."
        )
    if not 1 <= len(subject) <= 255 or not storable(subject):
        raise InvalidInput("A user id (subject) is 1-255 characters, without control characters.")
    now = vault.clock.now()
    changes = _Changes(config, subject, actor)
    row = await _lock_or_create(conn, config, subject, now, changes)
    removals = dict(row.group_removals)
    removals[group] = max(at.timestamp(), removals.get(group, 0.0))
    current = frozenset(row.groups)
    wanted = current - {group}
    await _set_memberships(conn, config, row.id, current, wanted, now, changes, reason="idp")
    if group not in current:
        changes.add(AuditEvent.GROUP_MEMBER_REMOVED, _listed({group}), reason="idp")
    await conn.execute(
        sa.update(app_users)
        .where(app_users.c.id == row.id)
        .values(groups=sorted(wanted), group_removals=removals, updated_at=now)
    )
    await vault.audit.append(conn, changes.records)


def _user_item(row: Any) -> dict[str, Any]:
    return {
        "user_id": row.id,
        "subject": row.subject,
        "email": row.email,
        "display_name": row.display_name,
        "status": row.status,
        "status_reason": row.status_reason,
        "groups": list(row.groups),
        "created_at": iso(row.created_at),
        "last_seen_at": iso(row.last_seen_at),
    }


async def list_users(
    vault: Vault,
    config: IdpConfig,
    *,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    if not 1 <= limit <= 1000 or offset < 0:
        raise InvalidInput("limit must be 1-1000 and offset at least 0.")
    if status is not None and status not in USER_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(USER_STATUSES)}.")
    stmt = sa.select(app_users).where(app_users.c.idp_id == config.id)
    if status is not None:
        stmt = stmt.where(app_users.c.status == status)
    async with vault.db.read() as conn:
        total, rows = await page(
            conn, stmt, (app_users.c.created_at, app_users.c.id), limit, offset
        )
    return {
        "users": [_user_item(r) for r in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
        "has_more": offset + len(rows) < total,
    }


async def get_user(vault: Vault, config: IdpConfig, subject: str) -> dict[str, Any] | None:
    async with vault.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(app_users).where(
                    app_users.c.idp_id == config.id, app_users.c.subject == subject
                )
            )
        ).first()
    return None if row is None else _user_item(row)


async def list_groups(vault: Vault, config: IdpConfig) -> dict[str, Any]:
    members = (
        sa.select(sa.func.count())
        .select_from(app_group_members)
        .where(app_group_members.c.group_id == app_groups.c.id)
        .correlate(app_groups)
        .scalar_subquery()
    )
    async with vault.db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(app_groups, members.label("members"))
                .where(app_groups.c.idp_id == config.id)
                .order_by(app_groups.c.external_id)
            )
        ).all()
    return {
        "groups": [
            {
                "group_id": r.id,
                "external_id": r.external_id,
                "members": r.members,
                "created_at": iso(r.created_at),
            }
            for r in rows
        ],
        "total": len(rows),
    }
