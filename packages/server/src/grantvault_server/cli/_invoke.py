"""Run an administrative operation here (on the local database) or on a remote vault.

With ``GRANTVAULT_SERVER`` and ``GRANTVAULT_TOKEN`` set (or ``--server``/``--token`` before
the command), :func:`call` sends the operation to that vault's admin API; otherwise it opens
the local database, as the CLI always did, and acts as an owner (whoever can read the
database and the master key holds every secret anyway). Both paths run the same handler
(``services.admin``) and return the same dictionary, which the command prints as JSON or
renders for humans, so the output is identical whichever way it went.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx

from grantvault.types.errors import ErrorCode
from grantvault_server.cli._common import fail, run, with_vault
from grantvault_server.errors import VaultError
from grantvault_server.services.admin.catalog import find
from grantvault_server.services.admin.registry import OpContext, Operation
from grantvault_server.services.operators import Operator, Principal
from grantvault_server.services.vault import Vault, operator_actor
from grantvault_server.services.vault_time import utcnow

#: How long a remote call may take before the CLI gives up (discovery can take seconds).
REMOTE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Remote:
    server: str
    token: str


_target: tuple[str | None, str | None] | None = None


def configure_target(server: str | None, token: str | None) -> None:
    """The ``--server``/``--token`` options (which also read the environment variables)."""
    global _target
    _target = (server, token)


def remote_target() -> Remote | None:
    """The remote vault to drive; ``None`` for the local database."""
    if _target is not None:
        server, token = (_target[0] or "").strip(), (_target[1] or "").strip()
    else:
        server = os.environ.get("GRANTVAULT_SERVER", "").strip()
        token = os.environ.get("GRANTVAULT_TOKEN", "").strip()
    if not server and not token:
        return None
    if not server or not token:
        missing = "GRANTVAULT_TOKEN" if server else "GRANTVAULT_SERVER"
        fail(
            f"{missing} is not set: set both GRANTVAULT_SERVER and GRANTVAULT_TOKEN, or neither "
            "to work on the local database.",
            2,
        )
    if not server.startswith(("https://", "http://")):
        fail("GRANTVAULT_SERVER must be a URL such as https://vault.example.com.", 2)
    return Remote(server.rstrip("/"), token)


def local_principal() -> Principal:
    """The operator on this machine: an owner, recorded as the OS user (``operator_actor``)."""
    now = utcnow()
    operator = Operator(
        id="local",
        name="local",
        role="owner",
        apps=None,
        has_password=False,
        totp_enabled=False,
        sso_subject=None,
        disabled=False,
        locked_until=None,
        created_at=now,
        last_login_at=None,
    )
    return Principal(operator=operator, role="owner", apps=None, via="cli")


def call(operation: str, /, **params: Any) -> dict[str, Any]:
    """Run ``operation`` with ``params`` (``None`` values are left out); a refusal becomes
    its message on stderr and exit code 1, the same in both modes."""
    try:
        return call_or_raise(operation, **params)
    except VaultError as exc:
        fail(exc.message, 1)
        raise AssertionError("unreachable") from None


def call_or_raise(operation: str, /, **params: Any) -> dict[str, Any]:
    """:func:`call`, but a refusal is raised as the :class:`VaultError` (code, message and
    the envelope's extra fields, such as the ``errors`` list of an invalid policy), locally
    and remotely alike, for commands that show more than the message."""
    op = find(operation)
    values = {k: v for k, v in params.items() if v is not None}
    remote = remote_target()
    if remote is None:
        holder: list[VaultError] = []

        async def local(vault: Vault) -> dict[str, Any]:
            try:
                return await _local(vault, op, values)
            except VaultError as exc:
                holder.append(exc)
                return {}

        result = run(with_vault(local))
        if holder:
            raise holder[0]
        return result
    return _remote(op, values, remote)


async def _local(vault: Vault, op: Operation, values: dict[str, Any]) -> dict[str, Any]:
    from pydantic import ValidationError

    try:
        params = op.params.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "input"
        raise VaultError(
            ErrorCode.INVALID_REQUEST, f"Invalid request: {where}: {first['msg']}."
        ) from None
    ctx = OpContext(vault=vault, principal=local_principal(), actor=operator_actor())
    return await op.handler(ctx, params)


def _remote(op: Operation, values: dict[str, Any], remote: Remote) -> dict[str, Any]:
    path = "/admin/v1" + op.url(values)
    rest = {k: v for k, v in values.items() if k not in op.path_fields}
    verify: Any = os.environ.get("GRANTVAULT_CA_BUNDLE") or True
    try:
        with httpx.Client(
            base_url=remote.server,
            headers={"Authorization": f"Bearer {remote.token}", "User-Agent": "grantvault-cli"},
            timeout=REMOTE_TIMEOUT_S,
            verify=verify,
        ) as client:
            if op.method in {"GET", "DELETE"}:
                response = client.request(op.method, path, params=_query(rest))
            else:
                response = client.request(op.method, path, json=rest)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {remote.server}: {type(exc).__name__}: {exc}", 2)
        raise AssertionError("unreachable") from None
    return _answer(response)


def _query(values: dict[str, Any]) -> list[tuple[str, str | int | float | bool | None]]:
    pairs: list[tuple[str, str | int | float | bool | None]] = []
    for key, value in values.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            pairs.append((key, str(item).lower() if isinstance(item, bool) else str(item)))
    return pairs


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict):
        return body
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        try:
            code = ErrorCode(body["error"])
        except ValueError:
            code = ErrorCode.INTERNAL_ERROR
        extra = {k: v for k, v in body.items() if k not in {"error", "message"}}
        raise VaultError(code, str(body.get("message", "")), status=response.status_code, **extra)
    fail(f"the vault answered HTTP {response.status_code} without an error body", 1)
    raise AssertionError("unreachable")


__all__ = ["Remote", "call", "local_principal", "remote_target"]
