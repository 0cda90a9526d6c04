"""The audit row of an administrative act the operator's role or app scope refused."""

from __future__ import annotations

from typing import Any

from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import SYSTEM_CHAIN, AuditEvent, Outcome
from grantvault_server.errors import VaultError
from grantvault_server.services.operators import Principal
from grantvault_server.services.vault import Vault

#: Inputs that are never written to the audit trail, even on a refusal.
_SECRET_FIELDS = frozenset(
    {"value", "values", "password", "client_secret", "secret", "token", "user_token"}
)
#: Longer inputs (a policy's source text) are cut: the row says what was tried, not all of it.
_MAX_TEXT = 500


async def audit_refusal(
    vault: Vault, principal: Principal, operation: str, inputs: dict[str, Any], error: VaultError
) -> None:
    """Record who tried what (inputs without secret values) in the system chain."""
    safe = {
        k: "[redacted]"
        if k in _SECRET_FIELDS
        else (v[:_MAX_TEXT] + "…" if isinstance(v, str) and len(v) > _MAX_TEXT else v)
        for k, v in inputs.items()
    }
    async with vault.db.write() as conn:
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=SYSTEM_CHAIN,
                    event=AuditEvent.ADMIN_REFUSED,
                    outcome=Outcome.DENIED,
                    actor=principal.actor,
                    reason=error.code.value,
                    details={"operation": operation, "inputs": safe, "message": error.message},
                    occurred_at=vault.clock.now(),
                )
            ],
        )
