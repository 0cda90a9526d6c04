"""OAuth Connect against the real OIDC peer, on SQLite and PostgreSQL.

Session → consent page → provider sign-in → callback → poll → retrieval → the peer's API;
then the ways it must fail: denied consent, replayed state, expired session, an ``iss`` from
another issuer (mix-up), a foreign browser, foreign return URLs and origins.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from grantvault_server.app import create_app
from grantvault_server.config import Settings
from grantvault_server.services import apps as app_service
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import FakeClock, utcnow
from grantvault_server.storage.tables import connect_sessions, grants, oauth_flows, oauth_tokens

from .conftest import SignedClient, make_app
from .oauth_flow import approve, browser_for, consent_page, follow, register_peer, session_id_of
from .peer import VAULT_BASE_URL, Peer, query_of, start_peer


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"public_base_url": VAULT_BASE_URL})


@pytest.fixture
async def asgi(vault: Vault) -> Any:
    return create_app(vault=vault)


@pytest.fixture
async def browser(asgi: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with browser_for(asgi) as b:
        yield b


@pytest.fixture
async def api(asgi: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


class Setup:
    def __init__(self, vault: Vault, app: app_service.App, signed: SignedClient, peer: Peer):
        self.vault, self.app, self.signed, self.peer = vault, app, signed, peer

    async def session(self, **body: Any) -> dict[str, Any]:
        r = await self.signed.post(
            "/sdk/oauth/connect/session",
            {"allowed_providers": ["peer"], "return_url": None, "allowed_origin": None, **body},
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def poll(self, token: str) -> dict[str, Any]:
        r = await self.signed.post("/sdk/oauth/connect/session/poll", {"session_token": token})
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def token(self, grant_id: str, url: str | None = None) -> httpx.Response:
        return await self.signed.post(
            "/sdk/token",
            {
                "grant_id": grant_id,
                "reason": None,
                "request": {"method": "GET", "url": url or f"{self.peer.issuer}/api/whoami"},
            },
        )

    async def count(self, table: sa.Table) -> int:
        async with self.vault.db.read() as conn:
            return int(
                (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
            )


@pytest.fixture
async def setup(vault: Vault, api: httpx.AsyncClient, oauth_peer: Peer) -> Setup:
    app, key = await make_app(vault)
    await register_peer(vault, app, oauth_peer)
    return Setup(vault, app, SignedClient(api, key), oauth_peer)


async def connect_grant(setup: Setup, browser: httpx.AsyncClient, **kw: Any) -> dict[str, Any]:
    session = await setup.session()
    step = await approve(browser, session["connect_url"], **kw)
    assert step.response.status_code == 200, step.response.text[:800]
    assert "Connected" in step.response.text
    polled = await setup.poll(session["session_token"])
    assert polled["status"] == "completed", polled
    grant: dict[str, Any] = polled["grants"][0]
    return grant


async def test_full_flow_then_retrieval_reaches_the_peer_api(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    session = await setup.session()
    assert session["connect_url"].startswith(f"{VAULT_BASE_URL}/connect/start?session=")
    assert session["single_provider"] is True
    assert (await setup.poll(session["session_token"]))["status"] == "pending"

    step = await consent_page(browser, session["connect_url"])
    page = step.response
    assert "Connect Peer peer" in page.text and "offline_access" in page.text
    assert f"<strong>{setup.app.name}</strong> wants to use" in page.text
    assert f"will belong to {setup.app.name} itself" in page.text
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"

    step = await approve(browser, session["connect_url"], user="carol")
    assert "carol" in step.response.text, step.response.text[-1200:]
    polled = await setup.poll(session["session_token"])
    assert polled["status"] == "completed"
    (grant,) = polled["grants"]
    assert grant["provider_id"] == "peer"
    assert grant["account_identifier"] == "carol"
    assert grant["operation"] == "creation"
    assert "openid" in grant["scopes"]

    r = await setup.token(grant["grant_id"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["injection_format"] == "Bearer {token}"
    assert body["expires_in"] <= 5
    who = httpx.get(
        f"{setup.peer.issuer}/api/whoami",
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert who.status_code == 200 and who.json()["sub"] == "carol"

    # Tokens are stored encrypted: the access token's bytes are nowhere in the row.
    async with setup.vault.db.read() as conn:
        row = (await conn.execute(sa.select(oauth_tokens))).one()
    assert body["access_token"].encode() not in row.access_ct
    assert row.refresh_ct is not None

    # A destination outside the provider's API hosts never gets the token.
    r = await setup.token(grant["grant_id"], "https://evil.example/steal")
    assert r.status_code == 422 and r.json()["error"] == "blocked_destination"


async def test_same_account_again_reauthorizes_and_a_second_account_adds_a_grant(
    setup: Setup, browser: httpx.AsyncClient, asgi: Any
) -> None:
    first = await connect_grant(setup, browser, user="dave")
    async with browser_for(asgi) as other_browser:
        again = await connect_grant(setup, other_browser, user="dave")
    assert again["grant_id"] == first["grant_id"] and again["operation"] == "reauth"
    async with browser_for(asgi) as third:
        second = await connect_grant(setup, third, user="erin")
    assert second["grant_id"] != first["grant_id"] and second["operation"] == "creation"
    assert await setup.count(grants) == 2


async def test_denied_consent_at_the_provider_stores_nothing(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    session = await setup.session()
    step = await approve(browser, session["connect_url"], decision="deny")
    assert "Not connected" in step.response.text
    polled = await setup.poll(session["session_token"])
    assert polled["status"] == "error"
    assert polled["error"]["error_code"] == "connect_denied"
    assert await setup.count(grants) == 0 and await setup.count(oauth_tokens) == 0


async def test_declining_on_the_consent_page(setup: Setup, browser: httpx.AsyncClient) -> None:
    session = await setup.session()
    step = await consent_page(browser, session["connect_url"])
    sid = session_id_of(step.url)
    from .oauth_flow import csrf_of

    r = await browser.post(
        f"{VAULT_BASE_URL}/connect/s/{sid}/decline",
        data={"csrf": csrf_of(step.response.text), "provider": "peer"},
    )
    assert r.status_code == 303
    polled = await setup.poll(session["session_token"])
    assert polled["error"]["error_code"] == "connect_denied"
    assert polled["declined_providers"][0]["provider_id"] == "peer"


async def test_replayed_callback_is_refused_and_changes_nothing(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    session = await setup.session()
    step = await approve(browser, session["connect_url"], stop_at_callback=True)
    callback = step.url
    first = await browser.get(callback)
    assert first.status_code == 303
    grants_before = await setup.count(grants)
    replay = await browser.get(callback)
    assert replay.status_code == 410 and "already used" in replay.text
    assert await setup.count(grants) == grants_before == 1


async def test_callback_in_another_browser_is_refused(
    setup: Setup, browser: httpx.AsyncClient, asgi: Any
) -> None:
    session = await setup.session()
    step = await approve(browser, session["connect_url"], stop_at_callback=True)
    async with browser_for(asgi) as attacker:
        r = await attacker.get(step.url)
    assert r.status_code == 400 and "another browser" in r.text
    assert await setup.count(grants) == 0
    # The session link itself is bound to the first browser too.
    async with browser_for(asgi) as attacker:
        r = await attacker.get(session["connect_url"])
    assert r.status_code == 400
    # The rightful browser can still finish.
    r = await browser.get(step.url)
    assert r.status_code == 303
    assert (await setup.poll(session["session_token"]))["status"] == "completed"


async def test_expired_session(setup: Setup, browser: httpx.AsyncClient) -> None:
    session = await setup.session()
    step = await approve(browser, session["connect_url"], stop_at_callback=True)
    async with setup.vault.db.write() as conn:
        await conn.execute(
            sa.update(connect_sessions).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    r = await browser.get(step.url)
    assert r.status_code == 410 and "expired" in r.text
    assert (await setup.poll(session["session_token"]))["status"] == "expired"
    assert await setup.count(grants) == 0


async def test_mix_up_iss_from_another_issuer_is_refused(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    """RFC 9207: a response carrying another issuer's ``iss`` is never exchanged."""
    other = start_peer()
    try:
        session = await setup.session()
        step = await approve(browser, session["connect_url"], stop_at_callback=True)
        params = query_of(step.url)
        assert params["iss"] == setup.peer.issuer
        forged = step.url.replace(f"iss={httpx.QueryParams({'iss': params['iss']})['iss']}", "")
        forged = f"{VAULT_BASE_URL}/sdk/oauth/callback?" + str(
            httpx.QueryParams({**params, "iss": other.issuer})
        )
        r = await browser.get(forged)
        assert r.status_code == 400 and "different server" in r.text
        assert await setup.count(grants) == 0
        # The state was burnt by the refused attempt: the genuine response cannot follow.
        r = await browser.get(step.url)
        assert r.status_code == 410
    finally:
        other.stop()


async def test_foreign_return_url_and_origin_are_refused(setup: Setup) -> None:
    for body, fragment in (
        ({"return_url": "javascript:alert(1)"}, "return_url"),
        ({"return_url": "http://evil.example/cb"}, "https"),
        ({"return_url": "https://user:pw@evil.example/cb"}, "user information"),
        ({"allowed_origin": "*"}, "exact origin"),
        ({"allowed_origin": "https://app.example/path"}, "exact origin"),
    ):
        r = await setup.signed.post(
            "/sdk/oauth/connect/session", {"allowed_providers": ["peer"], **body}
        )
        assert r.status_code == 422, r.text
        assert fragment in r.json()["message"]
    r = await setup.signed.post("/sdk/oauth/connect/session", {"allowed_providers": ["nope"]})
    assert r.status_code == 400 and r.json()["error"] == "provider_not_configured"


async def test_result_goes_only_to_the_sessions_own_return_url_and_origin(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    session = await setup.session(
        return_url="https://app.example/done?x=1", allowed_origin="https://app.example/"
    )
    step = await approve(browser, session["connect_url"])
    html = step.response.text
    assert 'href="https://app.example/done?x=1&amp;alter_connect_success=true' in html
    payload = json.loads(html.split('id="gv-result">', 1)[1].split("</script>", 1)[0])
    assert payload["allowed_origin"] == "https://app.example"
    assert payload["message"]["type"] == "alter_connect_success"
    assert payload["message"]["grants"][0]["provider"] == "peer"
    # Nothing in the request can redirect elsewhere: the callback ignores extra parameters.
    assert "evil" not in html


async def test_poll_of_an_unknown_session_and_another_apps_session(
    setup: Setup, vault: Vault, api: httpx.AsyncClient
) -> None:
    session = await setup.session()
    _, other_key = await make_app(vault)
    other = SignedClient(api, other_key)
    r = await other.post(
        "/sdk/oauth/connect/session/poll", {"session_token": session["session_token"]}
    )
    assert r.status_code == 404 and r.json()["error"] == "session_not_found"
    async with vault.db.read() as conn:
        stored = (await conn.execute(sa.select(connect_sessions.c.token_hash))).scalar_one()
    assert session["session_token"] not in stored


async def test_state_and_verifier_are_not_stored_in_clear(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    session = await setup.session()
    step = await approve(browser, session["connect_url"], stop_at_callback=True)
    state = query_of(step.url)["state"]
    async with setup.vault.db.read() as conn:
        flow = (await conn.execute(sa.select(oauth_flows))).one()
    assert state not in flow.state_hash
    assert flow.nonce is not None
    r = await follow(browser, step.url)
    assert r.response.status_code == 200


# -- refresh and revocation -------------------------------------------------------------------


def refreshes(peer: Peer) -> int:
    return sum(
        1 for e in peer.log_events("grant.success") if e.get("grant_type") == "refresh_token"
    )


def grant_errors(peer: Peer) -> int:
    return len(peer.log_events("grant.error"))


async def stored_tokens(setup: Setup, grant_id: str) -> tuple[str, str | None, str]:
    from grantvault_server.services.oauth_tokens import token_aad

    async with setup.vault.db.read() as conn:
        row = (
            await conn.execute(sa.select(oauth_tokens).where(oauth_tokens.c.grant_id == grant_id))
        ).one()
        access = await setup.vault.barrier.decrypt_fresh(
            conn, row.access_ct, token_aad(row.app_id, grant_id, "access_ct")
        )
        refresh = (
            await setup.vault.barrier.decrypt_fresh(
                conn, row.refresh_ct, token_aad(row.app_id, grant_id, "refresh_ct")
            )
            if row.refresh_ct
            else None
        )
    return access.decode(), refresh.decode() if refresh else None, row.generation


async def expire_now(setup: Setup, grant_id: str) -> None:
    """Skip the wait: the peer's 5-second token is treated as expired by the vault."""
    async with setup.vault.db.write() as conn:
        await conn.execute(
            sa.update(oauth_tokens)
            .where(oauth_tokens.c.grant_id == grant_id)
            .values(access_expires_at=utcnow() - timedelta(seconds=1))
        )


async def test_expired_token_is_refreshed_once_and_rotation_is_persisted(
    setup: Setup, browser: httpx.AsyncClient, clock: FakeClock
) -> None:
    grant = await connect_grant(setup, browser, user="frank")
    access0, refresh0, gen0 = await stored_tokens(setup, grant["grant_id"])
    assert refresh0 is not None
    before, errors_before = refreshes(setup.peer), grant_errors(setup.peer)
    # Past the peer's 5-second expiry on the vault's clock: the vault refreshes (the peer
    # takes the refresh token whatever its access token's age).
    clock.advance(5.5)
    r = await setup.token(grant["grant_id"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert refreshes(setup.peer) == before + 1
    access1, refresh1, gen1 = await stored_tokens(setup, grant["grant_id"])
    assert body["access_token"] == access1 != access0
    assert refresh1 not in (None, refresh0)  # rotated and persisted
    assert body["token_generation"] == gen1 != gen0
    # The next retrievals use the fresh token: no further refresh.
    assert (await setup.token(grant["grant_id"])).json()["access_token"] == access1
    assert refreshes(setup.peer) == before + 1
    # The old refresh token was never sent again (reuse would show as a grant error and
    # kill the family); the new one is alive at the peer.
    assert grant_errors(setup.peer) == errors_before
    assert setup.peer.introspect(refresh1)["active"] is True
    who = httpx.get(
        f"{setup.peer.issuer}/api/whoami", headers={"Authorization": f"Bearer {access1}"}
    )
    assert who.status_code == 200


async def test_fifty_concurrent_retrievals_of_an_expired_grant_refresh_once(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    import asyncio

    grant = await connect_grant(setup, browser, user="gina")
    await expire_now(setup, grant["grant_id"])
    before, errors_before = refreshes(setup.peer), grant_errors(setup.peer)
    answers = await asyncio.gather(*(setup.token(grant["grant_id"]) for _ in range(50)))
    assert [a.status_code for a in answers] == [200] * 50, {a.text for a in answers}
    assert refreshes(setup.peer) == before + 1
    assert grant_errors(setup.peer) == errors_before
    assert len({a.json()["access_token"] for a in answers}) == 1
    metrics = (await setup.signed.client.get("/metrics")).text
    assert 'grantvault_oauth_refreshes_total{outcome="success"} 1.0' in metrics
    token = answers[0].json()["access_token"]
    who = httpx.get(f"{setup.peer.issuer}/api/whoami", headers={"Authorization": f"Bearer {token}"})
    assert who.status_code == 200


async def test_user_disabled_at_the_provider_turns_into_credential_revoked(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    grant = await connect_grant(setup, browser, user="hank")
    setup.peer.admin("users/hank/disable")
    try:
        await expire_now(setup, grant["grant_id"])
        r = await setup.token(grant["grant_id"])
        assert r.status_code == 403 and r.json()["error"] == "credential_revoked", r.text
        assert r.json()["grant_id"] == grant["grant_id"]
        # Dead tokens are dropped and the grant is flagged; no refresh storm afterwards.
        before = len(setup.peer.log_events())
        r = await setup.token(grant["grant_id"])
        assert r.json()["error"] == "credential_revoked"
        assert len(setup.peer.log_events()) == before
        listed = await setup.signed.post("/sdk/grants/list", {"provider_id": "peer"})
        (item,) = listed.json()["grants"]
        assert item["needs_reconnect"] is True and item["grant_kind"] == "oauth"
    finally:
        setup.peer.admin("users/hank/enable")
    # Repair: a session with repair_grant_id reconnects the same grant in place.
    session = await setup.session(repair_grant_id=grant["grant_id"])
    step = await follow(browser, session["connect_url"], user="hank")
    assert step.response.status_code == 200 and "Connected" in step.response.text
    polled = await setup.poll(session["session_token"])
    assert polled["grants"][0]["grant_id"] == grant["grant_id"]
    assert polled["grants"][0]["operation"] == "reauth"
    assert (await setup.token(grant["grant_id"])).status_code == 200


async def test_revoked_grant_is_inactive_at_the_provider_and_never_refreshed(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    grant = await connect_grant(setup, browser, user="ivan")
    access, refresh, _ = await stored_tokens(setup, grant["grant_id"])
    assert refresh is not None and setup.peer.introspect(refresh)["active"] is True
    r = await setup.signed.post(f"/sdk/oauth/grants/{grant['grant_id']}/revoke", {"reason": "test"})
    assert r.status_code == 200 and r.json()["success"] is True
    assert setup.peer.introspect(refresh) == {"active": False}
    assert setup.peer.introspect(access) == {"active": False}
    assert await setup.count(oauth_tokens) == 0
    before = refreshes(setup.peer)
    r = await setup.token(grant["grant_id"])
    assert r.status_code == 403 and r.json()["error"] == "grant_revoked"
    assert refreshes(setup.peer) == before


async def test_revocation_is_retried_when_the_provider_is_down(
    vault: Vault,
    api: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from grantvault_server.services import grants as grant_service
    from grantvault_server.services.oauth_tokens import run_revocations

    monkeypatch.setattr(grant_service, "INLINE_REVOCATION_TIMEOUT_S", 1.0)
    from grantvault_server.storage.tables import oauth_revocations

    peer = start_peer(PEER_ACCESS_TOKEN_TTL=60)
    try:
        app, key = await make_app(vault)
        await register_peer(vault, app, peer)
        setup = Setup(vault, app, SignedClient(api, key), peer)
        grant = await connect_grant(setup, browser, user="judy")
        _, refresh, _ = await stored_tokens(setup, grant["grant_id"])
        peer.proc.send_signal(__import__("signal").SIGSTOP)  # provider unreachable
        try:
            r = await setup.signed.post(f"/sdk/oauth/grants/{grant['grant_id']}/revoke", {})
            assert r.status_code == 200
            assert await setup.count(oauth_tokens) == 0  # gone from the grant at once
            assert await setup.count(oauth_revocations) == 2  # queued for the provider
        finally:
            peer.proc.send_signal(__import__("signal").SIGCONT)
        async with vault.db.write() as conn:
            await conn.execute(sa.update(oauth_revocations).values(next_attempt_at=utcnow()))
        assert await run_revocations(vault) == 2
        assert await setup.count(oauth_revocations) == 0
        assert peer.introspect(refresh or "") == {"active": False}
    finally:
        peer.stop()


async def test_malformed_callbacks_are_refused(setup: Setup, browser: httpx.AsyncClient) -> None:
    session = await setup.session()
    step = await approve(browser, session["connect_url"], stop_at_callback=True)
    params = query_of(step.url)
    base = f"{VAULT_BASE_URL}/sdk/oauth/callback"
    for bad in (
        f"{base}?code=x&state={params['state']}",  # no iss from an issuer that promises it
        f"{base}?{httpx.QueryParams({**params, 'error': 'access_denied'})}",  # code and error
        f"{base}?{httpx.QueryParams(params)}&state={params['state']}",  # duplicated state
        f"{base}?code=x",  # no state
        f"{base}?code=x&state={'s' * 4096}",  # oversized state
    ):
        r = await browser.get(bad)
        assert r.status_code == 400, (bad, r.text[:300])
        assert r.headers["cache-control"] == "no-store"
    assert await setup.count(grants) == 0


async def test_old_sessions_are_purged(setup: Setup) -> None:
    from grantvault_server.services.connect import purge_sessions

    session = await setup.session()
    assert await purge_sessions(setup.vault) == 0
    async with setup.vault.db.write() as conn:
        await conn.execute(
            sa.update(connect_sessions).values(expires_at=utcnow() - timedelta(days=2))
        )
    assert await purge_sessions(setup.vault) == 1
    r = await setup.signed.post(
        "/sdk/oauth/connect/session/poll", {"session_token": session["session_token"]}
    )
    assert r.status_code == 404
