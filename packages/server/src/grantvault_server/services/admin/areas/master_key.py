"""``master-key.status``: which master key the vault runs with, and where a rotation stands.

Only the status is an operation. Rotating and retiring need the master key files (or the
``GRANTVAULT_MASTER_KEY`` value) of the server host and rewrite every encrypted row, so
``grantvault master-key rotate`` and ``retire-old`` stay commands run on that host; what a
remote operator needs from here is whether a rotation is in progress, whether every row is
re-encrypted yet, and whether this server still runs with the old key.

Nothing here is secret (key ids are keyed fingerprints, already printed by ``rotate``), but
it is vault-wide: owners and auditors of the whole vault may read it, not app admins.
"""

from __future__ import annotations

import struct
from typing import Any

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.events import SYSTEM_CHAIN, AuditEvent
from grantvault_server.errors import VaultError
from grantvault_server.services.admin.registry import OpContext, Params, operation
from grantvault_server.storage.db import Conn
from grantvault_server.storage.tables import (
    ENCRYPTED_COLUMNS,
    audit_events,
    data_keys,
    keyring_state,
)
from grantvault_server.timefmt import iso


class MasterKeyStatus(Params):
    pass


async def _rows_on_other_terms(conn: Conn, active_term: int) -> bool:
    """Whether any stored ciphertext still uses a data key other than the active one (what
    ``retire-old`` waits for). One probe per encrypted column, stopping at the first row found."""
    term_bytes = struct.pack(">I", active_term)
    for column in ENCRYPTED_COLUMNS:
        col = column.table.c[column.column]
        found = (
            await conn.execute(
                sa.select(sa.literal(1)).where(sa.func.substr(col, 2, 4) != term_bytes).limit(1)
            )
        ).first()
        if found is not None:
            return True
    return False


@operation(
    "master-key.status",
    "GET",
    "/master-key",
    permission="read",
    summary="The master key the server runs with and the state of any rotation.",
)
async def status(ctx: OpContext, params: MasterKeyStatus) -> dict[str, Any]:  # noqa: ARG001
    ctx.require("read")
    if ctx.principal.role == "admin" or ctx.principal.apps is not None:
        raise VaultError(
            ErrorCode.FORBIDDEN,
            "The master key's status is vault-wide: owners and auditors of the whole vault "
            "may read it.",
        )
    vault = ctx.vault
    async with vault.db.read() as conn:
        state = (await conn.execute(sa.select(keyring_state).where(keyring_state.c.id == 1))).one()
        wrapped = (
            await conn.execute(
                sa.select(
                    data_keys.c.term, data_keys.c.master_key_id, data_keys.c.created_at
                ).order_by(data_keys.c.term, data_keys.c.master_key_id)
            )
        ).all()
        pending = await _rows_on_other_terms(conn, state.active_term)
        last_rotated = (
            await conn.execute(
                sa.select(audit_events.c.occurred_at)
                .where(
                    audit_events.c.chain == SYSTEM_CHAIN,
                    audit_events.c.event == AuditEvent.MASTER_KEY_ROTATED.value,
                )
                .order_by(audit_events.c.occurred_at.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    terms: dict[int, dict[str, Any]] = {}
    for row in wrapped:
        entry = terms.setdefault(
            row.term, {"term": row.term, "master_key_ids": [], "created_at": iso(row.created_at)}
        )
        entry["master_key_ids"].append(row.master_key_id)
    key_id = vault.barrier.master.key_id
    rotation = (
        None
        if state.rotation_to is None
        else {
            "from_key_id": state.rotation_from,
            "to_key_id": state.rotation_to,
            "started_at": iso(state.updated_at),
        }
    )
    return {
        # The key this server opened the vault with (a fingerprint, not the key).
        "key_id": key_id,
        "key_source": "environment" if vault.settings.master_key is not None else "file",
        "active_term": state.active_term,
        "terms": list(terms.values()),
        "rotation": rotation,
        # Rows still encrypted under an older data key (a rotation's re-encryption pass
        # has not finished; run `master-key rotate` again on the server host).
        "reencryption_pending": pending,
        # A rotation moved to another key and this server still runs with the old one.
        "restart_needed": rotation is not None and key_id != state.rotation_to,
        "sealed": vault.barrier.sealed_reason is not None,
        "sealed_reason": vault.barrier.sealed_reason,
        "last_rotated_at": iso(last_rotated) if last_rotated is not None else None,
    }
