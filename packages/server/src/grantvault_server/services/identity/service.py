"""The identity API the rest of the vault calls: who is behind a user token, and deprovisioning.

* :func:`resolve_user` verifies an end user's JWT against the app's IdP and returns the app
  user (created just in time, groups synced). Every refusal is a :class:`VaultError` with a
  stable code: ``jwt_validation_error`` (401) for any bad token, ``idp_not_configured``
  (400), ``user_disabled`` (403), ``idp_unavailable`` (503, the IdP's keys cannot be
  fetched). Messages say what to do and never contain the token.
* :func:`disable_user` cuts a user off: their status and their managed-secret grants change
  in one transaction, then the :data:`on_user_disabled` hooks run (the OAuth side registers
  "revoke this user's grants at their providers" there).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError
from grantvault_server.identity.claims import ClaimsRejected, Identity, MappedClaims, map_claims
from grantvault_server.identity.state import IdpConfig
from grantvault_server.identity.verify import (
    IdpUnreachable,
    TokenRejected,
    VerifyPolicy,
    verify_token,
)
from grantvault_server.services.grants import revoke_user_oauth_grants
from grantvault_server.services.identity import users
from grantvault_server.services.identity.idp import active_config, read_config, require_config
from grantvault_server.services.vault import Vault

__all__ = [
    "Identity",
    "UserDisabledHook",
    "active_idp_id",
    "delete_user",
    "disable_user",
    "enable_user",
    "on_user_disabled",
    "resolve_user",
    "verified_claims",
]

log = logging.getLogger(__name__)

#: ``hook(vault, app_id, subject)``, awaited after a user was disabled or deleted (and the
#: transaction that did it committed). A failing hook is logged, never re-raised: the user
#: is already cut off at the vault.
UserDisabledHook = Callable[[Vault, str, str], Awaitable[None]]


#: The OAuth side: the user's OAuth grants revoked, tokens dropped, providers told.
on_user_disabled: list[UserDisabledHook] = [revoke_user_oauth_grants]


def jwt_error(reason: str) -> VaultError:
    return VaultError(
        ErrorCode.JWT_VALIDATION_ERROR,
        f"The user token was refused: {reason}. Get a fresh token from the identity provider "
        "(sign the user in again) and retry.",
    )


def idp_unavailable() -> VaultError:
    return VaultError(
        ErrorCode.IDP_UNAVAILABLE,
        "The identity provider's signing keys could not be fetched; retry shortly (the "
        "operator can check the IdP with `grantvault idp show`).",
    )


def _policy(
    config: IdpConfig, max_lifetime_s: float, audiences: tuple[str, ...] | None = None
) -> VerifyPolicy:
    return VerifyPolicy(
        issuer=config.issuer,
        audiences=audiences or config.audiences,
        algorithms=config.algorithms,
        max_lifetime_s=max_lifetime_s,
    )


async def verified_claims(
    vault: Vault,
    config: IdpConfig,
    token: object,
    *,
    audiences: tuple[str, ...] | None = None,
    cache: bool = True,
) -> dict[str, Any]:
    """The claims of ``token`` verified under ``config`` (raises the typed 401/503)."""
    state = vault.identity
    try:
        return await verify_token(
            token,
            _policy(config, vault.settings.user_token_max_lifetime_seconds, audiences),
            state.jwks_for(config.jwks_uri),
            state.tokens if cache else None,
            scope=config.scope,
            now=vault.clock.time(),
        )
    except TokenRejected as exc:
        raise jwt_error(str(exc)) from None
    except IdpUnreachable:
        raise idp_unavailable() from None


def mapped_claims(config: IdpConfig, claims: dict[str, Any]) -> MappedClaims:
    try:
        return map_claims(config, claims)
    except ClaimsRejected as exc:
        raise jwt_error(str(exc)) from None


async def resolve_user(
    vault: Vault, app_id: str, user_token: str, *, actor: dict[str, Any] | None = None
) -> Identity:
    """The app user whose JWT ``user_token`` is; created or synced from its claims.

    ``actor`` is recorded on the audit rows of just-in-time changes (default: the IdP).
    """
    config = require_config(await active_config(vault, app_id))
    claims = await verified_claims(vault, config, user_token)
    mapped = mapped_claims(config, claims)
    return await users.sync_user(
        vault, config, mapped, actor or {"type": "idp", "idp_id": config.id, "via": "user_token"}
    )


async def active_idp_id(vault: Vault, app_id: str) -> str | None:
    """The id of the app's active IdP (what grants store as ``idp_id``), if any."""
    config = await active_config(vault, app_id)
    return None if config is None else config.id


async def run_disable_hooks(vault: Vault, app_id: str, subject: str) -> None:
    for hook in list(on_user_disabled):
        try:
            await hook(vault, app_id, subject)
        except Exception as exc:
            log.error(
                "a user-disabled hook failed",
                extra={
                    "hook": getattr(hook, "__qualname__", repr(hook)),
                    "error": type(exc).__name__,
                },
            )


async def set_user_status(
    vault: Vault,
    app_id: str,
    subject: str,
    status: str,
    actor: dict[str, Any],
    *,
    reason: str | None = None,
) -> list[str]:
    """Change a user's status; disabled/deleted also revokes grants and runs the hooks."""
    async with vault.db.write() as conn:
        config = require_config(await read_config(conn, app_id))
        revoked = await users.change_status(conn, vault, config, subject, status, actor, reason)
    if status != "active":
        await run_disable_hooks(vault, app_id, subject)
    return revoked


async def disable_user(
    vault: Vault, app_id: str, subject: str, actor: dict[str, Any], *, reason: str | None = None
) -> list[str]:
    """Disable ``subject`` (the IdP's user id) in the app; returns the revoked grant ids.

    Their next request with any token is refused (``user_disabled``), their managed-secret
    grants are revoked in the same transaction, and the :data:`on_user_disabled` hooks run.
    """
    return await set_user_status(vault, app_id, subject, "disabled", actor, reason=reason)


async def delete_user(
    vault: Vault, app_id: str, subject: str, actor: dict[str, Any], *, reason: str | None = None
) -> list[str]:
    """Like :func:`disable_user` for a user the IdP deleted (group memberships dropped too)."""
    return await set_user_status(vault, app_id, subject, "deleted", actor, reason=reason)


async def enable_user(
    vault: Vault, app_id: str, subject: str, actor: dict[str, Any], *, reason: str | None = None
) -> None:
    """Let ``subject`` in again. Grants revoked when they were disabled stay revoked."""
    await set_user_status(vault, app_id, subject, "active", actor, reason=reason)
