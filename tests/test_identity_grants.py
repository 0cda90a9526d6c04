"""Grants bound to end users and groups: the OIDC peer is the app's IdP *and* the OAuth
provider. A user connects with their JWT, then retrieves by ``provider=``; nobody else can
use, list or revoke that grant; ambiguity is explicit; group grants follow the token's groups;
disabling the user cuts them off and revokes their tokens at the provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from grantvault_server.app import create_app
from grantvault_server.config import Settings
from grantvault_server.services import apps as app_service
from grantvault_server.services.identity import service as identity
from grantvault_server.services.vault import Vault

from .conftest import OPERATOR, SignedClient, make_app
from .oauth_flow import approve, browser_for, register_peer
from .peer import VAULT_BASE_URL
from .test_identity_support import IdpPeer, configure, idp_peer_fixture

__all__ = ["idp_peer_fixture"]  # the session fixture, shared with the identity tests


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"public_base_url": VAULT_BASE_URL})


class World:
    def __init__(
        self, vault: Vault, app: app_service.App, signed: SignedClient, idp: IdpPeer, asgi: Any
    ) -> None:
        self.vault, self.app, self.signed, self.idp, self.asgi = vault, app, signed, idp, asgi

    async def connect(self, user_token: str | None, account: str) -> dict[str, Any]:
        body: dict[str, Any] = {"allowed_providers": ["peer"]}
        if user_token is not None:
            body["user_token"] = user_token
        r = await self.signed.post("/sdk/oauth/connect/session", body)
        assert r.status_code == 200, r.text
        session = r.json()
        async with browser_for(self.asgi) as browser:
            step = await approve(browser, session["connect_url"], user=account)
        assert "Connected" in step.response.text, step.response.text[-800:]
        polled = await self.signed.post(
            "/sdk/oauth/connect/session/poll", {"session_token": session["session_token"]}
        )
        grant: dict[str, Any] = polled.json()["grants"][0]
        return grant

    async def token(self, user_token: str | None = None, **target: Any) -> httpx.Response:
        body: dict[str, Any] = {
            "reason": None,
            "request": {"method": "GET", "url": f"{self.idp.issuer}/api/whoami"},
            **target,
        }
        if user_token is not None:
            body["user_token"] = user_token
        return await self.signed.post("/sdk/token", body)


@pytest.fixture
async def world(vault: Vault, idp_peer: IdpPeer) -> AsyncIterator[World]:
    app, key = await make_app(vault)
    await configure(vault, app, idp_peer)
    await register_peer(vault, app, idp_peer.peer)
    asgi = create_app(vault=vault)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi), base_url="http://testserver"
    ) as api:
        yield World(vault, app, SignedClient(api, key), idp_peer, asgi)


async def test_a_users_grant_is_theirs_alone(world: World) -> None:
    alice, bob = world.idp.id_token("alice"), world.idp.id_token("bob")
    grant = await world.connect(alice, "alice")
    r = await world.token(alice, provider_id="peer")
    assert r.status_code == 200, r.text
    assert r.json()["grant_id"] == grant["grant_id"]
    who = httpx.get(
        f"{world.idp.issuer}/api/whoami",
        headers={"Authorization": f"Bearer {r.json()['access_token']}"},
    )
    assert who.json()["sub"] == "alice"

    # Bob can neither use, list nor revoke it: it looks like it does not exist.
    r = await world.token(bob, provider_id="peer")
    assert r.status_code == 404 and r.json()["error"] == "grant_not_found"
    r = await world.token(bob, grant_id=grant["grant_id"])
    assert r.status_code == 404 and r.json()["error"] == "grant_not_found"
    listed = await world.signed.post("/sdk/grants/list", {"user_token": bob})
    assert listed.json()["grants"] == []
    r = await world.signed.post(
        f"/sdk/oauth/grants/{grant['grant_id']}/revoke", {"user_token": bob}
    )
    assert r.status_code == 404
    # Alice lists hers, and the app's own provider lookup (no user token) finds no system grant.
    listed = await world.signed.post("/sdk/grants/list", {"user_token": alice})
    assert [g["grant_id"] for g in listed.json()["grants"]] == [grant["grant_id"]]
    assert (await world.token(None, provider_id="peer")).status_code == 404
    # A forged token (signed by a key the IdP never published) is a 401, not a lookup.
    r = await world.token(alice[:-4] + "AAAA", provider_id="peer")
    assert r.status_code == 401 and r.json()["error"] == "jwt_validation_error"


async def test_system_grant_with_a_user_token_is_refused(world: World) -> None:
    grant = await world.connect(None, "app-account")
    r = await world.token(world.idp.id_token("alice"), grant_id=grant["grant_id"])
    assert r.status_code == 403 and r.json()["error"] == "system_grant_user_token_mismatch"
    r = await world.token(None, grant_id=grant["grant_id"])
    assert r.status_code == 200


async def test_two_accounts_are_ambiguous_until_account_is_given(world: World) -> None:
    alice = world.idp.id_token("alice")
    personal = await world.connect(alice, "alice")
    work = await world.connect(alice, "alice.work")
    assert personal["grant_id"] != work["grant_id"]
    r = await world.token(alice, provider_id="peer")
    assert r.status_code == 409 and r.json()["error"] == "ambiguous_grant"
    body = r.json()
    assert body["account_identifiers"] == ["alice", "alice.work"]
    assert {c["grant_id"] for c in body["candidates"]} == {personal["grant_id"], work["grant_id"]}
    r = await world.token(alice, provider_id="peer", account="alice.work")
    assert r.status_code == 200 and r.json()["grant_id"] == work["grant_id"]


async def test_group_grants_follow_the_tokens_groups(world: World) -> None:
    from grantvault_server.services import grants as grant_service, secrets as secret_service

    secret = await secret_service.create_secret(
        world.vault, world.app, OPERATOR, template="openai", slug="openai"
    )
    await secret_service.set_credential(
        world.vault, world.app, secret, {"token": "sk-test-000111222333"}, OPERATOR
    )
    await grant_service.create_grant(
        world.vault,
        world.app,
        secret,
        OPERATOR,
        principal_type="group",
        principal_id="eng",
        idp_id=await identity.active_idp_id(world.vault, world.app.id),
    )
    in_eng = world.idp.forge(world.idp.claims(sub="carol", groups=["eng", "ops"]))
    not_eng = world.idp.forge(world.idp.claims(sub="dan", groups=["sales"]))
    url = {"method": "GET", "url": "https://api.openai.com/v1/models"}
    r = await world.signed.post(
        "/sdk/token",
        {"provider_id": "openai", "reason": None, "request": url, "user_token": in_eng},
    )
    assert r.status_code == 200, r.text
    r = await world.signed.post(
        "/sdk/token",
        {"provider_id": "openai", "reason": None, "request": url, "user_token": not_eng},
    )
    assert r.status_code == 404
    # Carol leaves the group: her next token says so, and access ends with it.
    left = world.idp.forge(world.idp.claims(sub="carol", groups=["ops"]))
    r = await world.signed.post(
        "/sdk/token", {"provider_id": "openai", "reason": None, "request": url, "user_token": left}
    )
    assert r.status_code == 404


async def test_disabling_a_user_stops_retrieval_and_revokes_at_the_provider(world: World) -> None:
    from .test_oauth_connect import Setup, stored_tokens

    erin = world.idp.id_token("erin")
    grant = await world.connect(erin, "erin")
    setup = Setup(world.vault, world.app, world.signed, world.idp.peer)
    _, refresh, _ = await stored_tokens(setup, grant["grant_id"])
    assert refresh is not None and world.idp.peer.introspect(refresh)["active"] is True
    revoked = await identity.disable_user(world.vault, world.app.id, "erin", OPERATOR)
    assert isinstance(revoked, list)
    r = await world.token(erin, provider_id="peer")
    assert r.status_code == 403 and r.json()["error"] == "user_disabled"
    r = await world.token(None, grant_id=grant["grant_id"])
    assert r.status_code == 403 and r.json()["error"] == "grant_revoked"
    assert world.idp.peer.introspect(refresh) == {"active": False}


async def test_many_other_grants_do_not_hide_the_users_own(world: World) -> None:
    from grantvault_server.services import grants as grant_service, secrets as secret_service

    secret = await secret_service.create_secret(
        world.vault, world.app, OPERATOR, template="openai", slug="openai"
    )
    await secret_service.set_credential(
        world.vault, world.app, secret, {"token": "sk-test-000111222333"}, OPERATOR
    )
    idp_id = await identity.active_idp_id(world.vault, world.app.id)
    for i in range(110):  # more than one prepared read returns
        await grant_service.create_grant(
            world.vault, world.app, secret, OPERATOR,
            principal_type="group", principal_id=f"team-{i}", idp_id=idp_id,
        )  # fmt: skip
    await grant_service.create_grant(
        world.vault, world.app, secret, OPERATOR,
        principal_type="group", principal_id="mine", idp_id=idp_id,
    )  # fmt: skip
    token = world.idp.forge(world.idp.claims(sub="gus", groups=["mine"]))
    url = {"method": "GET", "url": "https://api.openai.com/v1/models"}
    r = await world.signed.post(
        "/sdk/token", {"provider_id": "openai", "reason": None, "request": url, "user_token": token}
    )
    assert r.status_code == 200, r.text


async def test_a_user_disabled_mid_flow_cannot_finish_connecting(world: World) -> None:
    from .peer import VAULT_BASE_URL
    from .test_oauth_connect import grants

    token = world.idp.id_token("hana")
    r = await world.signed.post(
        "/sdk/oauth/connect/session", {"allowed_providers": ["peer"], "user_token": token}
    )
    session = r.json()
    async with browser_for(world.asgi) as browser:
        step = await approve(browser, session["connect_url"], user="hana", stop_at_callback=True)
        assert step.url.startswith(f"{VAULT_BASE_URL}/sdk/oauth/callback")
        await identity.disable_user(world.vault, world.app.id, "hana", OPERATOR)
        answer = await browser.get(step.url)
    assert answer.status_code == 400 and "disabled" in answer.text
    async with world.vault.db.read() as conn:
        import sqlalchemy as sa

        count = (await conn.execute(sa.select(sa.func.count()).select_from(grants))).scalar_one()
    assert count == 0
