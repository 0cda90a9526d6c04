"""The hosted browser-session engine (``services.hosted_sessions``), on both backends:
bound to the first browser only, a callback claimed exactly once, expiry, a result written
once and handed out once, and the long poll."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from grantvault_server.services import hosted_sessions as hosted
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import FakeClock
from grantvault_server.storage.tables import connect_sessions

from .conftest import make_app

KIND = hosted.SessionKind(connect_sessions, "gvtest_", timedelta(minutes=10))


async def new_session(vault: Vault) -> hosted.NewSession:
    app, _key = await make_app(vault)
    new = hosted.new_session(KIND, vault.clock.now())
    async with vault.db.write() as conn:
        await conn.execute(
            sa.insert(connect_sessions).values(
                **new.columns(),
                app_id=app.id,
                status="pending",
                allowed_providers=[],
                principal_type="system",
                actor={"type": "test"},
            )
        )
    return new


async def row_of(vault: Vault, session_id: str) -> Any:
    async with vault.db.read() as conn:
        return await hosted.by_id(conn, KIND, session_id)


async def bind(vault: Vault, session_id: str, cookie: str | None) -> str | None:
    """What a page does: the browser's binding, written. Returns the cookie to set, or
    ``"refused"``."""
    async with vault.db.write() as conn:
        row = await hosted.by_id(conn, KIND, session_id)
        hold = hosted.binding(row.browser_hash, cookie)
        if hold is None or not await hosted.bind_browser(conn, KIND, session_id, hold):
            return "refused"
        return hold.cookie


async def test_the_token_is_stored_only_as_its_hash(vault: Vault) -> None:
    new = await new_session(vault)
    assert new.token.startswith("gvtest_") and len(new.token) > 40
    async with vault.db.read() as conn:
        found = await hosted.find(conn, connect_sessions.c.token_hash, new.token)
        assert await hosted.find(conn, connect_sessions.c.token_hash, new.token + "x") is None
        stored = (await conn.execute(sa.select(connect_sessions.c.token_hash))).scalars().all()
    assert found is not None and found.id == new.id
    assert new.token not in stored and stored == [hosted.digest(new.token)]
    assert found.expires_at - found.created_at == timedelta(minutes=10)


async def test_the_first_browser_is_bound_and_no_other(vault: Vault) -> None:
    new = await new_session(vault)
    cookie = await bind(vault, new.id, None)
    assert cookie is not None and cookie != "refused"
    row = await row_of(vault, new.id)
    assert row.browser_hash == hosted.digest(cookie) and cookie not in str(row._mapping)
    # The same browser comes back: nothing new to set. Another browser, or none: refused.
    assert await bind(vault, new.id, cookie) is None
    assert await bind(vault, new.id, "another-browser-cookie") == "refused"
    assert await bind(vault, new.id, None) == "refused"
    assert hosted.matches(cookie, row.browser_hash)
    assert not hosted.matches("another-browser-cookie", row.browser_hash)
    assert not hosted.matches(None, row.browser_hash) and not hosted.matches(cookie, None)


async def test_of_two_browsers_racing_to_bind_one_wins(vault: Vault) -> None:
    new = await new_session(vault)
    row = await row_of(vault, new.id)
    # Both read the session unbound; each holds a fresh cookie; only one write may land.
    first, second = hosted.binding(row.browser_hash, None), hosted.binding(row.browser_hash, None)
    assert first is not None and second is not None and first.first and second.first

    async def write(hold: hosted.Binding) -> bool:
        async with vault.db.write() as conn:
            return await hosted.bind_browser(conn, KIND, new.id, hold)

    results = await asyncio.gather(write(first), write(second))
    assert sorted(results) == [False, True]
    winner = first if results[0] else second
    assert (await row_of(vault, new.id)).browser_hash == winner.browser_hash


async def test_a_callback_is_claimed_exactly_once(vault: Vault) -> None:
    new = await new_session(vault)
    state, state_hash = hosted.new_state()
    assert state_hash == hosted.digest(state) and state not in state_hash
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(connect_sessions)
            .where(connect_sessions.c.id == new.id)
            .values(result={"state": state_hash})
        )

    async def claim() -> bool:
        async with vault.db.write() as conn:
            return await hosted.claim_once(
                conn,
                connect_sessions,
                new.id,
                connect_sessions.c.status == "pending",
                {"status": "exchanging"},
            )

    results = await asyncio.gather(*(claim() for _ in range(5)))
    assert results.count(True) == 1, results
    assert not await claim()  # a replay, later
    assert (await row_of(vault, new.id)).status == "exchanging"


async def test_expiry_follows_the_vaults_clock(vault: Vault, clock: FakeClock) -> None:
    new = await new_session(vault)
    row = await row_of(vault, new.id)
    assert KIND.status(row, clock.now()) == "pending" and KIND.live(row, clock.now())
    clock.advance(minutes=9, seconds=59)
    assert KIND.live(row, clock.now())
    clock.advance(1)
    assert KIND.status(row, clock.now()) == "expired" and not KIND.live(row, clock.now())
    # A finished session keeps its status past the expiry.
    finished = SimpleNamespace(**dict(row._mapping, status="completed"))
    assert KIND.status(finished, clock.now()) == "completed"
    # Purged only once expired before the cutoff.
    async with vault.db.write() as conn:
        assert await hosted.purge(conn, KIND, new.expires_at) == 0
        assert await hosted.purge(conn, KIND, clock.now() + timedelta(seconds=1)) == 1
    assert await row_of(vault, new.id) is None


async def test_a_result_is_written_once_and_handed_out_once(vault: Vault) -> None:
    new = await new_session(vault)
    async with vault.db.write() as conn:
        assert await hosted.settle(conn, KIND, new.id, {"status": "completed", "result": {"n": 1}})
        # Never overwritten: the session is no longer pending.
        assert not await hosted.settle(conn, KIND, new.id, {"status": "error", "result": {}})
    row = await row_of(vault, new.id)
    assert (row.status, row.result) == ("completed", {"n": 1})

    async def hand_out() -> bool:
        async with vault.db.write() as conn:
            return await hosted.hand_out_once(conn, KIND, new.id)

    assert sorted(await asyncio.gather(hand_out(), hand_out())) == [False, True]


async def test_a_long_poll_waits_until_woken_or_out_of_time(vault: Vault) -> None:
    new = await new_session(vault)
    waiters = hosted.Waiters()
    reads = 0

    async def collect() -> tuple[str, dict[str, Any] | None]:
        nonlocal reads
        reads += 1
        row = await row_of(vault, new.id)
        return row.id, ({"status": row.status} if row.status != "pending" else None)

    # Nothing happens: pending after the budget, re-reading the database meanwhile.
    assert await hosted.long_poll(collect, waiters, 0.3, recheck_s=0.1) is None
    assert reads >= 3
    assert await hosted.long_poll(collect, waiters, hosted.wait_budget(-5, 1000)) is None

    async def finish_soon() -> None:
        await asyncio.sleep(0.05)
        async with vault.db.write() as conn:
            await hosted.settle(conn, KIND, new.id, {"status": "completed"})
        waiters.wake(new.id)

    loop = asyncio.get_running_loop()
    started = loop.time()
    result, _ = await asyncio.gather(
        hosted.long_poll(collect, waiters, 10.0, recheck_s=10.0), finish_soon()
    )
    assert result == {"status": "completed"}
    assert loop.time() - started < 5  # woken, not timed out
    assert waiters.events == {}
    assert hosted.wait_budget(None, 30_000) == 0 and hosted.wait_budget(99_000, 30_000) == 30
