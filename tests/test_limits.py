"""Abuse limits (issue 9, item 3): per API key and per app on ``/sdk/*``, per client IP on the
unauthenticated surfaces and on failed authentications.

The limiter's clock is replaced by a fake one, so budgets refill by advancing it, not by
sleeping.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from grantvault_server.app import create_app
from grantvault_server.config import Settings
from grantvault_server.errors import VaultError
from grantvault_server.ratelimit import RateLimiter, ip_key
from grantvault_server.services.vault import Vault
from tests.conftest import SignedClient, make_app

LIST = "/sdk/grants/list"
LIST_BODY = {"limit": 1, "offset": 0}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limited_app(vault: Vault, clock: FakeClock, **limits: Any) -> FastAPI:
    settings = vault.settings.model_copy(update=limits)
    app = create_app(settings, vault=vault)
    app.state.limiter.clock = clock
    return app


def client_from(app: FastAPI, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def small(vault: Vault, clock: FakeClock) -> AsyncIterator[FastAPI]:
    """An app whose budgets are tiny: 3 per key, 5 per app, 4 per client IP, per minute."""
    yield limited_app(vault, clock, rate_limit_per_key=3, rate_limit_per_app=5, rate_limit_per_ip=4)


# -- the algorithm ----------------------------------------------------------------------------


def test_budget_refills_continuously_with_a_whole_window_of_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_key=3, per_app=0, per_ip=0, window_seconds=60, clock=clock)
    scope: dict[str, Any] = {}
    remaining = []
    for _ in range(3):
        limiter.charge_key(scope, "k", "a")
        remaining.append(scope["grantvault.ratelimit"].remaining)
    assert remaining == [2, 1, 0]
    with pytest.raises(VaultError) as refused:
        limiter.charge_key(scope, "k", "a")
    body = refused.value.body()
    assert body["error"] == "rate_limit_exceeded" and body["scope"] == "api_key"
    assert (body["limit"], body["window_seconds"], body["retry_after"]) == (3, 60, 20)
    clock.advance(19)
    with pytest.raises(VaultError):
        limiter.charge_key(scope, "k", "a")
    clock.advance(1)  # one request's worth (60 s / 3) has refilled
    limiter.charge_key(scope, "k", "a")
    assert scope["grantvault.ratelimit"].remaining == 0
    clock.advance(60)
    limiter.charge_key(scope, "k", "a")
    assert scope["grantvault.ratelimit"].remaining == 2


def test_a_refused_request_spends_nothing_and_the_tighter_budget_is_reported() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_key=10, per_app=2, per_ip=0, window_seconds=60, clock=clock)
    scope: dict[str, Any] = {}
    limiter.charge_key(scope, "k1", "a")
    assert scope["grantvault.ratelimit"].scope == "app"  # 1 left of 2, versus 9 of 10
    limiter.charge_key(scope, "k1", "a")
    with pytest.raises(VaultError):
        limiter.charge_key(scope, "k1", "a")
    assert scope["grantvault.ratelimit"].scope == "app"
    # The refusal did not spend the key's budget: 8 left, not 7.
    limiter.charge_key(scope, "k1", "other-app")
    assert scope["grantvault.ratelimit"].remaining == 1  # other app: 1 of 2 left
    limiter.charge_key(scope, "k1", "third-app")
    assert limiter.keys is not None and limiter.keys.evaluate("k1", clock())[1].remaining == 5


def test_ipv6_clients_share_their_slash_64() -> None:
    assert ip_key("2001:db8:1:2:aaaa::1") == ip_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")
    assert ip_key("192.0.2.7") == "192.0.2.7"


def test_limiter_check_costs_microseconds() -> None:
    """The per-request work of the key and app budgets (the < 5 % bound is measured with
    bench/token_retrieval.py --compare-limiter; this only guards against a regression)."""
    limiter = RateLimiter(per_key=10**9, per_app=10**9, per_ip=0)
    scope: dict[str, Any] = {}
    started = time.perf_counter()
    for i in range(20_000):
        limiter.charge_key(scope, "key", "app")
        scope["grantvault.ratelimit"].headers(1.0e9 + i)
    per_check = (time.perf_counter() - started) / 20_000
    assert per_check < 30e-6, per_check


# -- over HTTP, both backends ---------------------------------------------------------------


async def test_key_and_app_budgets_answer_429_with_headers_the_clients_read(
    vault: Vault, small: FastAPI, clock: FakeClock
) -> None:
    app_record, key = await make_app(vault)
    from grantvault_server.services import apps as app_service
    from tests.conftest import OPERATOR

    _, second_key = await app_service.create_key(vault, app_record, OPERATOR)
    _, other_key = await make_app(vault)
    async with client_from(small, "198.51.100.7") as c:
        first = SignedClient(c, key)
        answers = [await first.post(LIST, LIST_BODY) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 200]
        ok = answers[-1]
        assert ok.headers["x-ratelimit-limit"] == "3"
        assert ok.headers["x-ratelimit-remaining"] == "0"
        assert int(ok.headers["x-ratelimit-reset"]) >= int(time.time()) + 59
        assert ok.headers["ratelimit-policy"] == '"api_key";q=3;w=60'
        assert ok.headers["ratelimit"] == '"api_key";r=0;t=60'

        refused = await first.post(LIST, LIST_BODY)
        assert refused.status_code == 429
        assert refused.json() == {
            "error": "rate_limit_exceeded",
            "message": refused.json()["message"],
            "scope": "api_key",
            "limit": 3,
            "window_seconds": 60,
            "retry_after": 20,
        }
        assert refused.headers["retry-after"] == "20"
        assert refused.headers["x-ratelimit-remaining"] == "0"

        # The app's budget (5) is shared by its keys: the second key gets the 2 left.
        second = SignedClient(c, second_key)
        assert [(await second.post(LIST, LIST_BODY)).status_code for _ in range(2)] == [200, 200]
        app_refused = await second.post(LIST, LIST_BODY)
        assert app_refused.status_code == 429 and app_refused.json()["scope"] == "app"
        assert app_refused.json()["limit"] == 5

        # Another app is not affected; time refills the budgets.
        assert (await SignedClient(c, other_key).post(LIST, LIST_BODY)).status_code == 200
        clock.advance(20)
        assert (await first.post(LIST, LIST_BODY)).status_code == 200
        metrics = (await c.get("/metrics")).text
    assert 'grantvault_rate_limited_total{scope="api_key"} 1.0' in metrics
    assert 'grantvault_rate_limited_total{scope="app"} 1.0' in metrics
    assert 'grantvault_denials_total{code="rate_limit_exceeded"} 2.0' in metrics


async def test_unsigned_requests_spend_their_ip_budget_not_the_victims_key(
    vault: Vault, small: FastAPI
) -> None:
    _, victim_key = await make_app(vault)
    async with client_from(small, "203.0.113.9") as attacker:
        forger = SignedClient(attacker, victim_key)
        statuses = []
        for _ in range(8):
            body = b'{"limit":1,"offset":0}'
            headers = forger.headers("POST", LIST, body)
            headers["X-Alter-Signature"] = "0" * 64
            statuses.append((await attacker.post(LIST, content=body, headers=headers)).status_code)
        # 4 failed authentications spend the address's budget; then it is refused up front.
        assert statuses == [401] * 4 + [429] * 4
        refused = await attacker.post(LIST, content=b"{}", headers={"x-api-key": victim_key})
        assert refused.status_code == 429 and refused.json()["scope"] == "ip"
        assert refused.headers["retry-after"] == "15"
    async with client_from(small, "198.51.100.7") as victim:
        answers = [await SignedClient(victim, victim_key).post(LIST, LIST_BODY) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 200]


async def test_a_401_after_authentication_does_not_spend_the_ip_budget(
    vault: Vault, small: FastAPI, clock: FakeClock
) -> None:
    _, key = await make_app(vault)
    async with client_from(small, "198.51.100.8") as c:
        signed = SignedClient(c, key)
        body = b'{"limit":1,"offset":0}'
        headers = signed.headers("POST", LIST, body)
        assert (await c.post(LIST, content=body, headers=headers)).status_code == 200
        for _ in range(6):  # replays: authenticated, then refused for the reused nonce
            clock.advance(20)  # keep the key's budget (3/min) out of the way
            replay = await c.post(LIST, content=body, headers=headers)
            assert replay.status_code == 401 and replay.json()["error"] == "replayed_request"
        clock.advance(20)
        assert (await signed.post(LIST, LIST_BODY)).status_code == 200


async def test_hosted_pages_callbacks_and_webhook_are_limited_per_ip(
    vault: Vault, small: FastAPI, clock: FakeClock
) -> None:
    paths = [
        "/connect/start?session=nope",
        "/sdk/oauth/callback?state=x&code=y",
        "/sdk/auth/start?session=nope",
    ]
    async with client_from(small, "192.0.2.50") as browser:
        statuses = [(await browser.get(p)).status_code for p in paths]
        statuses.append((await browser.post("/webhooks/idp/nope", content=b"{}")).status_code)
        assert 429 not in statuses
        # Static files of the pages do not count.
        for _ in range(10):
            assert (await browser.get("/connect/static/nothing.css")).status_code != 429
        refused = await browser.get("/connect/start?session=nope")
        assert refused.status_code == 429
        assert refused.json()["scope"] == "ip" and refused.json()["limit"] == 4
        assert refused.headers["retry-after"] == "15"
        # The limiter refuses before the application (and so before any database read).
        assert (await browser.post("/webhooks/idp/x", content=b"{}")).status_code == 429
        assert (await browser.get("/healthz")).status_code == 200  # ops endpoints: never
    async with client_from(small, "192.0.2.51") as other:
        assert (await other.get("/connect/start?session=nope")).status_code != 429
    clock.advance(15)
    async with client_from(small, "192.0.2.50") as browser:
        assert (await browser.get("/connect/start?session=nope")).status_code != 429


async def test_zero_turns_limits_off(vault: Vault, clock: FakeClock) -> None:
    app = limited_app(vault, clock, rate_limit_per_key=0, rate_limit_per_app=0)
    _, key = await make_app(vault)
    async with client_from(app, "198.51.100.9") as c:
        r = await SignedClient(c, key).post(LIST, LIST_BODY)
        assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers


def test_defaults_are_documented() -> None:
    s = Settings()
    assert (s.rate_limit_per_key, s.rate_limit_per_app, s.rate_limit_per_ip) == (
        30_000,
        60_000,
        600,
    )
    assert s.rate_limit_window_seconds == 60
