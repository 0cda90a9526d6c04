"""Policy answers of a real ``grantvault serve`` reach the unmodified public ``alter-sdk``
client and our SDK ``grantvault`` as the same typed errors (issue 11).

``PolicyViolationError`` (``policy_violation`` and ``policy_evaluation_failed``),
``QuotaExceededError`` and ``RateLimitError`` are raised from the server's own answers; the
``Retry-After`` each client reports is compared with the header the server sent, read off the
wire. And the server judges ``ip_allow`` on the socket peer, or on ``X-Forwarded-For`` only
when the peer is a trusted proxy.

A ``serve`` process runs on the wall clock, which a test cannot move. The rules here are
chosen so that no window edge can change an outcome: see ``_until_refused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import alter_sdk
import alter_sdk.exceptions as alter_errors
import httpx
import pytest

import grantvault
import grantvault.exceptions as gv_errors
from grantvault_server.config import Settings
from grantvault_server.services import (
    apps as app_service,
    grants as grant_service,
    policies as policy_service,
    secrets as secret_service,
)
from grantvault_server.services.vault import Vault
from tests.conftest import OPERATOR, SignedClient
from tests.e2e.conftest import Echo, Server, free_port, running_server, server_env

pytestmark = pytest.mark.e2e

CLIENTS = ["alter_sdk", "grantvault"]


@pytest.fixture(scope="module")
def server(module_server: Server) -> Server:
    """One server per backend for this module: every test makes its own app."""
    return module_server


@contextlib.asynccontextmanager
async def operator_vault(server: Server) -> AsyncIterator[Vault]:
    """The operator's side: a vault on the server's database and master key (as the CLI
    opens one), for the policy service."""
    settings = Settings(
        data_dir=server.data_dir,
        database_url=server.env.get("GRANTVAULT_DATABASE_URL"),
        master_key=server.env.get("GRANTVAULT_MASTER_KEY"),  # type: ignore[arg-type]
    )
    vault = await Vault.start(settings, migrate_schema=False, allow_generate=False)
    try:
        yield vault
    finally:
        await vault.close()


async def new_app(
    server: Server, echo: Echo, policies: dict[str, dict[str, Any]]
) -> tuple[str, str, str]:
    """An app with these policies, its API key and a system grant on a secret whose allowed
    host is the echo endpoint: ``(app, api key, grant id)``. Made by the operator's services
    in one session (the CLI would open the vault once per command)."""
    name = f"pol-{uuid.uuid4().hex[:8]}"
    async with operator_vault(server) as vault:
        app = await app_service.register_app(vault, name, OPERATOR)
        _, key = await app_service.create_key(vault, app, OPERATOR)
        secret = await secret_service.create_secret(
            vault, app, OPERATOR, template="openai", slug="echo", allowed_hosts=[echo.host_rule]
        )
        await secret_service.set_credential(
            vault, app, secret, {"token": "tok-policy-123456"}, OPERATOR
        )
        grant = await grant_service.create_grant(
            vault, app, secret, OPERATOR, principal_type="system"
        )
        for policy, document in policies.items():
            await policy_service.put_policy(vault, app, policy, document, actor=OPERATOR)
    return name, key, str(grant["grant_id"])


async def put_policy(server: Server, app: str, name: str, document: dict[str, Any]) -> None:
    async with operator_vault(server) as vault:
        target = await app_service.get_app(vault, app)
        await policy_service.put_policy(vault, target, name, document, actor=OPERATOR)


@contextlib.asynccontextmanager
async def open_client(
    which: str, server: Server, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Any, Any]]:
    """The client and its exceptions module."""
    if which == "alter_sdk":
        monkeypatch.setenv("ALTER_BASE_URL", server.base_url)
        async with alter_sdk.App(api_key=api_key) as client:
            yield client, alter_errors
    else:
        async with grantvault.App(api_key=api_key, base_url=server.base_url) as client:
            yield client, gv_errors


@pytest.fixture
def token_answers(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Response]:
    """Every answer to ``POST /sdk/token`` either client receives, as it came off the wire
    (both clients send through ``httpx.AsyncClient``; nothing about them is changed)."""
    seen: list[httpx.Response] = []
    original = httpx.AsyncClient.send

    async def send(self: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> httpx.Response:
        response = await original(self, request, **kw)
        if request.url.path == "/sdk/token":
            seen.append(response)
        return response

    monkeypatch.setattr(httpx.AsyncClient, "send", send)
    return seen


async def _until_refused(client: Any, error: type[Exception], url: str, grant_id: str) -> Any:
    """Call until ``error`` is raised; return it.

    The rules below allow one call per window (a calendar month in UTC, a UTC minute). A
    window can end between two calls at most once in this loop (three calls take well under
    a minute), so the third call at the latest is refused even if the test straddles the
    turn of a month or a minute: the outcome does not depend on the wall clock.
    """
    for _ in range(3):
        try:
            await client.request("GET", url, grant_id=grant_id)
        except error as exc:
            return exc
        await _settle()
    raise AssertionError(f"{error.__name__} was never raised")


async def _settle() -> None:
    """Let the client's background work after a call (its audit report to the vault) finish,
    so that the refusal is the last answer the client reads (``last_rate_limit``)."""
    others = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=10)


# -- the three error classes, from both clients -------------------------------------------------


@pytest.mark.parametrize("which", CLIENTS)
async def test_a_denial_raises_policy_violation_error(
    server: Server, echo: Echo, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    app, key, grant_id = await new_app(server, echo, {"read-only": {"rules": {"methods": ["GET"]}}})
    async with open_client(which, server, key, monkeypatch) as (client, errors):
        with pytest.raises(errors.PolicyViolationError) as caught:
            await client.request("POST", f"{echo.url}/v1/charges", grant_id=grant_id)
        error = caught.value
        assert type(error) is errors.PolicyViolationError
        assert isinstance(error, errors.BackendError)
        assert error.policy_error == "policy_violation"
        assert (error.details["policy"], error.details["rule"]) == ("read-only", "methods")
        assert error.details["policy_version"] == 1
        assert "read-only" in str(error) and "POST" in str(error)
        # Allowed calls still go through, and the refused one never reached the endpoint.
        response = await client.request("GET", f"{echo.url}/v1/charges", grant_id=grant_id)
        assert response.status_code == 200
        assert [seen["method"] for seen in echo.seen] == ["GET"]

        # A rule that cannot be evaluated (groups, but no user token) refuses too, with
        # its own code, as the same class.
        await put_policy(server, app, "finance", {"rules": {"groups_any": ["finance"]}})
        with pytest.raises(errors.PolicyViolationError) as failed:
            await client.request("GET", f"{echo.url}/v1/charges", grant_id=grant_id)
        assert failed.value.policy_error == "policy_evaluation_failed"
        assert (failed.value.details["policy"], failed.value.details["rule"]) == (
            "finance",
            "groups_any",
        )
        assert len(echo.seen) == 1


@pytest.mark.parametrize("which", CLIENTS)
async def test_a_used_up_quota_raises_quota_exceeded_error_with_the_servers_wait(
    server: Server,
    echo: Echo,
    monkeypatch: pytest.MonkeyPatch,
    token_answers: list[httpx.Response],
    which: str,
) -> None:
    # A month window: see _until_refused for why its end cannot change the outcome.
    monthly = {"rules": {"quota": {"limit": 1, "window": "month", "per": "grant"}}}
    _, key, grant_id = await new_app(server, echo, {"monthly": monthly})
    async with open_client(which, server, key, monkeypatch) as (client, errors):
        error = await _until_refused(
            client, errors.QuotaExceededError, f"{echo.url}/v1/ping", grant_id
        )
    assert type(error) is errors.QuotaExceededError
    sent = token_answers[-1]
    assert sent.status_code == 429 and sent.json()["error"] == "quota_exceeded"
    # The wait the client reports is exactly the one the server sent (up to a month).
    assert error.retry_after == int(sent.headers["retry-after"])
    assert 1 <= error.retry_after <= 31 * 24 * 3600
    assert (error.details["policy"], error.details["rule"]) == ("monthly", "quota")
    # Only the allowed call reached the endpoint.
    assert len(echo.seen) == len(token_answers) - 1


@pytest.mark.parametrize("which", CLIENTS)
async def test_a_policy_rate_limit_raises_rate_limit_error_with_the_budget(
    server: Server,
    echo: Echo,
    monkeypatch: pytest.MonkeyPatch,
    token_answers: list[httpx.Response],
    which: str,
) -> None:
    minute = {"rules": {"rate_limit": {"per_minute": 1, "per": "grant"}}}
    _, key, grant_id = await new_app(server, echo, {"one-a-minute": minute})
    async with open_client(which, server, key, monkeypatch) as (client, errors):
        error = await _until_refused(client, errors.RateLimitError, f"{echo.url}/v1/ping", grant_id)
        budget = client.last_rate_limit
    assert type(error) is errors.RateLimitError
    sent = token_answers[-1]
    assert sent.status_code == 429 and sent.json()["error"] == "rate_limit_exceeded"
    assert error.retry_after == int(sent.headers["retry-after"])
    assert 1 <= error.retry_after <= 60
    assert (error.scope, error.limit, error.window_seconds) == ("policy", 1, 60)
    assert (error.details["policy"], error.details["rule"]) == ("one-a-minute", "rate_limit")
    # The budget headers of that answer are the policy's: one call a minute, none left.
    assert budget is not None and (budget.limit, budget.remaining) == (1, 0)
    assert int(budget.reset_at.timestamp()) == int(sent.headers["x-ratelimit-reset"])


# -- the caller's address: X-Forwarded-For only from a trusted proxy -----------------------------


async def _token_with_forwarded_for(
    server: Server, api_key: str, grant_id: str, url: str, forwarded_for: str | None
) -> httpx.Response:
    body = {"grant_id": grant_id, "reason": None, "request": {"method": "GET", "url": url}}
    payload = json.dumps(body, separators=(",", ":")).encode()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        headers = SignedClient(http, api_key).headers("POST", "/sdk/token", payload)
        if forwarded_for is not None:
            headers["X-Forwarded-For"] = forwarded_for
        return await http.post("/sdk/token", content=payload, headers=headers)


OFFICE = {"rules": {"ip_allow": ["10.0.0.0/8"]}}


async def test_forwarded_for_from_the_default_trusted_proxy_is_honoured(
    server: Server, echo: Echo
) -> None:
    # The test connects from 127.0.0.1, the default GRANTVAULT_TRUSTED_PROXIES: it stands
    # for a reverse proxy on the same machine, whose X-Forwarded-For names the client.
    _, key, grant_id = await new_app(server, echo, {"office": OFFICE})
    url = f"{echo.url}/v1/ping"
    inside = await _token_with_forwarded_for(server, key, grant_id, url, "10.1.2.3")
    assert inside.status_code == 200, inside.text
    outside = await _token_with_forwarded_for(server, key, grant_id, url, "198.51.100.7")
    assert outside.status_code == 403 and outside.json()["rule"] == "ip_allow"
    assert "198.51.100.7" in outside.json()["message"]
    direct = await _token_with_forwarded_for(server, key, grant_id, url, None)
    assert direct.status_code == 403 and "127.0.0.1" in direct.json()["message"]


@pytest.fixture
def untrusting_server(tmp_path: Path) -> Iterator[Server]:
    """A server whose only trusted proxy is 10.9.9.9: the test's 127.0.0.1 is a client."""
    env = server_env(tmp_path, "", "sqlite", free_port(), GRANTVAULT_TRUSTED_PROXIES="10.9.9.9")
    with running_server(env, tmp_path / "server.log", migrate=False) as srv:
        yield srv


async def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
    untrusting_server: Server, echo: Echo
) -> None:
    server = untrusting_server
    app, key, grant_id = await new_app(server, echo, {"office": OFFICE})
    url = f"{echo.url}/v1/ping"
    spoofed = await _token_with_forwarded_for(server, key, grant_id, url, "10.1.2.3")
    assert spoofed.status_code == 403, spoofed.text
    body = spoofed.json()
    assert (body["error"], body["policy"], body["rule"]) == (
        "policy_violation",
        "office",
        "ip_allow",
    )
    # The address judged is the socket peer, not the header.
    assert "127.0.0.1" in body["message"] and "10.1.2.3" not in body["message"]
    assert "access_token" not in spoofed.text
    # The same server allows its real peer once the policy does.
    await put_policy(server, app, "office", {"rules": {"ip_allow": ["127.0.0.0/8"]}})
    allowed = await _token_with_forwarded_for(server, key, grant_id, url, "198.51.100.7")
    assert allowed.status_code == 200, allowed.text
