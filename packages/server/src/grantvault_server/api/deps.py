"""The authentication stack of the ``/sdk/*`` audience: API key, signature, nonce."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.types import Scope

from grantvault.protocol.key_format import is_valid_key
from grantvault.protocol.signing import (
    HEADER_ACTOR_ID,
    HEADER_CALLER,
    HEADER_CALLER_TYPE,
    HEADER_CONTEXT,
)
from grantvault.types.errors import ErrorCode
from grantvault_server.auth.api_keys import KeyRecord, check_key_state
from grantvault_server.auth.signing import verify_signature
from grantvault_server.errors import VaultError
from grantvault_server.services.apps import App, lookup_key
from grantvault_server.services.last_used import needs_touch
from grantvault_server.services.nonces import claim_nonce
from grantvault_server.services.vault import Vault


async def get_vault(request: Request) -> Vault:
    # async: a plain def dependency would cost a thread-pool hop on every request.
    vault: Vault = request.app.state.vault
    return vault


VaultDep = Annotated[Vault, Depends(get_vault)]


@dataclass(frozen=True)
class Caller:
    """The authenticated app behind a signed request, and the audit actor it is recorded as."""

    app: App
    key: KeyRecord
    actor: dict[str, Any]
    nonce: str


def _invalid_key(message: str) -> VaultError:
    return VaultError(ErrorCode.INVALID_KEY, message)


def _actor(key: KeyRecord, actor_headers: dict[str, str]) -> dict[str, Any]:
    actor: dict[str, Any] = {"type": "api_key", "key_id": key.id, "key_prefix": key.key_prefix}
    if caller := actor_headers.get(HEADER_CALLER):
        actor["caller"] = caller[:255]
    if caller_type := actor_headers.get(HEADER_CALLER_TYPE):
        actor["caller_type"] = caller_type[:32]
    if actor_id := actor_headers.get(HEADER_ACTOR_ID):
        actor["actor_id"] = actor_id[:64]
    if raw := actor_headers.get(HEADER_CONTEXT):
        try:
            context = json.loads(raw) if len(raw) <= 4096 else None
        except (ValueError, RecursionError):
            context = None
        if isinstance(context, dict):
            actor["context"] = {str(k)[:64]: str(v)[:512] for k, v in list(context.items())[:20]}
    return actor


def signed_target(scope: Scope) -> str:
    """The path and query the client signed, taken from the ASGI scope alone.

    Not ``request.url``: that is an absolute URL built with the request's Host header, and
    nothing here may depend on what a client puts there. The escaping of ``?``, ``#`` and
    ``\\`` is the one ``request.url.path`` applies, so signatures verify exactly as before.
    """
    path: str = scope["path"]
    path = path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    query = scope.get("query_string", b"").decode("latin-1")
    return path + (f"?{query}" if query else "")


async def _verify(request: Request, vault: Vault) -> Caller:
    """Verify key, signature, clock and key state; the nonce is left to the caller."""
    presented = request.headers.get("x-api-key", "")
    if not presented:
        raise _invalid_key(
            "The x-api-key header is missing; create a key with `grantvault keys create`."
        )
    if not is_valid_key(presented):
        raise _invalid_key("The API key is malformed (expected alter_rk_<22>_<6>); copy it again.")
    body = await request.body()
    target = signed_target(request.scope)
    key = await lookup_key(vault, presented)
    if key is None:
        raise _invalid_key("The API key is not known to this vault.")
    verified = verify_signature(
        api_key=presented,
        method=request.method,
        target=target,
        body=body,
        headers=request.headers,
        now=time.time(),
        skew_seconds=vault.settings.clock_skew_seconds,
    )
    now = vault.clock.now()
    check_key_state(key, now)
    # Only now, with the key proven: an unsigned request must not spend a victim key's budget.
    request.app.state.limiter.charge_key(request.scope, key.id, key.app_id)
    return Caller(
        app=App(key.app_id, key.app_name, now, key.policy_generation),
        key=key,
        actor=_actor(key, verified.actor),
        nonce=verified.nonce,
    )


async def authenticate(request: Request, vault: VaultDep) -> Caller:
    """Verify key, signature, clock and nonce, in that order; raise the typed 401 otherwise."""
    caller = await _verify(request, vault)
    now = caller.app.created_at
    touch = needs_touch(caller.key.last_used_at, now)
    if not await claim_nonce(vault, caller.key.id, caller.nonce, now, touch=touch):
        raise replayed()
    return caller


async def authenticate_deferred_nonce(request: Request, vault: Vault) -> Caller:
    """Like :func:`authenticate`, but the route claims the nonce inside its own write.

    For the credential-retrieval hot path: the nonce row and the audit row commit in one
    transaction, and a replay is refused before anything leaves (the transaction rolls back).
    """
    return await _verify(request, vault)


def replayed() -> VaultError:
    return VaultError(
        ErrorCode.REPLAYED_REQUEST, "This request was already received (nonce reused)."
    )


CallerDep = Annotated[Caller, Depends(authenticate)]
