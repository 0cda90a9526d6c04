"""Routes of the public client's protocol that this vault does not serve yet: ``501``.

An unknown path answers ``404 not_found``, and the public ``alter-sdk`` client turns every
404 into ``GrantNotFoundError``; application code that reacts to that by starting a Connect
flow would do the wrong thing. These exact paths and methods (read from ``alter-sdk`` 0.29.0)
answer ``501 not_implemented`` with a message naming the feature, which the client raises as
a plain ``BackendError``.

They authenticate first, with the same stack as every ``/sdk`` route (key, signature,
nonce): an unauthenticated caller learns nothing an authenticated one would not, and what a
vault serves is part of what an API key lets its holder see. The check is the one every
served route pays, so it costs nothing extra.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter

from grantvault.types.errors import ErrorCode
from grantvault_server.api.deps import CallerDep
from grantvault_server.api.responses import errors
from grantvault_server.errors import VaultError

router = APIRouter(prefix="/sdk", tags=["not implemented"])


@dataclass(frozen=True)
class Unserved:
    """One route the public client calls and this vault does not serve."""

    method: str
    path: str
    feature: str
    client_call: str


UNSERVED: tuple[Unserved, ...] = (
    Unserved("POST", "/proxy", "Proxy mode", "proxy_request()"),
    Unserved("GET", "/approvals/{approval_id}", "Human approvals", "get_approval_status()"),
    Unserved("GET", "/approvals/{approval_id}/result", "Human approvals", "await_approval()"),
    Unserved("POST", "/grants/{grant_id}/mint", "Sibling grants", "mint_grant()"),
    Unserved("POST", "/grants/{grant_id}/delegate", "Delegation to agents", "delegate()"),
    Unserved(
        "DELETE",
        "/grants/{grant_id}/delegations/{agent_id}",
        "Delegation to agents",
        "revoke_delegation()",
    ),
    Unserved(
        "POST",
        "/managed-secrets/connect/session",
        "Managed-secret Connect sessions",
        "create_managed_secret_connect_session()",
    ),
    Unserved("POST", "/identity/resolve", "Identity resolution", "resolve_identity()"),
    Unserved("POST", "/identity/assert", "Identity assertions", "assert_identity()"),
    Unserved("POST", "/agents", "Managed agents", "agents.create()"),
    Unserved("GET", "/agents", "Managed agents", "agents.list(), agents.get_by_name()"),
    Unserved("GET", "/agents/{agent_id}", "Managed agents", "agents.get(), Agent.me()"),
    Unserved(
        "PATCH", "/agents/{agent_id}", "Managed agents", "agents.update(), suspend(), resume()"
    ),
    Unserved("DELETE", "/agents/{agent_id}", "Managed agents", "agents.delete()"),
    Unserved("POST", "/agents/{agent_id}/keys", "Agent keys", "agents.mint_key()"),
    Unserved("GET", "/agents/{agent_id}/keys", "Agent keys", "agents.list_keys()"),
    Unserved(
        "PATCH",
        "/agents/{agent_id}/keys/{key_id}/deprecate",
        "Agent keys",
        "agents.deprecate_key()",
    ),
    Unserved(
        "PATCH",
        "/agents/{agent_id}/keys/{key_id}/undeprecate",
        "Agent keys",
        "agents.undeprecate_key()",
    ),
    Unserved("DELETE", "/agents/{agent_id}/keys/{key_id}", "Agent keys", "agents.revoke_key()"),
    Unserved("POST", "/keys/derive", "API key management over the API", "keys.derive()"),
    Unserved("POST", "/keys/{key_id}/rotate", "API key management over the API", "keys.rotate()"),
    Unserved("DELETE", "/keys/{key_id}", "API key management over the API", "keys.revoke()"),
    Unserved("GET", "/scopes", "The API-key scope catalog", "scopes.list()"),
    Unserved("GET", "/provider-specs", "Provider API specs", "provider_specs.list()"),
    Unserved(
        "GET", "/provider-specs/{kind}/{provider_id}", "Provider API specs", "provider_specs.get()"
    ),
    Unserved(
        "GET",
        "/provider-specs/{kind}/{provider_id}/operations",
        "Provider API specs",
        "provider_specs.list_operations()",
    ),
    Unserved(
        "GET",
        "/provider-specs/{kind}/{provider_id}/operation",
        "Provider API specs",
        "provider_specs.get_operation()",
    ),
    Unserved("POST", "/spans", "Span ingestion", "spans.emit()"),
)

_CLI_HINT = {
    "API key management over the API": " Manage keys with `grantvault keys` instead.",
}


def not_implemented(feature: str) -> VaultError:
    return VaultError(
        ErrorCode.NOT_IMPLEMENTED,
        f"{feature} is not implemented by this vault yet."
        + _CLI_HINT.get(feature, "")
        + " See docs/protocol.md#not-implemented-yet.",
    )


def _handler(entry: Unserved) -> Callable[[CallerDep], Awaitable[None]]:
    async def unserved(caller: CallerDep) -> None:  # noqa: ARG001 (authentication only)
        raise not_implemented(entry.feature)

    unserved.__doc__ = (
        f"{entry.feature} (`{entry.client_call}` in the public client): not implemented by "
        "this vault yet; answers `501 not_implemented` once the request is authenticated."
    )
    return unserved


for _entry in UNSERVED:
    router.add_api_route(
        _entry.path,
        _handler(_entry),
        methods=[_entry.method],
        status_code=501,
        summary=f"{_entry.feature}: not implemented",
        operation_id=f"unserved_{_entry.method.lower()}{_entry.path}".replace("/", "_")
        .replace("{", "")
        .replace("}", "")
        .replace("-", "_"),
        responses=errors(501),
        response_model=None,
        include_in_schema=True,
    )
