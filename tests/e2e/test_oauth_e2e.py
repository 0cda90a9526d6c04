"""OAuth Connect end to end: real ``grantvault serve`` processes, the real OIDC peer, the
unmodified ``alter-sdk`` client, and a browser played over HTTP.

Also the cross-process refresh proof: two servers sharing one PostgreSQL database receive
concurrent retrievals of one expired grant, and the peer sees exactly one refresh (it kills
the whole grant on refresh-token reuse, so a double refresh would show as a dead grant).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from alter_sdk import App

from grantvault.protocol.signing import sign_request
from tests.e2e.conftest import (
    Server,
    expire_access_token,
    free_port,
    running_server,
    server_env,
)
from tests.oauth_flow import with_query
from tests.peer import BASIC_CLIENT, Peer, start_peer

pytestmark = pytest.mark.e2e


@dataclass
class World:
    server: Server
    peer: Peer
    app: str
    key: str


def setup_world(server: Server, peer: Peer) -> World:
    app = f"oauth-{uuid.uuid4().hex[:6]}"
    server.cli_json("apps", "create", app)
    key = server.cli_json("keys", "create", "--app", app)["api_key"]
    server.cli(
        "providers", "add", "--app", app, "peer",
        "--issuer", peer.issuer,
        "--client-id", BASIC_CLIENT[0],
        "--client-secret-stdin",
        "--scopes", "openid profile offline_access",
        "--api-host", f"127.0.0.1:{peer.port}",
        stdin=BASIC_CLIENT[1],
    )  # fmt: skip
    return World(server, peer, app, key)


@pytest.fixture
def world(tmp_path: Path, database_url: str, backend: str) -> Iterator[World]:
    port = free_port()
    peer = start_peer(
        PEER_ACCESS_TOKEN_TTL=60, PEER_REDIRECT_URIS=f"http://127.0.0.1:{port}/sdk/oauth/callback"
    )
    env = server_env(
        tmp_path, database_url, backend, port, GRANTVAULT_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}"
    )
    try:
        with running_server(env, tmp_path / "server.log", migrate=backend == "postgresql") as srv:
            yield setup_world(srv, peer)
    finally:
        peer.stop()


def sign_in(connect_url: str, user: str) -> httpx.Response:
    """A browser: open the link, agree, sign in at the peer, land on the result page."""
    with httpx.Client(timeout=15) as browser:
        r = browser.get(connect_url, follow_redirects=True)
        assert r.status_code == 200, r.text[:500]
        csrf = re.search(r'name="csrf" value="([^"]+)"', r.text)
        assert csrf, r.text[:500]
        sid = re.search(r"/connect/s/([0-9a-f-]{36})", str(r.url))
        assert sid
        base = str(r.url).split("/connect/")[0]
        r = browser.post(
            f"{base}/connect/s/{sid.group(1)}/authorize",
            data={"csrf": csrf.group(1), "provider": "peer"},
        )
        url = urljoin(base, r.headers["location"])
        for _ in range(20):
            if "/interaction/" in url:
                url = with_query(url, user=user)
            r = browser.get(url)
            if r.status_code not in (302, 303):
                return r
            url = urljoin(url, r.headers["location"])
    raise AssertionError("too many redirects")


async def test_connect_then_request_through_the_unmodified_alter_sdk(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALTER_BASE_URL", world.server.base_url)
    async with App(api_key=world.key) as vault:
        session = await vault.create_connect_session(allowed_providers=["peer"])
        page = await asyncio.to_thread(sign_in, session.connect_url, "kate")
        assert page.status_code == 200 and "Connected" in page.text
        (result,) = await vault.poll_connect_session(session.session_token, timeout=10)
        assert result.provider_id == "peer" and result.account_identifier == "kate"
        assert result.operation == "creation"
        r = await vault.request("GET", f"{world.peer.issuer}/api/whoami", grant_id=result.grant_id)
        assert r.status_code == 200 and r.json()["sub"] == "kate"
        # Once the stored token has expired the vault refreshes behind the scenes (expired
        # in the server's database: the process has its own clock, no need to wait).
        await expire_access_token(world.server, result.grant_id)
        r = await vault.request("GET", f"{world.peer.issuer}/api/whoami", grant_id=result.grant_id)
        assert r.status_code == 200 and r.json()["sub"] == "kate"
        grants = await vault.list_grants(provider_id="peer")
        assert [g.grant_id for g in grants.grants] == [result.grant_id]
        revoked = await vault.revoke_grant(result.grant_id)
        assert revoked.success
    refreshes = [
        e for e in world.peer.log_events("grant.success") if e.get("grant_type") == "refresh_token"
    ]
    assert len(refreshes) == 1


def signed_token_request(base_url: str, key: str, grant_id: str, url: str) -> httpx.Request:
    body = json.dumps(
        {"grant_id": grant_id, "reason": None, "request": {"method": "GET", "url": url}},
        separators=(",", ":"),
    ).encode()
    headers = sign_request(key, method="POST", target="/sdk/token", body=body)
    headers.update({"x-api-key": key, "Content-Type": "application/json"})
    return httpx.Request("POST", f"{base_url}/sdk/token", content=body, headers=headers)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_two_servers_on_one_database_refresh_an_expired_grant_once(
    tmp_path: Path, database_url: str, backend: str
) -> None:
    port_a, port_b = free_port(), free_port()
    peer = start_peer(
        PEER_ACCESS_TOKEN_TTL=60,
        PEER_REDIRECT_URIS=f"http://127.0.0.1:{port_a}/sdk/oauth/callback",
    )
    env_a = server_env(
        tmp_path, database_url, backend, port_a,
        GRANTVAULT_PUBLIC_BASE_URL=f"http://127.0.0.1:{port_a}",
    )  # fmt: skip
    env_b = {**env_a, "GRANTVAULT_PORT": str(port_b)}
    try:
        with (
            running_server(env_a, tmp_path / "a.log", migrate=True) as a,
            running_server(env_b, tmp_path / "b.log", migrate=False) as b,
        ):
            w = setup_world(a, peer)
            with httpx.Client(timeout=15) as c:
                session = c.send(_signed(a.base_url, w.key, "/sdk/oauth/connect/session",
                                         {"allowed_providers": ["peer"]})).json()  # fmt: skip
            page = sign_in(session["connect_url"], "liam")
            assert "Connected" in page.text
            with httpx.Client(timeout=15) as c:
                polled = c.send(_signed(a.base_url, w.key, "/sdk/oauth/connect/session/poll",
                                        {"session_token": session["session_token"]})).json()  # fmt: skip
            grant_id = polled["grants"][0]["grant_id"]
            await expire_access_token(a, grant_id)  # both servers read it from the database
            before = len(peer.log_events("grant.success"))
            whoami = f"{peer.issuer}/api/whoami"
            async with httpx.AsyncClient(timeout=60) as client:
                answers = await asyncio.gather(
                    *(
                        client.send(
                            signed_token_request(
                                (a if i % 2 else b).base_url, w.key, grant_id, whoami
                            )
                        )
                        for i in range(50)
                    )
                )
            assert [r.status_code for r in answers] == [200] * 50, {r.text for r in answers}
            new = peer.log_events("grant.success")[before:]
            assert [e.get("grant_type") for e in new] == ["refresh_token"]
            assert not peer.log_events("grant.error")
            tokens = {r.json()["access_token"] for r in answers}
            assert len(tokens) == 1
            who = httpx.get(whoami, headers={"Authorization": f"Bearer {tokens.pop()}"})
            assert who.status_code == 200 and who.json()["sub"] == "liam"
    finally:
        peer.stop()


def _signed(base_url: str, key: str, path: str, payload: dict[str, object]) -> httpx.Request:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = sign_request(key, method="POST", target=path, body=body)
    headers.update({"x-api-key": key, "Content-Type": "application/json"})
    return httpx.Request("POST", f"{base_url}{path}", content=body, headers=headers)
