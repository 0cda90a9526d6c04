"""Policies across replicas (issue 11): two servers on one database, each with its own
compiled-policy cache, see a change on their next request; quotas and rate limits stay exact
under concurrent callers spread over both servers (PostgreSQL) and on one server (SQLite).

A "replica" is a second :class:`Vault` started on the same settings (same database) with its
own ASGI app, the pattern of ``test_protocol.test_replay_is_refused_by_another_replica``.
Both replicas share one :class:`FakeClock`, so counter windows never roll over by accident;
time moves only when a test advances it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, time as dtime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from grantvault_server.app import create_app
from grantvault_server.services import (
    grants as grant_service,
    policies as policy_service,
    secrets as secret_service,
)
from grantvault_server.services.apps import App
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import FakeClock
from grantvault_server.storage.tables import policy_counters
from tests.conftest import OPERATOR, SignedClient, make_app

URL = "https://api.openai.com/v1/models"
#: The quota (and per-minute budget) of the concurrency tests; 3 x N callers compete for it.
N = 8


def _body(grant_id: str, method: str = "GET") -> dict[str, Any]:
    return {"grant_id": grant_id, "reason": None, "request": {"method": method, "url": URL}}


async def _grant(vault: Vault, app: App, slug: str = "openai") -> str:
    secret = await secret_service.create_secret(vault, app, OPERATOR, template="openai", slug=slug)
    await secret_service.set_credential(
        vault, app, secret, {"token": "sk-test-replica-0123456"}, OPERATOR
    )
    result = await grant_service.create_grant(vault, app, secret, OPERATOR, principal_type="system")
    return str(result["grant_id"])


def _mid_minute(clock: FakeClock) -> None:
    """Move the shared clock to 12:00:30 UTC tomorrow: far from any minute, hour or day edge,
    so the windows of the counters below are the same for every call of a test."""
    target = datetime.combine(clock.now().date() + timedelta(days=1), dtime(12, 0, 30), UTC)
    clock.advance((target - clock.now()).total_seconds())


async def _counts(vault: Vault, app: App) -> list[int]:
    async with vault.db.read() as conn:
        rows = await conn.execute(
            sa.select(policy_counters.c["count"])
            .where(policy_counters.c.app_id == app.id)
            .order_by(policy_counters.c.window_start)
        )
        return [int(r[0]) for r in rows]


@dataclass
class Replicas:
    """One app with two system grants (on two secrets), served by two vaults on one
    database."""

    one: Vault
    two: Vault
    app: App
    grant_id: str
    second_grant: str
    a: SignedClient
    b: SignedClient

    def client(self, i: int) -> SignedClient:
        """Callers alternate between the replicas."""
        return self.a if i % 2 == 0 else self.b

    def grant(self, i: int, *, crossed: bool = False) -> str:
        """Replica one calls the first grant and replica two the second; ``crossed`` has
        every (replica, grant) pair called."""
        return self.grant_id if (i // 2 if crossed else i) % 2 == 0 else self.second_grant

    async def burst(self, calls: int, *, crossed: bool = False) -> list[httpx.Response]:
        """``calls`` signed retrievals at once, spread over both replicas and both grants.

        Two grants matter: a retrieval batch locks the rows of its grants (the revocation
        re-check), which alone would serialise the replicas' batches on one grant; calls of
        different grants meet only at the shared counter.
        """
        return list(
            await asyncio.gather(
                *(
                    self.client(i).post("/sdk/token", _body(self.grant(i, crossed=crossed)))
                    for i in range(calls)
                )
            )
        )


@pytest.fixture
async def replicas(vault: Vault, clock: FakeClock) -> AsyncIterator[Replicas]:
    other = await Vault.start(vault.settings, migrate_schema=False)
    other.clock = clock
    try:
        app, key = await make_app(vault)
        grant_id = await _grant(vault, app)
        second_grant = await _grant(vault, app, "openai-two")
        async with (
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(vault=vault)),
                base_url="http://replica-one",
            ) as one,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(vault=other)),
                base_url="http://replica-two",
            ) as two,
        ):
            yield Replicas(
                vault,
                other,
                app,
                grant_id,
                second_grant,
                SignedClient(one, key),
                SignedClient(two, key),
            )
    finally:
        await other.close()


def _outcomes(responses: list[httpx.Response]) -> Counter[tuple[int, str | None]]:
    return Counter(
        (r.status_code, None if r.status_code == 200 else r.json().get("error")) for r in responses
    )


# -- a change reaches the other replica on its next request -------------------------------------


async def test_a_change_through_one_replica_applies_on_the_others_next_request(
    replicas: Replicas,
) -> None:
    r = replicas
    # Both replicas have served the app (their caches hold "no policies").
    assert (await r.a.post("/sdk/token", _body(r.grant_id, "POST"))).status_code == 200
    assert (await r.b.post("/sdk/token", _body(r.grant_id, "POST"))).status_code == 200

    # A policy written through replica one is in force on replica two's very next request:
    # no sleep, no poll interval (the issue allows two seconds; none is needed).
    loads = r.two.policies.loads
    started = time.monotonic()
    await policy_service.put_policy(
        r.one, r.app, "read-only", {"rules": {"methods": ["GET"]}}, actor=OPERATOR
    )
    denied = await r.b.post("/sdk/token", _body(r.grant_id, "POST"))
    assert time.monotonic() - started < 2.0
    assert denied.status_code == 403, denied.text
    assert (denied.json()["error"], denied.json()["rule"]) == ("policy_violation", "methods")
    assert denied.json()["policy_version"] == 1
    assert r.two.policies.loads == loads + 1
    # Unchanged policies are served from the replica's cache: no second load.
    assert (await r.b.post("/sdk/token", _body(r.grant_id))).status_code == 200
    assert (await r.b.post("/sdk/token", _body(r.grant_id, "POST"))).status_code == 403
    assert r.two.policies.loads == loads + 1

    # The other way round: a new version written through replica two rules replica one.
    await policy_service.put_policy(
        r.two, r.app, "read-only", {"rules": {"methods": ["POST"]}}, actor=OPERATOR
    )
    now_get = await r.a.post("/sdk/token", _body(r.grant_id))
    assert now_get.status_code == 403 and now_get.json()["policy_version"] == 2
    assert (await r.a.post("/sdk/token", _body(r.grant_id, "POST"))).status_code == 200
    # ... and replica two, which wrote it, applies it too.
    assert (await r.b.post("/sdk/token", _body(r.grant_id))).status_code == 403

    # A deletion through one lifts the policy on the other at once.
    await policy_service.delete_policy(r.one, r.app, "read-only", actor=OPERATOR)
    assert (await r.b.post("/sdk/token", _body(r.grant_id))).status_code == 200
    assert (await r.a.post("/sdk/token", _body(r.grant_id))).status_code == 200


# -- exact counters with concurrent callers -----------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_an_app_quota_is_exact_with_concurrent_callers_on_two_replicas(
    replicas: Replicas, clock: FakeClock
) -> None:
    r = replicas
    _mid_minute(clock)
    await policy_service.put_policy(
        r.one,
        r.app,
        "daily",
        {"rules": {"quota": {"limit": N, "window": "day", "per": "app"}}},
        actor=OPERATOR,
    )
    # One call first, so the counter row exists and the burst below races on its count (not
    # only on creating it, which the unique key would serialise anyway).
    assert (await r.b.post("/sdk/token", _body(r.grant_id))).status_code == 200
    responses = await r.burst(3 * N)
    assert _outcomes(responses) == {(200, None): N - 1, (429, "quota_exceeded"): 2 * N + 1}
    assert await _counts(r.one, r.app) == [N]
    # Every refusal carries the wait until midnight UTC, on either replica.
    waits = {resp.headers["retry-after"] for resp in responses if resp.status_code == 429}
    assert waits == {str(12 * 3600 - 30)}
    # The next day the quota is whole again, for both replicas together.
    clock.advance(12 * 3600 - 30)
    assert (await r.a.post("/sdk/token", _body(r.second_grant))).status_code == 200
    again = await r.burst(3 * N)
    assert _outcomes(again) == {(200, None): N - 1, (429, "quota_exceeded"): 2 * N + 1}
    assert await _counts(r.two, r.app) == [N, N]


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_grant_quota_is_exact_per_grant_on_two_replicas(
    replicas: Replicas, clock: FakeClock
) -> None:
    r = replicas
    _mid_minute(clock)
    await policy_service.put_policy(
        r.two,
        r.app,
        "per-grant",
        {"rules": {"quota": {"limit": N, "window": "month", "per": "grant"}}},
        actor=OPERATOR,
    )
    responses = await r.burst(6 * N, crossed=True)
    per_grant: dict[str, Counter[int]] = {r.grant_id: Counter(), r.second_grant: Counter()}
    for i, resp in enumerate(responses):
        per_grant[r.grant(i, crossed=True)][resp.status_code] += 1
    assert per_grant == {r.grant_id: {200: N, 429: 2 * N}, r.second_grant: {200: N, 429: 2 * N}}
    assert await _counts(r.one, r.app) == [N, N]


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_per_app_rate_limit_is_shared_by_both_replicas(
    replicas: Replicas, clock: FakeClock
) -> None:
    r = replicas
    _mid_minute(clock)
    await policy_service.put_policy(
        r.two,
        r.app,
        "burst",
        {"rules": {"rate_limit": {"per_minute": N, "per": "app"}}},
        actor=OPERATOR,
    )
    assert (await r.a.post("/sdk/token", _body(r.grant_id))).status_code == 200
    responses = await r.burst(3 * N)
    assert _outcomes(responses) == {(200, None): N - 1, (429, "rate_limit_exceeded"): 2 * N + 1}
    limited = next(resp for resp in responses if resp.status_code == 429)
    body = limited.json()
    assert (body["scope"], body["limit"], body["window_seconds"]) == ("policy", N, 60)
    assert limited.headers["retry-after"] == "30"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert await _counts(r.one, r.app) == [N]
    # The next minute brings a fresh budget, shared again by both.
    clock.advance(30)
    assert (await r.b.post("/sdk/token", _body(r.second_grant))).status_code == 200
    again = await r.burst(3 * N)
    assert _outcomes(again) == {(200, None): N - 1, (429, "rate_limit_exceeded"): 2 * N + 1}
    assert await _counts(r.two, r.app) == [N, N]


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_quota_is_exact_with_concurrent_callers_on_sqlite(
    vault: Vault, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    _mid_minute(clock)
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    other_grant = await _grant(vault, app, "openai-two")
    sc = SignedClient(client, key)
    await policy_service.put_policy(
        vault,
        app,
        "hourly",
        {"rules": {"quota": {"limit": N, "window": "hour", "per": "grant"}}},
        actor=OPERATOR,
    )
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 200
    # Concurrent callers on two grants: each grant's quota is its own, and exact.
    responses = await asyncio.gather(
        *(sc.post("/sdk/token", _body(grant_id if i % 2 else other_grant)) for i in range(6 * N))
    )
    by_grant: dict[str, Counter[int]] = {grant_id: Counter(), other_grant: Counter()}
    for i, resp in enumerate(responses):
        by_grant[grant_id if i % 2 else other_grant][resp.status_code] += 1
    assert by_grant[grant_id] == {200: N - 1, 429: 2 * N + 1}
    assert by_grant[other_grant] == {200: N, 429: 2 * N}
    assert sorted(await _counts(vault, app)) == [N, N]
    assert {r.json()["error"] for r in responses if r.status_code == 429} == {"quota_exceeded"}


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_two_replicas_touching_one_keys_last_use_do_not_deadlock(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found while proving the counters: each replica's retrieval batch share-locked the API
    key row, then updated its ``last_used_at`` (once a minute per key). Two batches that both
    held the share lock waited for each other: a PostgreSQL deadlock, a second's stall and,
    when the retry of a single call deadlocked again, a 503 to the caller.

    Deterministic: both replicas' first batches are held right after the key check until the
    other arrives (or half a second passes, which a correctly locking batch waits out)."""
    from grantvault_server.services.group_commit import RetrievalWriter

    r = replicas
    arrived: list[int] = []
    both = asyncio.Event()
    original = RetrievalWriter._recheck

    async def held(*args: Any) -> None:
        await original(*args)
        if len(arrived) < 2:
            arrived.append(1)
            if len(arrived) == 2:
                both.set()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(both.wait(), 0.5)

    monkeypatch.setattr(RetrievalWriter, "_recheck", staticmethod(held))
    caplog.set_level(logging.WARNING, logger="grantvault_server")
    # The key's first use on both replicas at once, each on its own grant (so the grant
    # locks do not serialise the two batches).
    responses = await r.burst(2)
    assert [resp.status_code for resp in responses] == [200, 200]
    faults = [rec for rec in caplog.records if rec.getMessage() == "database fault"]
    assert [getattr(rec, "sqlstate", None) for rec in faults] == []
