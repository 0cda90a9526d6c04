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
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
import sqlalchemy as sa

from grantvault_server.app import create_app
from grantvault_server.config import Settings
from grantvault_server.oauth import client as oauth_client
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import utcnow
from grantvault_server.storage import db as storage_db
from grantvault_server.storage.tables import audit_events, oauth_tokens

from .conftest import PG_ADMIN_URL, SignedClient, make_app
from .oauth_flow import approve, browser_for, follow, register_peer
from .peer import VAULT_BASE_URL, Peer, query_of, start_peer
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
    assert grant_errors(setup.peer) == errors_before + 1
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
