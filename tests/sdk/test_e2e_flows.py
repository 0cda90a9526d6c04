"""Connect and sign-in end to end with the ``grantvault`` SDK: a real ``grantvault serve``,
the real OIDC peer (as OAuth provider, and as the app's identity provider), and a browser
played over HTTP by the test. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from grantvault import App, ReAuthRequiredError, SyncApp
from tests.e2e.conftest import Server, free_port, running_server, server_env
from tests.e2e.test_oauth_e2e import sign_in
from tests.peer import BASIC_CLIENT, Peer, start_peer
from tests.test_identity_support import IdpPeer, start_idp_peer

pytestmark = pytest.mark.e2e
URL_LINE = re.compile(r"Open this URL to authorize: (\S+)")


@pytest.fixture
def oauth_world(
    tmp_path: Path, database_url: str, backend: str
) -> Iterator[tuple[Server, Peer, str]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    peer = start_peer(PEER_REDIRECT_URIS=f"{base}/sdk/oauth/callback")
    env = server_env(tmp_path, database_url, backend, port, GRANTVAULT_PUBLIC_BASE_URL=base)
    try:
        with running_server(env, tmp_path / "server.log", migrate=backend == "postgresql") as srv:
            app = f"sdk-oauth-{uuid.uuid4().hex[:6]}"
            srv.cli_json("apps", "create", app)
            key = srv.cli_json("keys", "create", "--app", app)["api_key"]
            srv.cli(
                "providers", "add", "--app", app, "peer", "--issuer", peer.issuer,
                "--client-id", BASIC_CLIENT[0], "--client-secret-stdin",
                "--scopes", "openid profile offline_access",
                "--api-host", f"127.0.0.1:{peer.port}", stdin=BASIC_CLIENT[1],
            )  # fmt: skip
            yield srv, peer, key
    finally:
        peer.stop()


async def test_connect_prints_the_url_and_the_test_consents(
    oauth_world: tuple[Server, Peer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    srv, peer, key = oauth_world
    async with App(key, base_url=srv.base_url) as vault:
        flow = asyncio.create_task(
            vault.connect(providers=["peer"], open_browser=False, timeout=60, poll_interval=0.5)
        )
        printed = ""
        for _ in range(100):
            printed += capsys.readouterr().out
            if URL_LINE.search(printed):
                break
            await asyncio.sleep(0.1)
        match = URL_LINE.search(printed)
        assert match, printed
        page = await asyncio.to_thread(sign_in, match.group(1), "kate")
        assert page.status_code == 200 and "Connected" in page.text
        (result,) = await flow
        assert result.provider_id == "peer" and result.account_identifier == "kate"
        r = await vault.request("GET", f"{peer.issuer}/api/whoami", grant_id=result.grant_id)
        assert r.json()["sub"] == "kate"
        listed = await vault.list_grants(provider_id="peer")
        assert [(g.grant_kind, g.grant_id) for g in listed.grants] == [("oauth", result.grant_id)]

    # The sync twin, the browser path (the "browser" is the test signing in).
    opened: list[str] = []
    with SyncApp(key, base_url=srv.base_url) as sync_vault:

        def browser(url: str) -> bool:
            opened.append(url)
            threading.Thread(target=sign_in, args=(url, "liam"), daemon=True).start()
            return True

        sync_vault._core.open_url = browser
        (second,) = await asyncio.to_thread(
            sync_vault.connect, providers=["peer"], timeout=60, poll_interval=0.5
        )
        assert second.account_identifier == "liam" and len(opened) == 1
        assert sync_vault.revoke_grant(second.grant_id).success


@pytest.fixture
def idp_world(
    tmp_path: Path, database_url: str, backend: str
) -> Iterator[tuple[Server, IdpPeer, str]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    peer = start_idp_peer(tmp_path, PEER_REDIRECT_URIS=f"{base}/sdk/auth/callback")
    env = server_env(tmp_path, database_url, backend, port, GRANTVAULT_PUBLIC_BASE_URL=base)
    try:
        with running_server(env, tmp_path / "server.log", migrate=backend == "postgresql") as srv:
            name = f"sdk-idp-{uuid.uuid4().hex[:6]}"
            srv.cli_json("apps", "create", name)
            key = srv.cli_json("keys", "create", "--app", name)["api_key"]
            srv.cli_json(
                "idp", "set", "--app", name, "--issuer", peer.issuer, "--audience", "vault-basic",
                "--client-id", BASIC_CLIENT[0], "--client-secret-stdin", stdin=BASIC_CLIENT[1],
            )  # fmt: skip
            yield srv, peer, key
    finally:
        peer.stop()


def browser_sign_in(auth_url: str, user: str) -> httpx.Response:
    with httpx.Client(timeout=15) as browser:
        return browser.get(f"{auth_url}&login_hint={user}", follow_redirects=True)


async def test_sign_in_verify_and_authenticate(idp_world: tuple[Server, IdpPeer, str]) -> None:
    srv, peer, key = idp_world
    async with App(key, base_url=srv.base_url) as vault:
        session = await vault.create_auth_session()
        page = await asyncio.to_thread(browser_sign_in, session.auth_url, "nina")
        assert page.status_code == 200
        result = await vault.poll_auth_session(session.session_token, timeout=20, poll_interval=0.5)
        assert result.user_info["sub"] == "nina"
        assert await vault.verify_user_token(result.user_token) == "nina"
        assert await vault.verify_user_token(result.user_token[:-6] + "AAAAAA") is None
        assert await vault.verify_user_token(peer.forge(peer.claims(aud="other"))) is None
        assert (await vault.list_grants(end_user_token=result.user_token)).total == 0
        with pytest.raises(ReAuthRequiredError) as refused:
            await vault.list_grants(end_user_token=peer.forge(peer.claims(aud="other")))
        assert refused.value.status_code == 401 and refused.value.code == "jwt_validation_error"

    with SyncApp(key, base_url=srv.base_url) as sync_vault:
        sync_vault._core.open_url = lambda url: bool(
            threading.Thread(target=browser_sign_in, args=(url, "omar"), daemon=True).start()
            or True
        )
        signed_in = await asyncio.to_thread(sync_vault.authenticate, timeout=30)
        assert signed_in.user_info["sub"] == "omar"
        # The token is now this client's user token: later calls carry it.
        assert sync_vault._core.user_token_getter is not None
        assert sync_vault._core.user_token_getter() == signed_in.user_token
        assert sync_vault.verify_user_token(signed_in.user_token) == "omar"
        assert sync_vault.list_grants().total == 0  # sent with the installed user token
