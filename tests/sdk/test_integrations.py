"""The integrations with the real frameworks: FastAPI (TestClient), FastMCP (its in-memory
client) and LangChain (``StructuredTool.ainvoke``). The vault is scripted with MockTransport;
the frameworks are real."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

import grantvault as gv
from grantvault import App
from grantvault.fastapi import GrantvaultFastAPI, current_user_token
from grantvault.langchain import vault_tool
from grantvault.mcp import GrantvaultMCP, ProviderContext
from tests.sdk.fakes import BASE_URL, FakeVault, error, token_answer

GRANT = "0b6f7c1e-8a7d-4a4e-9b52-5d3f8f7f2a11"
SESSION = {
    "session_token": "sess-1",
    "connect_url": "http://127.0.0.1:8080/sdk/oauth/connect#session=sess-1",
    "expires_in": 600,
    "expires_at": "2030-01-01T00:00:00Z",
}


def echo_provider(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"authorization": request.headers.get("authorization")})


class ConcurrentVault:
    """Answers /sdk/token only once two token calls are in flight at the same time."""

    def __init__(self, vault: FakeVault, expected: int) -> None:
        self.vault = vault
        self.expected = expected
        self.arrived = 0
        self.both: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/sdk/token":
            return self.vault(request)
        if self.both is None:
            self.both = asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.expected:
            self.both.set()
        await asyncio.wait_for(self.both.wait(), timeout=10)
        self.vault.on("/sdk/token", lambda r: httpx.Response(200, json=token_answer(
            access_token=f"tok-for-{json.loads(r.content).get('user_token', 'nobody')}")))  # fmt: skip
        return self.vault(request)


def test_fastapi_users_never_share_a_token() -> None:
    vault = FakeVault()
    scripted = ConcurrentVault(vault, expected=2)
    gv_fastapi = GrantvaultFastAPI(
        vault.api_key,
        base_url=BASE_URL,
        transport=httpx.MockTransport(scripted),
        provider_transport=httpx.MockTransport(echo_provider),
    )
    api = FastAPI()

    @api.get("/me")
    async def me(client: App = Depends(gv_fastapi)) -> dict[str, Any]:  # noqa: B008
        seen_before = current_user_token()
        response = await client.request("GET", "https://api.example.com/me", provider="github")
        assert current_user_token() == seen_before  # unchanged across the awaits
        return {"jwt": seen_before, **response.json()}

    @api.get("/public")
    async def public(client: App = Depends(gv_fastapi.optional)) -> dict[str, Any]:  # noqa: B008
        response = await client.request("GET", "https://api.example.com/me", provider="github")
        return {"jwt": current_user_token(), **response.json()}

    results: dict[str, Any] = {}
    with TestClient(api) as http:

        def call(user: str) -> None:
            results[user] = http.get("/me", headers={"Authorization": f"Bearer jwt-{user}"}).json()

        threads = [threading.Thread(target=call, args=(u,)) for u in ("alice", "bob")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert results["alice"] == {"jwt": "jwt-alice", "authorization": "Bearer tok-for-jwt-alice"}
        assert results["bob"] == {"jwt": "jwt-bob", "authorization": "Bearer tok-for-jwt-bob"}
        denied = http.get("/me")
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        assert http.get("/me", headers={"Authorization": "Basic abc"}).status_code == 401
        anonymous = http.get("/public").json()
        assert anonymous == {"jwt": None, "authorization": "Bearer tok-for-nobody"}
        signed_in = http.get("/public", headers={"Authorization": "Bearer jwt-carol"}).json()
        assert signed_in["authorization"] == "Bearer tok-for-jwt-carol"
    assert current_user_token() is None
    bodies = vault.bodies("/sdk/token")
    assert sorted(b.get("user_token", "-") for b in bodies) == [
        "-", "jwt-alice", "jwt-bob", "jwt-carol"]  # fmt: skip
    with pytest.raises(gv.AlterSDKError):
        GrantvaultFastAPI(vault.api_key, base_url=BASE_URL, user_token_getter=lambda: "x")
    asyncio.run(gv_fastapi.close())


def _mcp_vault(*token_replies: Any) -> tuple[FakeVault, App]:
    vault = (
        FakeVault()
        .on("/sdk/token", *token_replies)
        .on("/sdk/oauth/connect/session", httpx.Response(200, json=SESSION))
    )
    app = App(
        vault.api_key,
        base_url=BASE_URL,
        transport=httpx.MockTransport(vault),
        provider_transport=httpx.MockTransport(echo_provider),
    )
    return vault, app


async def test_mcp_tool_hides_the_context_and_answers_authorization_required() -> None:
    from fastmcp import Client, FastMCP

    vault, app = _mcp_vault(
        httpx.Response(200, json=token_answer()), error(404, "grant_not_found", "no grant")
    )
    gv_mcp = GrantvaultMCP(app)
    mcp = FastMCP("repos")

    @mcp.tool
    @gv_mcp.tool("github", label="work")
    async def whoami(ctx: ProviderContext, per_page: int = 5) -> dict[str, Any]:
        """Who the GitHub credential belongs to."""
        response = await ctx.request(
            "GET", "https://api.github.com/user", query_params={"per_page": per_page}
        )
        return {"auth": response.json()["authorization"], "provider": ctx.provider}

    async with Client(mcp) as client:
        (tool,) = await client.list_tools()
        assert tool.name == "whoami"
        assert set(tool.input_schema["properties"]) == {"per_page"}
        ok = await client.call_tool("whoami", {"per_page": 3})
        assert ok.structured_content == {"auth": "Bearer tok-secret-value", "provider": "github"}
        missing = await client.call_tool("whoami", {})
        assert missing.structured_content == {
            "error": "authorization_required",
            "message": "Please authorize access to github, then retry.",
            "connect_url": SESSION["connect_url"],
        }
    await app.close()
    first, _second = vault.bodies("/sdk/token")
    assert first["provider_id"] == "github" and first["label"] == "work"
    token_request = vault.calls[0][2]
    assert json.loads(token_request.headers["x-alter-context"]) == {
        "tool": "whoami",
        "framework": "mcp",
    }
    (session,) = vault.bodies("/sdk/oauth/connect/session")
    assert session["allowed_providers"] == ["github"]
    assert session["requested_grant"] == {"label": "work"}
    with pytest.raises(TypeError, match="ProviderContext"):
        gv_mcp.tool("github")(lambda x: x)


async def test_langchain_tool_carries_run_and_thread_ids() -> None:
    from langchain_core.tools import StructuredTool

    vault, app = _mcp_vault(
        httpx.Response(200, json=token_answer()), error(404, "grant_not_found", "no grant")
    )

    @vault_tool(app, "github")
    async def list_repos(ctx: ProviderContext, owner: str, per_page: int = 5) -> str:
        """List an owner's repositories."""
        response = await ctx.request("GET", f"https://api.github.com/users/{owner}/repos")
        return str(response.json()["authorization"])

    @vault_tool(app, "github", name="plain")
    async def plain(owner: str) -> str:
        """A tool without a context parameter, calling the client itself."""
        response = await app.request("GET", "https://api.github.com/x", provider="github")
        return str(response.status_code)

    assert isinstance(list_repos, StructuredTool)
    assert set(list_repos.args) == {"owner", "per_page"}
    assert list_repos.description == "List an owner's repositories."
    out = await list_repos.ainvoke(
        {"owner": "octo"}, config={"configurable": {"thread_id": "thread-9"}}
    )
    assert out == "Bearer tok-secret-value"
    token_calls = [c[2] for c in vault.calls if c[0] == "/sdk/token"]
    context = json.loads(token_calls[0].headers["x-alter-context"])
    assert context["tool"] == "list_repos" and context["framework"] == "langchain"
    assert context["thread_id"] == "thread-9" and len(context["run_id"]) == 36
    message = await plain.ainvoke({"owner": "octo"}, config={"metadata": {"run_id": "run-7"}})
    assert message == f"Authorization required for github. Please visit: {SESSION['connect_url']}"
    token_calls = [c[2] for c in vault.calls if c[0] == "/sdk/token"]
    context = json.loads(token_calls[1].headers["x-alter-context"])
    assert context == {"tool": "plain", "framework": "langchain", "run_id": "run-7"}
    await app.close()
    with pytest.raises(TypeError):
        vault_tool(app, "github")(lambda: None)  # type: ignore[arg-type, return-value]


async def test_ambient_context_reaches_direct_calls() -> None:
    vault, app = _mcp_vault(httpx.Response(200, json=token_answer()))
    calls: list[Callable[[], Awaitable[Any]]] = []
    with gv.audit_scope(run_id="outer"):
        calls.append(lambda: app.request("GET", "https://api.example.com/x", grant_id=GRANT))
        await calls[0]()
    await app.request("GET", "https://api.example.com/x", grant_id=GRANT, context={"k": "v"})
    await app.close()
    first, second = (c[2] for c in vault.calls if c[0] == "/sdk/token")
    assert json.loads(first.headers["x-alter-context"]) == {"run_id": "outer"}
    assert json.loads(second.headers["x-alter-context"]) == {"k": "v"}
