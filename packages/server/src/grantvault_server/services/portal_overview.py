"""What the operator portal's overview shows: each visible app with its counts, and the
latest credential retrievals and denials from those apps' audit chains.

Reads only, and only what the principal may see (its app scope); apps it may not see are
left out exactly as ``apps.list`` leaves them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.services.audit_log import actor_label
from grantvault_server.services.operators import Principal, authorize
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import api_keys, apps, audit_events, grants, managed_secrets


@dataclass(frozen=True)
class AppSummary:
    app_id: str
    name: str
    created_at: datetime
    active_keys: int
    active_grants: int
    secrets: int


def _count_by_app(table: sa.Table, *conditions: Any) -> Any:
    return (
        sa.select(table.c.app_id, sa.func.count().label("n"))
        .where(*conditions)
        .group_by(table.c.app_id)
    )


async def app_summaries(vault: Vault, principal: Principal) -> list[AppSummary]:
    """Every app the principal may see, by name, with its active keys, grants and secrets."""
    authorize(principal, "read")
    now = vault.clock.now()
    key_live = (
        api_keys.c.revoked_at.is_(None),
        sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
        sa.or_(api_keys.c.grace_expires_at.is_(None), api_keys.c.grace_expires_at > now),
    )
    grant_live = (
        grants.c.status == "active",
        sa.or_(grants.c.expires_at.is_(None), grants.c.expires_at > now),
    )
    async with vault.db.read() as conn:
        rows = (await conn.execute(sa.select(apps).order_by(apps.c.name))).all()
        keys = {r.app_id: r.n for r in await conn.execute(_count_by_app(api_keys, *key_live))}
        live = {r.app_id: r.n for r in await conn.execute(_count_by_app(grants, *grant_live))}
        secret_counts = {r.app_id: r.n for r in await conn.execute(_count_by_app(managed_secrets))}
    return [
        AppSummary(
            app_id=r.id,
            name=r.name,
            created_at=r.created_at,
            active_keys=int(keys.get(r.id, 0)),
            active_grants=int(live.get(r.id, 0)),
            secrets=int(secret_counts.get(r.id, 0)),
        )
        for r in rows
        if principal.can_see_app(r.id)
    ]


async def recent_activity(
    vault: Vault, principal: Principal, app_ids: list[str], limit: int = 12
) -> list[dict[str, Any]]:
    """The latest credential retrievals and denied requests in the chains of ``app_ids``
    (those the principal may see), newest first, in the words an operator reads."""
    authorize(principal, "read")
    visible = [a for a in app_ids if principal.can_see_app(a)]
    if not visible:
        return []
    stmt = (
        sa.select(audit_events, apps.c.name.label("app_name"))
        .join(apps, apps.c.id == audit_events.c.chain)
        .where(
            audit_events.c.chain.in_(visible),
            sa.or_(
                audit_events.c.event == AuditEvent.CREDENTIAL_RETRIEVED.value,
                audit_events.c.outcome == Outcome.DENIED.value,
            ),
        )
        .order_by(audit_events.c.occurred_at.desc(), audit_events.c.id.desc())
        .limit(limit)
    )
    async with vault.db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        {
            "occurred_at": r.occurred_at,
            "app": r.app_name,
            "event": r.event,
            "outcome": r.outcome,
            "reason": r.reason,
            "secret": r.provider_id,
            "principal": r.principal,
            "grant_id": r.grant_id,
            "caller": actor_label(r.actor) if isinstance(r.actor, dict) else str(r.actor or ""),
        }
        for r in rows
    ]
