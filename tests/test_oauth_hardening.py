"""Issue 9, items 1, 2 and 10, against the real OIDC peer on SQLite and PostgreSQL.

* A provider that accepts the connection and never answers (the peer stopped with SIGSTOP)
  is a transient failure: the lease is released, a cool-down is recorded and audited, a still
  valid access token is served, then ``503 provider_unavailable`` with ``Retry-After``. When
  the stopped peer later processes the request (rotating the refresh token whose answer we
  never got) and refuses the old one, the grant needs a reconnect for a named reason.
* The same hang in the Connect callback ends the session with ``provider_unavailable``.
* Tokens a provider already answered survive a database that refuses writes for a while.
* The ``error`` of a provider's redirect is filtered before it reaches the app.

The provider-call limit is shortened to one second (``TOTAL_TIMEOUT_S``) and the cool-down is
skipped by editing the row, so no test waits for real time to pass.
"""

from __future__ import annotations

import asyncio
import html
import re
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.app import create_app
from grantvault_server.config import Settings
from grantvault_server.errors import VaultError
from grantvault_server.oauth import client as oauth_client
from grantvault_server.oauth.client import OAuthClient
from grantvault_server.services import (
    grants as grant_service,
    oauth_providers,
    oauth_tokens as token_service,
)
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import utcnow
from grantvault_server.storage import db as storage_db
from grantvault_server.storage.tables import (
    audit_events,
    grants,
    oauth_revocations,
    oauth_tokens,
)

from .conftest import OPERATOR, PG_ADMIN_URL, SignedClient, make_app
from .oauth_flow import (
    approve,
    browser_for,
    consent_page,
    csrf_of,
    follow,
    register_peer,
    session_id_of,
)
from .peer import BASIC_CLIENT, VAULT_BASE_URL, Peer, query_of, start_peer
from .test_oauth_connect import (
    Setup,
    connect_grant,
    expire_now,
    grant_errors,
    refreshes,
    stored_tokens,
)

#: How long the database refuses writes in the stall test (longer than its lock waits).
STALL_S = 2.0
#: The lock waits of the vault's own connections in this module (SQLite busy timeout,
#: PostgreSQL lock_timeout), so that a held lock makes writes *fail*, not just wait.
LOCK_WAIT_MS = 200


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    """This module's own peer: its tests stop it, which must not disturb anybody else."""
    p = start_peer(PEER_ACCESS_TOKEN_TTL=60)
    try:
        yield p
    finally:
        p.proc.send_signal(signal.SIGCONT)
        p.stop()


@pytest.fixture
async def short_lock_waits(
    backend: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes blocked by another connection fail after LOCK_WAIT_MS (before the vault starts)."""
    if backend == "sqlite":
        monkeypatch.setattr(storage_db, "SQLITE_BUSY_TIMEOUT_MS", LOCK_WAIT_MS)
        return
    admin = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        name = database_url.rsplit("/", 1)[1]
        await admin.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '{LOCK_WAIT_MS}ms'")
    finally:
        await admin.close()


@pytest.fixture
def settings(settings: Settings, short_lock_waits: None) -> Settings:
    return settings.model_copy(update={"public_base_url": VAULT_BASE_URL})


@pytest.fixture
def fast_provider_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oauth_client, "TOTAL_TIMEOUT_S", 1.0)


@pytest.fixture
async def asgi(vault: Vault) -> Any:
    return create_app(vault=vault)


@pytest.fixture
async def browser(asgi: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with browser_for(asgi) as b:
        yield b


@pytest.fixture
async def setup(vault: Vault, asgi: Any, peer: Peer) -> AsyncIterator[Setup]:
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
        app, key = await make_app(vault)
        await register_peer(vault, app, peer)
        yield Setup(vault, app, SignedClient(api, key), peer)


class stopped:
    """The peer keeps its socket open (the kernel accepts connections) but never answers."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def __enter__(self) -> None:
        self.peer.proc.send_signal(signal.SIGSTOP)

    def __exit__(self, *_exc: object) -> None:
        self.peer.proc.send_signal(signal.SIGCONT)


async def set_token_row(setup: Setup, grant_id: str, **values: Any) -> None:
    async with setup.vault.db.write() as conn:
        await conn.execute(
            sa.update(oauth_tokens).where(oauth_tokens.c.grant_id == grant_id).values(**values)
        )


async def token_row(setup: Setup, grant_id: str) -> Any:
    async with setup.vault.db.read() as conn:
        return (
            await conn.execute(sa.select(oauth_tokens).where(oauth_tokens.c.grant_id == grant_id))
        ).one()


async def audit_of(setup: Setup, grant_id: str, event: str) -> list[Any]:
    async with setup.vault.db.read() as conn:
        return list(
            (
                await conn.execute(
                    sa.select(audit_events)
                    .where(audit_events.c.grant_id == grant_id, audit_events.c.event == event)
                    .order_by(audit_events.c.seq)
                )
            ).all()
        )


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# -- item 1: a provider that accepts the connection but never answers -----------------------


async def test_hung_provider_during_refresh_is_transient_and_a_lost_answer_is_named(
    setup: Setup, browser: httpx.AsyncClient, fast_provider_limit: None
) -> None:
    grant = await connect_grant(setup, browser, user="hung-refresh")
    gid = grant["grant_id"]
    access0, refresh0, _ = await stored_tokens(setup, gid)
    now = utcnow()
    # Due for refresh (inside the last tenth of its life) but still valid for 5 s.
    await set_token_row(
        setup,
        gid,
        updated_at=now - timedelta(seconds=100),
        access_expires_at=now + timedelta(seconds=5),
    )
    before = refreshes(setup.peer)
    with stopped(setup.peer):
        started = time.monotonic()
        r = await setup.token(gid)
        # The still-valid token is served, after one bounded wait, never a 500.
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 5
        assert r.json()["access_token"] == access0
        assert r.json()["retry_info"]["errors"][0]["error"] == "timeout"
        row = await token_row(setup, gid)
        assert row.lease_owner is None and row.lease_until is None  # released at once
        assert row.cooldown_until is not None and row.cooldown_until > utcnow()
        assert row.last_refresh_error.startswith("answer_lost")
        (failed,) = await audit_of(setup, gid, "token.refresh_failed")
        assert failed.reason == "timeout" and failed.details["answer_lost"] is True
        # Once the token has expired: 503 at once (the cool-down), with a bounded Retry-After.
        await set_token_row(setup, gid, access_expires_at=utcnow() - timedelta(seconds=1))
        started = time.monotonic()
        r = await setup.token(gid)
        assert time.monotonic() - started < 1
        assert r.status_code == 503 and r.json()["error"] == "provider_unavailable", r.text
        assert 1 <= int(r.headers["retry-after"]) <= 300
        assert r.json()["retry_after_seconds"] == int(r.headers["retry-after"])
    # Resumed, the peer handles the request it had accepted: it rotates the refresh token
    # and answers into a closed connection. That answer is lost for good.
    await wait_for(lambda: refreshes(setup.peer) == before + 1)
    errors_before = grant_errors(setup.peer)
    # The cool-down is over (skipped by editing the row): the next refresh sends the token
    # the peer has already rotated, and the peer refuses it as reused.
    await set_token_row(setup, gid, cooldown_until=utcnow() - timedelta(seconds=1))
    r = await setup.token(gid)
    assert r.status_code == 403 and r.json()["error"] == "credential_revoked", r.text
    # The peer logs the refusal on its stderr, read by a thread: it may land just after.
    await wait_for(lambda: grant_errors(setup.peer) == errors_before + 1)
    row = await token_row(setup, gid)
    assert row.needs_reconnect is True and row.refresh_ct is None
    (dead,) = await audit_of(setup, gid, "grant.needs_reconnect")
    assert dead.reason == "refresh_answer_lost", dead.reason
    assert dead.details["provider_error"] == "invalid_grant"
    assert refresh0 is not None


async def test_hung_provider_during_code_exchange_ends_the_session_cleanly(
    setup: Setup, browser: httpx.AsyncClient, fast_provider_limit: None
) -> None:
    session = await setup.session()
    step = await approve(
        browser, session["connect_url"], user="hung-exchange", stop_at_callback=True
    )
    with stopped(setup.peer):
        started = time.monotonic()
        r = await browser.get(step.url)
        assert time.monotonic() - started < 5
        assert r.status_code == 303, r.text[:300]
        page = await follow(browser, VAULT_BASE_URL + r.headers["location"])
    result = page.response
    assert result.status_code == 200 and result.headers["content-type"].startswith("text/html")
    assert "Not connected" in result.text and "could not be reached" in result.text
    assert "frame-ancestors 'none'" in result.headers["content-security-policy"]
    assert result.headers["cache-control"] == "no-store"
    assert result.headers["x-frame-options"] == "DENY"
    polled = await setup.poll(session["session_token"])
    assert polled["status"] == "error", polled
    assert polled["error"]["error_code"] == "provider_unavailable"


# -- item 2: a refresh whose answer arrived but whose commit failed --------------------------


def _hold_write_lock(backend: str, url: str, grant_id: str, held: threading.Event) -> None:
    """Another connection that blocks the grant's token row for STALL_S, then lets go."""
    if backend == "sqlite":
        conn = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            held.set()
            time.sleep(STALL_S)
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return

    async def hold() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM oauth_tokens WHERE grant_id = $1 FOR UPDATE", grant_id
                )
                held.set()
                await asyncio.sleep(STALL_S)
        finally:
            await conn.close()

    asyncio.run(hold())


async def test_refresh_answer_survives_a_database_stall(
    setup: Setup,
    browser: httpx.AsyncClient,
    backend: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grant = await connect_grant(setup, browser, user="stalled-db")
    gid = grant["grant_id"]
    access0, refresh0, gen0 = await stored_tokens(setup, gid)
    await expire_now(setup, gid)
    before, errors_before = refreshes(setup.peer), grant_errors(setup.peer)
    oauth = setup.vault.oauth
    real_refresh = oauth.refresh
    holders: list[threading.Thread] = []

    async def refresh_then_stall(*args: Any, **kwargs: Any) -> Any:
        tokens = await real_refresh(*args, **kwargs)  # the provider has answered (and rotated)
        held = threading.Event()
        holder = threading.Thread(
            target=_hold_write_lock, args=(backend, database_url, gid, held), daemon=True
        )
        holder.start()
        holders.append(holder)
        assert await asyncio.to_thread(held.wait, 5)
        return tokens

    monkeypatch.setattr(oauth, "refresh", refresh_then_stall)
    started = time.monotonic()
    r = await setup.token(gid)
    assert r.status_code == 200, r.text
    assert time.monotonic() - started >= STALL_S * 0.9  # it did wait through the stall
    monkeypatch.setattr(oauth, "refresh", real_refresh)
    for holder in holders:
        holder.join(5)
    access1, refresh1, gen1 = await stored_tokens(setup, gid)
    assert r.json()["access_token"] == access1 != access0  # served the new, committed token
    assert refresh1 not in (None, refresh0) and gen1 != gen0
    assert refreshes(setup.peer) == before + 1
    (done,) = await audit_of(setup, gid, "token.refreshed")
    assert done.details["commit_tries"] > 1  # the first commit really failed
    # After recovery: the stored token is used without a refresh ...
    r = await setup.token(gid)
    assert r.json()["access_token"] == access1 and refreshes(setup.peer) == before + 1
    # ... and the next refresh sends the rotated refresh token, which the peer accepts.
    await expire_now(setup, gid)
    r = await setup.token(gid)
    assert r.status_code == 200, r.text
    assert refreshes(setup.peer) == before + 2
    assert grant_errors(setup.peer) == errors_before  # the used token was never re-sent
    assert setup.peer.introspect(refresh1)["active"] is False  # rotated again


# -- item 10: the provider's error text ------------------------------------------------------


async def test_callback_error_text_is_filtered_before_it_reaches_the_app(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    session = await setup.session(return_url="http://127.0.0.1:9/done")
    step = await approve(browser, session["connect_url"], user="evil-error", stop_at_callback=True)
    params = query_of(step.url)
    evil = '<img src=x onerror="alert(1)">\r\nSet-Cookie: a=b\x1b[31m'
    query = httpx.QueryParams({"state": params["state"], "iss": params["iss"], "error": evil})
    r = await browser.get(f"{VAULT_BASE_URL}/sdk/oauth/callback?{query}")
    assert r.status_code == 303, r.text[:300]
    page = (await follow(browser, VAULT_BASE_URL + r.headers["location"])).response
    assert page.status_code == 200
    polled = await setup.poll(session["session_token"])
    assert polled["status"] == "error"
    message = polled["error"]["error_message"]
    # Cut to 64 characters, then only printable ASCII without markup or quotes is kept.
    expected = "".join(c for c in evil[:64] if 0x21 <= ord(c) < 0x7F and c not in "\"'<>&\\`")
    assert expected == "imgsrc=xonerror=alert(1)Set-Cookie:a=b[31m"
    assert f"({expected})" in message, message
    for bad in ("<", ">", '"', "\r", "\n", "\x1b", " onerror"):
        assert bad not in message, (bad, message)
    # The return URL carries the same filtered text.
    match = re.search(r'id="gv-continue" href="([^"]+)"', page.text)
    assert match, page.text[:800]
    link = html.unescape(match.group(1))
    assert link.startswith("http://127.0.0.1:9/done?")
    description = parse_qs(urlsplit(link).query)["error_description"][0]
    assert description == message
    assert "<img" not in page.text and "\x1b" not in page.text


# -- review of items 1 and 2: answers lost after the provider processed the request -----------


class Mangling(httpx.AsyncHTTPTransport):
    """Passes every request to the peer (which processes it and rotates the refresh token),
    then hands the vault an answer it cannot use in place of the peer's."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        await response.aread()
        if self.kind == "oversized":
            body = b'{"pad": "' + b"x" * oauth_client.MAX_RESPONSE_BYTES + b'"}'
            return httpx.Response(200, headers={"content-type": "application/json"}, content=body)
        if self.kind == "malformed":
            return httpx.Response(200, headers={"content-type": "application/json"}, content=b"{")
        if self.kind == "non_bearer":
            payload = dict(response.json(), token_type="DPoP")
            return httpx.Response(200, json=payload)
        if self.kind == "no_error_body":
            return httpx.Response(500, content=b"<html>oops</html>")
        return httpx.Response(int(self.kind), content=b"upstream gave up")


async def cfg_of(setup: Setup) -> Any:
    async with setup.vault.db.read() as conn:
        return await oauth_providers.get_config(conn, setup.app.id, "peer")


@pytest.mark.parametrize("kind", ["oversized", "malformed", "non_bearer", "502", "no_error_body"])
async def test_an_unusable_answer_to_a_processed_refresh_is_never_re_sent(
    setup: Setup, browser: httpx.AsyncClient, kind: str
) -> None:
    grant = await connect_grant(setup, browser, user=f"mangled-{kind}")
    gid = grant["grant_id"]
    await expire_now(setup, gid)
    before, errors_before = refreshes(setup.peer), grant_errors(setup.peer)
    real = setup.vault.oauth
    mangled = OAuthClient(setup.vault.settings.allow_http_hosts, transport=Mangling(kind))
    setup.vault._oauth = mangled
    try:
        r = await setup.token(gid)
    finally:
        setup.vault._oauth = real
        await mangled.aclose()
    assert r.status_code == 503 and r.json()["error"] == "provider_unavailable", r.text
    assert "retry-after" in r.headers
    # Processed once by the peer, never sent again with the same refresh token (the peer's
    # log arrives through a pipe: wait for it, then a little longer for any re-send).
    await wait_for(lambda: refreshes(setup.peer) >= before + 1)
    await asyncio.sleep(0.2)
    assert refreshes(setup.peer) == before + 1 and grant_errors(setup.peer) == errors_before
    row = await token_row(setup, gid)
    assert row.last_refresh_error.startswith("answer_lost"), row.last_refresh_error
    assert row.lease_owner is None
    (failed,) = await audit_of(setup, gid, "token.refresh_failed")
    assert failed.details["answer_lost"] is True and failed.details["attempts"] == 1
    # After the cool-down the rotated-away token is refused, and the reason says why.
    await set_token_row(setup, gid, cooldown_until=utcnow() - timedelta(seconds=1))
    r = await setup.token(gid)
    assert r.status_code == 403 and r.json()["error"] == "credential_revoked", r.text
    (dead,) = await audit_of(setup, gid, "grant.needs_reconnect")
    assert dead.reason == "refresh_answer_lost"


async def test_a_refresh_that_never_reached_the_provider_is_retried(
    setup: Setup, browser: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await connect_grant(setup, browser, user="refused-once")
    gid = grant["grant_id"]
    await expire_now(setup, gid)
    oauth = setup.vault.oauth
    real_refresh = oauth.refresh
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/token"
    calls: list[str] = []

    async def refused_first(spec: Any, token_url: str, *args: Any) -> Any:
        calls.append(token_url)
        return await real_refresh(spec, closed if len(calls) == 1 else token_url, *args)

    monkeypatch.setattr(oauth, "refresh", refused_first)
    before = refreshes(setup.peer)
    r = await setup.token(gid)
    assert r.status_code == 200, r.text
    assert len(calls) == 2
    await wait_for(lambda: refreshes(setup.peer) == before + 1)
    assert r.json()["retry_info"]["errors"][0]["error"] == "network_error"


async def test_expired_token_and_a_hung_provider_answer_503_after_the_bounded_wait(
    setup: Setup, browser: httpx.AsyncClient, fast_provider_limit: None
) -> None:
    grant = await connect_grant(setup, browser, user="hung-expired")
    gid = grant["grant_id"]
    await expire_now(setup, gid)
    before = refreshes(setup.peer)
    with stopped(setup.peer):
        started = time.monotonic()
        r = await setup.token(gid)
        elapsed = time.monotonic() - started
    # One provider call (1 s here, TOTAL_TIMEOUT_S), never re-sent, then 503 at once.
    assert 0.9 <= elapsed < 3, elapsed
    assert r.status_code == 503 and r.json()["error"] == "provider_unavailable", r.text
    assert 1 <= int(r.headers["retry-after"]) <= 300
    row = await token_row(setup, gid)
    assert row.lease_owner is None and row.last_refresh_error.startswith("answer_lost")
    await wait_for(lambda: refreshes(setup.peer) == before + 1)


# -- review: the lease bounds every provider call ------------------------------------------


async def test_no_provider_call_starts_that_could_outlive_the_lease(
    setup: Setup,
    browser: httpx.AsyncClient,
    fast_provider_limit: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grant = await connect_grant(setup, browser, user="short-lease")
    gid = grant["grant_id"]
    access0, _, _ = await stored_tokens(setup, gid)
    # The lease covers one provider call (1 s) and the commit retries (30 s) with 0.5 s to
    # spare; a database slow by 1 s before the call eats that.
    monkeypatch.setattr(token_service, "LEASE", timedelta(seconds=36.5))
    real_credentials = oauth_providers.client_credentials

    async def slow_credentials(*args: Any) -> Any:
        await asyncio.sleep(1.0)
        return await real_credentials(*args)

    monkeypatch.setattr(oauth_providers, "client_credentials", slow_credentials)
    before = refreshes(setup.peer)
    now = utcnow()
    await set_token_row(
        setup, gid, updated_at=now - timedelta(seconds=100), access_expires_at=now + timedelta(5)
    )
    r = await setup.token(gid)
    assert r.status_code == 200 and r.json()["access_token"] == access0, r.text
    await expire_now(setup, gid)
    r = await setup.token(gid)
    assert r.status_code == 503 and r.json()["error"] == "storage_unavailable", r.text
    assert refreshes(setup.peer) == before  # never sent
    row = await token_row(setup, gid)
    assert row.lease_owner is None and row.cooldown_until is None  # released, no cool-down
    assert await audit_of(setup, gid, "token.refresh_failed") == []


# -- review: another replica's refresh, and one that died holding the lease ----------------


async def test_a_still_valid_token_is_served_while_another_replica_refreshes(
    setup: Setup, browser: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await connect_grant(setup, browser, user="other-replica")
    gid = grant["grant_id"]
    access0, _, _ = await stored_tokens(setup, gid)
    monkeypatch.setattr(token_service, "WAIT_FOR_REFRESH_S", 1.5)
    now = utcnow()
    await set_token_row(
        setup,
        gid,
        updated_at=now - timedelta(seconds=100),
        access_expires_at=now + timedelta(seconds=5),
        lease_owner=str(uuid.uuid4()),
        lease_until=now + timedelta(seconds=60),
    )
    before = refreshes(setup.peer)
    started = time.monotonic()
    r = await setup.token(gid)
    assert time.monotonic() - started < 1
    assert r.status_code == 200 and r.json()["access_token"] == access0, r.text
    assert refreshes(setup.peer) == before


async def test_a_lease_abandoned_mid_refresh_is_remembered_as_a_lost_answer(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    grant = await connect_grant(setup, browser, user="crashed-refresher")
    gid = grant["grant_id"]
    _, refresh0, _ = await stored_tokens(setup, gid)
    assert refresh0 is not None
    # The crashed refresher's request reached the peer (which rotated the token) ...
    doc = await setup.vault.oauth.discover(setup.peer.issuer)
    async with httpx.AsyncClient(timeout=10) as http:
        used = await http.post(
            doc["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": refresh0},
            auth=BASIC_CLIENT,
        )
    assert used.status_code == 200, used.text
    # ... and its lease ran out with its owner still named.
    now = utcnow()
    await set_token_row(
        setup,
        gid,
        access_expires_at=now - timedelta(seconds=1),
        lease_owner=str(uuid.uuid4()),
        lease_until=now - timedelta(seconds=1),
    )
    r = await setup.token(gid)
    assert r.status_code == 403 and r.json()["error"] == "credential_revoked", r.text
    (taken_over,) = await audit_of(setup, gid, "token.refresh_failed")
    assert taken_over.reason == "lease_expired" and taken_over.details["answer_lost"] is True
    (dead,) = await audit_of(setup, gid, "grant.needs_reconnect")
    assert dead.reason == "refresh_answer_lost", dead.reason


async def test_a_lease_released_cleanly_then_expired_is_not_a_lost_answer(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    grant = await connect_grant(setup, browser, user="clean-release")
    gid = grant["grant_id"]
    await set_token_row(
        setup,
        gid,
        access_expires_at=utcnow() - timedelta(seconds=1),
        lease_until=utcnow() - timedelta(seconds=1),
    )
    r = await setup.token(gid)
    assert r.status_code == 200, r.text
    assert await audit_of(setup, gid, "token.refresh_failed") == []
    assert (await token_row(setup, gid)).last_refresh_error is None


# -- review of item 2: the held commit's branches ------------------------------------------


class Writes:
    """Wraps ``vault.db.write``: the next ``lost`` transactions commit and then report a
    failure (the answer to COMMIT was lost); while ``refused`` every one fails."""

    def __init__(self, vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = vault.db.write
        self.lost = 0
        self.refused = False
        monkeypatch.setattr(vault.db, "write", self.write)

    @asynccontextmanager
    async def write(self, **kw: Any) -> AsyncIterator[Any]:
        if self.refused:
            raise storage_db.storage_unavailable()
        async with self.real(**kw) as conn:
            yield conn
        if self.lost:
            self.lost -= 1
            raise storage_db.storage_unavailable()


async def revocations(setup: Setup) -> int:
    return await setup.count(oauth_revocations)


async def test_a_commit_whose_answer_was_lost_counts_as_done(
    setup: Setup, browser: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await connect_grant(setup, browser, user="in-doubt-commit")
    gid = grant["grant_id"]
    await expire_now(setup, gid)
    writes = Writes(setup.vault, monkeypatch)
    oauth = setup.vault.oauth
    real_refresh = oauth.refresh

    async def answered(*args: Any) -> Any:
        tokens = await real_refresh(*args)
        writes.lost = 1  # the commit that follows succeeds but reports a failure
        return tokens

    monkeypatch.setattr(oauth, "refresh", answered)
    r = await setup.token(gid)
    assert r.status_code == 200, r.text
    access1, _, _ = await stored_tokens(setup, gid)
    assert r.json()["access_token"] == access1
    (done,) = await audit_of(setup, gid, "token.refreshed")
    assert done.details["commit_tries"] == 1
    assert await revocations(setup) == 0  # the fresh tokens were not taken for orphans


@pytest.mark.parametrize("how", ["revoked", "deleted"])
async def test_a_grant_revoked_during_the_stall_gets_no_tokens_back(
    setup: Setup, browser: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    grant = await connect_grant(setup, browser, user="revoked-in-stall")
    gid = grant["grant_id"]
    await expire_now(setup, gid)
    oauth = setup.vault.oauth
    real_refresh = oauth.refresh
    fresh: list[Any] = []

    async def revoked_meanwhile(*args: Any) -> Any:
        tokens = await real_refresh(*args)
        fresh.append(tokens)
        monkeypatch.setattr(token_service, "run_revocations", _no_revocations)
        await grant_service.revoke_grant(setup.vault, setup.app, gid, OPERATOR)
        if how == "deleted":  # the grant row itself gone: the orphans still queue
            async with setup.vault.db.write() as conn:
                await conn.execute(sa.delete(grants).where(grants.c.id == gid))
        return tokens

    monkeypatch.setattr(oauth, "refresh", revoked_meanwhile)
    monkeypatch.setattr(grant_service, "run_revocations", _no_revocations)
    r = await setup.token(gid)
    assert r.status_code == 403 and r.json()["error"] == "grant_revoked", r.text
    async with setup.vault.db.read() as conn:
        left = (
            await conn.execute(sa.select(oauth_tokens).where(oauth_tokens.c.grant_id == gid))
        ).first()
    assert left is None  # nothing resurrected
    # Old refresh + access token (the revocation) and the two fresh ones (the orphans).
    assert await revocations(setup) == 4
    monkeypatch.undo()
    await token_service.run_revocations(setup.vault)
    (tokens,) = fresh
    assert setup.peer.introspect(tokens.refresh_token)["active"] is False


async def _no_revocations(*_args: Any, **_kw: Any) -> int:
    return 0


async def test_a_commit_out_of_time_drops_the_tokens_loudly(
    setup: Setup,
    browser: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    grant = await connect_grant(setup, browser, user="commit-deadline")
    gid = grant["grant_id"]
    await expire_now(setup, gid)
    cfg = await cfg_of(setup)
    monkeypatch.setattr(token_service, "COMMIT_RETRY_S", 0.5)
    writes = Writes(setup.vault, monkeypatch)
    oauth = setup.vault.oauth
    real_refresh = oauth.refresh

    async def answered(*args: Any) -> Any:
        tokens = await real_refresh(*args)
        writes.refused = True
        return tokens

    monkeypatch.setattr(oauth, "refresh", answered)
    started = time.monotonic()
    with pytest.raises(VaultError) as caught:
        await token_service.access_token(setup.vault, cfg, gid)
    assert caught.value.code is ErrorCode.STORAGE_UNAVAILABLE
    assert time.monotonic() - started < 2
    assert any("tokens dropped" in rec.getMessage() for rec in caplog.records)
    writes.refused = False
    assert await audit_of(setup, gid, "token.refreshed") == []


# -- review item 12: an outcome written twice is audited once --------------------------------


@pytest.mark.parametrize("outcome", ["transient", "dead"])
async def test_a_failure_recorded_by_an_in_doubt_commit_is_audited_once(
    setup: Setup, browser: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    grant = await connect_grant(setup, browser, user=f"in-doubt-{outcome}")
    gid = grant["grant_id"]
    await expire_now(setup, gid)
    writes = Writes(setup.vault, monkeypatch)

    async def failing(*_args: Any) -> Any:
        writes.lost = 1
        if outcome == "dead":
            raise oauth_client.OAuthError("invalid_grant", status=400)
        raise oauth_client.OAuthError("timeout", transient=True, maybe_delivered=True)

    monkeypatch.setattr(setup.vault.oauth, "refresh", failing)
    r = await setup.token(gid)
    if outcome == "dead":
        assert r.status_code == 403 and r.json()["error"] == "credential_revoked", r.text
        assert len(await audit_of(setup, gid, "grant.needs_reconnect")) == 1
    else:
        assert r.status_code == 503 and r.json()["error"] == "provider_unavailable", r.text
        assert len(await audit_of(setup, gid, "token.refresh_failed")) == 1


# -- review item 5: a held commit on SQLite does not freeze the server ---------------------


async def test_held_commit_retries_keep_the_event_loop_running(
    setup: Setup,
    browser: httpx.AsyncClient,
    backend: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grant = await connect_grant(setup, browser, user="loop-alive")
    gid = grant["grant_id"]
    await expire_now(setup, gid)
    # The default lock wait (longer than the stall), on fresh connections.
    monkeypatch.setattr(storage_db, "SQLITE_BUSY_TIMEOUT_MS", 5000)
    if setup.vault.db._write is not None:
        setup.vault.db._write.dispose()
    oauth = setup.vault.oauth
    real_refresh = oauth.refresh
    holders: list[threading.Thread] = []

    async def refresh_then_stall(*args: Any) -> Any:
        tokens = await real_refresh(*args)
        held = threading.Event()
        holder = threading.Thread(
            target=_hold_write_lock, args=(backend, database_url, gid, held), daemon=True
        )
        holder.start()
        holders.append(holder)
        assert await asyncio.to_thread(held.wait, 5)
        return tokens

    monkeypatch.setattr(oauth, "refresh", refresh_then_stall)
    longest = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal longest
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            longest, last = max(longest, now - last), now

    tick = asyncio.create_task(ticker())
    try:
        r = await setup.token(gid)
    finally:
        stop.set()
        await tick
        for holder in holders:
            holder.join(5)
    assert r.status_code == 200, r.text
    assert longest < 0.5, f"event loop blocked for {longest:.2f} s"


# -- review item 15: stored endpoints re-checked against this server's http allowance -------


async def test_a_stored_plain_http_authorize_url_is_refused_when_this_server_disallows_it(
    setup: Setup, browser: httpx.AsyncClient
) -> None:
    # Stored by a process that allowed http://127.0.0.1 (the peer); this one does not.
    session = await setup.session()
    step = await consent_page(browser, session["connect_url"])
    sid = session_id_of(step.url)
    vault = setup.vault
    vault.settings = vault.settings.model_copy(update={"allow_http_hosts": []})
    r = await browser.post(
        f"{VAULT_BASE_URL}/connect/s/{sid}/authorize",
        data={"csrf": csrf_of(step.response.text), "provider": "peer"},
    )
    assert r.status_code == 400, (r.status_code, r.headers.get("location"))
    assert "plain http" in r.text and "no-store" in r.headers["cache-control"]


async def test_no_retry_starts_that_would_end_after_the_provider_budget(
    setup: Setup,
    browser: httpx.AsyncClient,
    fast_provider_limit: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grant = await connect_grant(setup, browser, user="provider-budget")
    gid = grant["grant_id"]
    await expire_now(setup, gid)
    monkeypatch.setattr(token_service, "PROVIDER_BUDGET_S", 1.0)  # less than wait + one call
    calls: list[int] = []

    async def refused(*_args: Any) -> Any:
        calls.append(1)
        raise oauth_client.OAuthError("network_error", transient=True)

    monkeypatch.setattr(setup.vault.oauth, "refresh", refused)
    r = await setup.token(gid)
    assert r.status_code == 503 and r.json()["error"] == "provider_unavailable", r.text
    assert len(calls) == 1
    (failed,) = await audit_of(setup, gid, "token.refresh_failed")
    assert failed.details["attempts"] == 1 and failed.details["answer_lost"] is False


async def test_a_still_valid_token_is_served_while_this_process_refreshes(
    setup: Setup, browser: httpx.AsyncClient, fast_provider_limit: None
) -> None:
    grant = await connect_grant(setup, browser, user="joiner")
    gid = grant["grant_id"]
    access0, _, _ = await stored_tokens(setup, gid)
    now = utcnow()
    await set_token_row(
        setup,
        gid,
        updated_at=now - timedelta(seconds=100),
        access_expires_at=now + timedelta(seconds=5),
    )
    with stopped(setup.peer):
        first = asyncio.create_task(setup.token(gid))  # starts the refresh, which hangs
        await wait_for(lambda: gid in setup.vault.refreshes)
        started = time.monotonic()
        r = await setup.token(gid)
        assert time.monotonic() - started < 0.5
        assert r.status_code == 200 and r.json()["access_token"] == access0, r.text
        assert (await first).status_code == 200
