"""JWT identity mode through the unmodified ``alter-sdk``: an end user's token picks their
grant by ``provider=``; two connected accounts give ``AmbiguousGrantError`` listing both, and
``account=`` resolves it. The real OIDC peer is both the app's IdP and the OAuth provider."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from alter_sdk import App
from alter_sdk.exceptions import AmbiguousGrantError, GrantNotFoundError

from tests.e2e.conftest import free_port, running_server, server_env
from tests.e2e.test_oauth_e2e import World, setup_world, sign_in
from tests.peer import BASIC_CLIENT, DEFAULT_REDIRECT_URIS, start_peer
from tests.test_identity_support import IdpPeer

pytestmark = pytest.mark.e2e


@pytest.fixture
def world(tmp_path: Path, database_url: str, backend: str) -> Iterator[World]:
    port = free_port()
    peer = start_peer(
        PEER_REDIRECT_URIS=" ".join(
            [f"http://127.0.0.1:{port}/sdk/oauth/callback", *DEFAULT_REDIRECT_URIS]
        )
    )
    env = server_env(
        tmp_path, database_url, backend, port, GRANTVAULT_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}"
    )
    try:
        with running_server(env, tmp_path / "server.log", migrate=backend == "postgresql") as srv:
            w = setup_world(srv, peer)
            srv.cli(
                "idp", "set", "--app", w.app, "--issuer", peer.issuer, "--audience", BASIC_CLIENT[0]
            )
            yield w
    finally:
        peer.stop()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_identity_mode_and_ambiguity_through_alter_sdk(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALTER_BASE_URL", world.server.base_url)
    idp = IdpPeer(world.peer, tmp_path / "unused.json")
    alice, bob = idp.id_token("alice"), idp.id_token("bob")
    whoami = f"{world.peer.issuer}/api/whoami"
    async with App(api_key=world.key, user_token_getter=lambda: alice) as vault:
        for account in ("alice", "alice.work"):
            session = await vault.create_connect_session(allowed_providers=["peer"])
            page = await asyncio.to_thread(sign_in, session.connect_url, account)
            assert "Connected" in page.text
            await vault.poll_connect_session(session.session_token, timeout=10)
        with pytest.raises(AmbiguousGrantError) as info:
            await vault.request("GET", whoami, provider="peer")
        assert sorted(info.value.account_identifiers) == ["alice", "alice.work"]
        r = await vault.request("GET", whoami, provider="peer", account="alice.work")
        assert r.status_code == 200 and r.json()["sub"] == "alice.work"
    async with App(api_key=world.key, user_token_getter=lambda: bob) as vault:
        with pytest.raises(GrantNotFoundError):
            await vault.request("GET", whoami, provider="peer")
        assert (await vault.list_grants()).grants == []

    # The same through our own SDK, sync and async.
    import grantvault

    async with grantvault.App(
        world.key, base_url=world.server.base_url, user_token_getter=lambda: alice
    ) as ours:
        with pytest.raises(grantvault.AmbiguousGrantError) as ambiguous:
            await ours.request("GET", whoami, provider="peer")
        assert sorted(ambiguous.value.account_identifiers) == ["alice", "alice.work"]
        r = await ours.request("GET", whoami, provider="peer", account="alice")
        assert r.status_code == 200 and r.json()["sub"] == "alice"
    with (
        grantvault.SyncApp(
            world.key, base_url=world.server.base_url, user_token_getter=lambda: bob
        ) as sync_ours,
        pytest.raises(grantvault.GrantNotFoundError),
    ):
        await asyncio.to_thread(sync_ours.request, "GET", whoami, provider="peer")
