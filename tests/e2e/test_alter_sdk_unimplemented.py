"""The unmodified public ``alter-sdk`` client against a real ``grantvault serve``: the calls this
vault does not serve raise a plain backend error (501 ``not_implemented``), never the
``GrantNotFoundError`` that application code may answer by starting a Connect flow; and the
client's background scope-mismatch report lands on the grant."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from alter_sdk import App
from alter_sdk.exceptions import (
    AlterSDKError,
    BackendError,
    GrantNotFoundError,
    ScopeReauthRequiredError,
)

from tests.e2e.conftest import Server, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(module_server: Server) -> Server:
    """One server per backend for this module: every test makes its own app."""
    return module_server


@pytest.fixture
def app_grant(server: Server) -> tuple[str, str, str]:
    """An app, its API key, and a grant on a secret whose allowed host is a local port."""
    name = f"demo-{uuid.uuid4().hex[:6]}"
    server.cli_json("apps", "create", name)
    key = server.cli_json("keys", "create", "--app", name)["api_key"]
    secret = server.cli_json(
        "secrets",
        "create",
        "--app",
        name,
        "--slug",
        "local",
        "--auth",
        "bearer",
        "--allowed-host",
        "127.0.0.1",
    )
    server.cli(
        "secrets", "set-credential", secret["managed_secret_id"], "--stdin", stdin="tok-123456789"
    )
    grant = server.cli_json(
        "grants", "create", "--secret", secret["managed_secret_id"], "--principal", "system"
    )
    return name, key, str(grant["grant_id"])


@pytest.fixture
async def vault(
    server: Server, app_grant: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    monkeypatch.setenv("ALTER_BASE_URL", server.base_url)
    async with App(api_key=app_grant[1]) as client:
        yield client


async def _agent_me(vault: App, agent_id: str) -> Any:
    """``GET /sdk/agents/me`` through an ``Agent`` (its own connection pool, closed here)."""
    agent = vault.get_agent(agent_id)
    try:
        return await agent.me()
    finally:
        await agent.close()


async def test_unserved_calls_raise_a_plain_backend_error(
    vault: App, app_grant: tuple[str, str, str]
) -> None:
    grant_id = app_grant[2]
    some_id = str(uuid.uuid4())
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "proxy_request": lambda: vault.proxy_request(
            "GET", "https://api.example.com/v1/x", grant_id=grant_id
        ),
        "mint_grant": lambda: vault.mint_grant(grant_id, label="sibling"),
        "revoke_delegation": lambda: vault.revoke_delegation(grant_id, some_id),
        "get_approval_status": lambda: vault.get_approval_status(some_id),
        "keys.derive": lambda: vault.keys.derive(scopes=["grants:read"], expires_in=3600),
        "keys.rotate": lambda: vault.keys.rotate(key_id=some_id),
        "keys.revoke": lambda: vault.keys.revoke(key_id=some_id),
        "scopes.list": lambda: vault.scopes.list(),
        "provider_specs.list": lambda: vault.provider_specs.list(),
        "agents.list": lambda: vault.agents.list(),
        "agents.get": lambda: vault.agents.get(some_id),
        "Agent.me": lambda: _agent_me(vault, some_id),
    }
    outcomes: dict[str, str] = {}
    for name, call in calls.items():
        with pytest.raises(AlterSDKError) as caught:
            await call()
        err = caught.value
        assert not isinstance(err, GrantNotFoundError), name
        assert isinstance(err, BackendError), (name, type(err).__name__, err)
        details = getattr(err, "details", None) or {}
        outcomes[name] = f"{type(err).__name__}:{details.get('error', '')}"
        assert "not_implemented" in outcomes[name] or "not implemented" in str(err), (
            name,
            outcomes[name],
            str(err),
        )
    # The calls that are served still work on the same client.
    listed = await vault.list_grants()
    assert [g.grant_id for g in listed.grants] == [grant_id]


@pytest.fixture
def insufficient_scope_api() -> Iterator[int]:
    """A provider API that refuses every call for a missing scope (RFC 6750)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"error":"insufficient_scope"}'
            self.send_response(403)
            self.send_header(
                "WWW-Authenticate", 'Bearer error="insufficient_scope", scope="repo read:org"'
            )
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            return

    port = free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_scope_mismatch_report_flags_the_grant(
    server: Server, insufficient_scope_api: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"demo-{uuid.uuid4().hex[:6]}"
    server.cli_json("apps", "create", name)
    key = server.cli_json("keys", "create", "--app", name)["api_key"]
    host = f"127.0.0.1:{insufficient_scope_api}"
    secret = server.cli_json(
        "secrets",
        "create",
        "--app",
        name,
        "--slug",
        "api",
        "--auth",
        "bearer",
        "--allowed-host",
        host,
    )
    server.cli(
        "secrets", "set-credential", secret["managed_secret_id"], "--stdin", stdin="tok-123456789"
    )
    grant_id = server.cli_json(
        "grants", "create", "--secret", secret["managed_secret_id"], "--principal", "system"
    )["grant_id"]
    monkeypatch.setenv("ALTER_BASE_URL", server.base_url)
    async with App(api_key=key) as vault:
        with pytest.raises(ScopeReauthRequiredError):
            await vault.request("GET", f"http://{host}/repos/acme/app", grant_id=grant_id)
        # The report goes out in the background (2 s budget); closing waits for it.
    item: dict[str, Any] = {}
    for _ in range(50):
        listed = json.loads(server.cli("grants", "list", "--app", name, "--json").stdout)
        item = next(g for g in listed["grants"] if g["grant_id"] == grant_id)
        if item["scope_mismatch"]:
            break
        await asyncio.sleep(0.1)
    assert item["scope_mismatch"] is True and item["scope_mismatch_at"], item
    audit = server.cli("audit", "list", "--app", name, "--json").stdout
    assert "grant.scope_mismatch_reported" in audit and '"repo"' in audit
