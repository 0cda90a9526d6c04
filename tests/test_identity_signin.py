"""The sign-in broker behind ``authenticate()``, driven by HTTP through the real peer, and
``/sdk/auth/verify-token``. SQLite and PostgreSQL.

The vault runs in-process (ASGI); the test plays the user's browser: it opens ``auth_url`` on
the vault, follows the redirects at the peer (which logs in ``login_hint``), and carries the
peer's redirect back to the vault's callback, with the vault's cookie jar.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import sqlalchemy as sa

from grantvault_server.app import create_app
from grantvault_server.config import Settings
from grantvault_server.services import signin
from grantvault_server.services.apps import App
from grantvault_server.services.identity import service as identity
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import audit_events, auth_sessions

from .conftest import OPERATOR, SignedClient, make_app
from .peer import VAULT_BASE_URL, follow_to
from .test_identity_support import (
    CALLBACK,
    IdpPeer,
    configure,
    idp_peer_fixture,  # noqa: F401 - the fixture
)

SECURITY_HEADERS = {
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Where the peer sends the browser back (one of its registered redirect URIs).
    settings.public_base_url = VAULT_BASE_URL
    return settings


@pytest.fixture
async def signed_app(vault: Vault, idp_peer: IdpPeer) -> tuple[App, str]:
    app, key = await make_app(vault)
    await configure(vault, app, idp_peer, signin=True)
    return app, key


def local(url: str) -> str:
    """The vault-relative part of a URL on the vault's public base URL."""
    assert url.startswith(VAULT_BASE_URL), url
    return url[len(VAULT_BASE_URL) :]


def assert_protected(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, name
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert "script-src" not in csp  # no script at all


class Browser:
    """A user's browser: its own cookie jar at the vault; the peer is reached over HTTP."""

    def __init__(self, vault: Vault) -> None:
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(vault=vault)), base_url="http://testserver"
        )

    async def open(self, auth_url: str, user: str = "alice") -> httpx.Response:
        return await self.http.get(f"{local(auth_url)}&{urlencode({'login_hint': user})}")

    async def to_idp_and_back(self, auth_url: str, user: str = "alice") -> str:
        """Open the link, sign in at the peer; returns the callback URL (not yet visited)."""
        started = await self.open(auth_url, user)
        assert started.status_code == 303, started.text
        assert_protected(started)
        return follow_to(started.headers["location"], CALLBACK)

    async def callback(self, url: str) -> httpx.Response:
        return await self.http.get(local(url))

    async def close(self) -> None:
        await self.http.aclose()


@pytest.fixture
async def browser(vault: Vault) -> AsyncIterator[Browser]:
    b = Browser(vault)
    try:
        yield b
    finally:
        await b.close()


async def new_session(signed: SignedClient) -> dict[str, Any]:
    r = await signed.post("/sdk/auth/session", {})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def poll(signed: SignedClient, token: str, wait_ms: int | None = None) -> httpx.Response:
    payload: dict[str, Any] = {"session_token": token}
    if wait_ms is not None:
        payload["wait_ms"] = wait_ms
    return await signed.post("/sdk/auth/poll", payload)


async def test_authenticate_by_http_end_to_end(
    vault: Vault, client: httpx.AsyncClient, signed_app: tuple[App, str], browser: Browser
) -> None:
    app, key = signed_app
    signed = SignedClient(client, key)
    session = await new_session(signed)
    assert set(session) == {"session_token", "auth_url", "expires_in", "expires_at"}
    assert session["expires_in"] == 600
    assert session["auth_url"].startswith(f"{VAULT_BASE_URL}/sdk/auth/start?session=")
    assert session["session_token"] not in session["auth_url"]
    assert (await poll(signed, session["session_token"])).json() == {"status": "pending"}

    started = await browser.open(session["auth_url"], "bob")
    assert started.status_code == 303
    cookie = started.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/sdk/auth" in cookie
    authorize = parse_qs(urlsplit(started.headers["location"]).query)
    assert authorize["code_challenge_method"] == ["S256"] and authorize["nonce"]
    assert authorize["redirect_uri"] == [CALLBACK] and authorize["login_hint"] == ["bob"]
    back = follow_to(started.headers["location"], CALLBACK)
    finished = await browser.callback(back)
    assert finished.status_code == 303
    assert finished.headers["location"] == "/sdk/auth/result?outcome=success"
    assert_protected(finished)
    page = await browser.http.get(finished.headers["location"])
    assert page.status_code == 200 and "You are signed in" in page.text
    assert_protected(page)

    result = (await poll(signed, session["session_token"])).json()
    assert result["status"] == "completed"
    assert result["user_info"]["sub"] == "bob"
    user_token = result["user_token"]
    # The token is the user's ID token; it verifies as a user token of this app.
    assert (await identity.resolve_user(vault, app.id, user_token)).subject == "bob"
    r = await signed.post("/sdk/auth/verify-token", {"token": user_token})
    assert r.status_code == 200 and r.json() == {"sub": "bob"}
    # One pickup: the session is gone.
    again = await poll(signed, session["session_token"])
    assert again.status_code == 404 and again.json()["error"] == "not_found"
    async with vault.db.read() as conn:
        events = (
            (
                await conn.execute(
                    sa.select(audit_events.c.event).where(audit_events.c.chain == app.id)
                )
            )
            .scalars()
            .all()
        )
    assert "user.signed_in" in events and "user.created" in events


async def test_long_poll_wakes_when_the_callback_completes(
    client: httpx.AsyncClient, signed_app: tuple[App, str], browser: Browser
) -> None:
    signed = SignedClient(client, signed_app[1])
    session = await new_session(signed)
    started = time.monotonic()
    waiting = asyncio.create_task(poll(signed, session["session_token"], wait_ms=20_000))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    back = await browser.to_idp_and_back(session["auth_url"], "carol")
    assert (await browser.callback(back)).status_code == 303
    result = (await waiting).json()
    assert result["status"] == "completed" and result["user_info"]["sub"] == "carol"
    assert time.monotonic() - started < 10


async def test_poll_waits_at_most_the_cap(
    client: httpx.AsyncClient, signed_app: tuple[App, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    signed = SignedClient(client, signed_app[1])
    session = await new_session(signed)
    started = time.monotonic()
    assert (await poll(signed, session["session_token"], wait_ms=300)).json()["status"] == "pending"
    assert 0.3 <= time.monotonic() - started < 3
    monkeypatch.setattr(signin, "MAX_WAIT_MS", 400)
    started = time.monotonic()
    r = await poll(signed, session["session_token"], wait_ms=10**9)
    assert r.json() == {"status": "pending"} and time.monotonic() - started < 3
    bad = await poll(signed, "gv_as_" + "x" * 43)
    assert bad.status_code == 404 and "x" * 20 not in bad.text


async def test_session_needs_an_idp_with_a_signin_client(
    vault: Vault, client: httpx.AsyncClient, idp_peer: IdpPeer
) -> None:
    app, key = await make_app(vault)
    signed = SignedClient(client, key)
    r = await signed.post("/sdk/auth/session", {})
    assert (r.status_code, r.json()["error"]) == (400, "idp_not_configured")
    await configure(vault, app, idp_peer)  # JWT verification only
    r = await signed.post("/sdk/auth/session", {})
    assert (r.status_code, r.json()["error"]) == (409, "idp_signin_not_configured")
    assert "--client-id" in r.json()["message"]
    assert (await signed.post("/sdk/auth/session", {"x": 1})).status_code == 422
    unsigned = await client.post("/sdk/auth/session", json={})
    assert (unsigned.status_code, unsigned.json()["error"]) == (401, "invalid_key")


async def test_another_browser_cannot_use_the_link_or_the_callback(
    vault: Vault, client: httpx.AsyncClient, signed_app: tuple[App, str], browser: Browser
) -> None:
    signed = SignedClient(client, signed_app[1])
    session = await new_session(signed)
    back = await browser.to_idp_and_back(session["auth_url"], "dave")
    stranger = Browser(vault)
    try:
        # The start link is bound to the first browser that opened it.
        r = await stranger.open(session["auth_url"])
        assert r.status_code == 400 and "another browser" in r.text
        assert_protected(r)
        # The callback with a state of another browser's session (A2): refused, untouched.
        r = await stranger.callback(back)
        assert r.status_code == 400 and "another browser" in r.text
    finally:
        await stranger.close()
    assert (await poll(signed, session["session_token"])).json()["status"] == "pending"
    assert (await browser.callback(back)).headers["location"].endswith("outcome=success")
    # The same callback again (A3): the state was consumed.
    replay = await browser.callback(back)
    assert replay.status_code == 400 and "already used" in replay.text
    assert (await poll(signed, session["session_token"])).json()["status"] == "completed"


async def test_malformed_callbacks_are_refused_before_any_exchange(
    client: httpx.AsyncClient, signed_app: tuple[App, str], browser: Browser, idp_peer: IdpPeer
) -> None:
    signed = SignedClient(client, signed_app[1])
    session = await new_session(signed)
    back = await browser.to_idp_and_back(session["auth_url"], "erin")
    query = parse_qs(urlsplit(back).query)
    code, state = query["code"][0], query["state"][0]
    path = "/sdk/auth/callback"
    for params in (
        {"code": code},  # A1: no state
        {"state": state, "code": code, "error": "access_denied"},  # A9
        {"state": "s" * 4096, "code": code},  # A14
        {"state": state, "code": code, "iss": idp_peer.issuer.replace("127.0.0.1", "localhost")},
        {"state": state, "code": code},  # A6: this IdP sends iss, so it is required
        {"state": state},
    ):
        r = await browser.http.get(path, params=params)
        assert r.status_code == 400, params
        assert_protected(r)
    r = await browser.http.get(f"{path}?state={state}&state={state}&code={code}")
    assert r.status_code == 400 and "repeats" in r.text
    # None of that consumed the session: the real answer still completes it.
    assert (await browser.callback(back)).headers["location"].endswith("outcome=success")
    assert (await poll(signed, session["session_token"])).json()["status"] == "completed"


async def test_declined_at_the_idp(
    client: httpx.AsyncClient, signed_app: tuple[App, str], browser: Browser
) -> None:
    signed = SignedClient(client, signed_app[1])
    session = await new_session(signed)
    back = await browser.to_idp_and_back(session["auth_url"], "access_denied")
    assert "error=access_denied" in back
    r = await browser.callback(back)
    assert r.headers["location"] == "/sdk/auth/result?outcome=denied"
    page = await browser.http.get(r.headers["location"])
    assert "declined" in page.text
    result = (await poll(signed, session["session_token"])).json()
    assert result == {
        "status": "error",
        "error_code": "access_denied",
        "error_message": "The sign-in was declined at the identity provider.",
    }


async def test_a_disabled_user_cannot_sign_in(
    vault: Vault, client: httpx.AsyncClient, signed_app: tuple[App, str], browser: Browser
) -> None:
    app, key = signed_app
    await identity.disable_user(vault, app.id, "frank", OPERATOR)
    signed = SignedClient(client, key)
    session = await new_session(signed)
    back = await browser.to_idp_and_back(session["auth_url"], "frank")
    assert (await browser.callback(back)).headers["location"].endswith("outcome=denied")
    result = (await poll(signed, session["session_token"])).json()
    assert result["status"] == "error" and result["error_code"] == "user_disabled"


async def test_the_token_waits_encrypted_and_expired_sessions_end(
    vault: Vault, client: httpx.AsyncClient, signed_app: tuple[App, str], browser: Browser
) -> None:
    signed = SignedClient(client, signed_app[1])
    session = await new_session(signed)
    back = await browser.to_idp_and_back(session["auth_url"], "gina")
    await browser.callback(back)
    async with vault.db.read() as conn:
        row = (await conn.execute(sa.select(auth_sessions))).one()
    assert row.status == "completed" and row.verifier_ct is None and row.nonce is None
    assert b"eyJ" not in row.user_token_ct and row.token_hash != session["session_token"]
    # A session past its lifetime answers "expired" once, then is gone.
    other = await new_session(signed)
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(auth_sessions)
            .where(auth_sessions.c.status == "created")
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    late = await browser.open(other["auth_url"])
    assert late.status_code == 400 and "expired" in late.text
    assert (await poll(signed, other["session_token"])).json() == {"status": "expired"}
    assert (await poll(signed, other["session_token"])).status_code == 404


async def test_verify_token_endpoint(
    vault: Vault, client: httpx.AsyncClient, signed_app: tuple[App, str], idp_peer: IdpPeer
) -> None:
    app, key = signed_app
    signed = SignedClient(client, key)
    token = idp_peer.id_token("hank")
    r = await signed.post("/sdk/auth/verify-token", {"token": token})
    assert (r.status_code, r.json()) == (200, {"sub": "hank"})
    for bad in (token[:-4] + "AAAA", "x" * 20_000, idp_peer.forge(idp_peer.claims(exp=None))):
        r = await signed.post("/sdk/auth/verify-token", {"token": bad})
        assert (r.status_code, r.json()["error"]) == (401, "jwt_validation_error")
        assert bad[:30] not in r.text
    await identity.disable_user(vault, app.id, "hank", OPERATOR)
    r = await signed.post("/sdk/auth/verify-token", {"token": token})
    assert (r.status_code, r.json()["error"]) == (403, "user_disabled")
    _, other_key = await make_app(vault)
    r = await SignedClient(client, other_key).post("/sdk/auth/verify-token", {"token": token})
    assert (r.status_code, r.json()["error"]) == (400, "idp_not_configured")
