"""Policies on every retrieval (issue 11): storage and versions, the answers a caller gets,
the facts (time, caller address, method and path), counters, and failing closed.

Every test runs on SQLite and PostgreSQL (the ``vault`` fixture); time moves by advancing
the vault's clock, never by sleeping.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
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
from grantvault_server.storage.tables import audit_events, policies, policy_versions
from tests.conftest import OPERATOR, SignedClient, make_app

URL = "https://api.openai.com/v1/models"


async def _grant(vault: Vault, app: App, template: str = "openai") -> str:
    secret = await secret_service.create_secret(vault, app, OPERATOR, template=template)
    await secret_service.set_credential(
        vault, app, secret, {"token": "sk-test-abc123456"}, OPERATOR
    )
    result = await grant_service.create_grant(vault, app, secret, OPERATOR, principal_type="system")
    return str(result["grant_id"])


def _body(grant_id: str, url: str = URL, method: str = "GET") -> dict[str, Any]:
    return {"grant_id": grant_id, "reason": None, "request": {"method": method, "url": url}}


async def _put(vault: Vault, app: App, name: str, document: dict[str, Any]) -> int:
    info = await policy_service.put_policy(vault, app, name, document, actor=OPERATOR)
    return info.version


async def _fresh(vault: Vault, app: App) -> App:
    """The app as the next request's key lookup sees it (with its policy generation)."""
    from grantvault_server.services.apps import get_app

    return await get_app(vault, app.id)


def _until(clock: FakeClock, instant: datetime) -> float:
    """Seconds from the clock's now to ``instant`` (a later date: clocks do not go back)."""
    return (instant - clock.now()).total_seconds()


@pytest.fixture
async def peer_client(vault: Vault) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose socket address is chosen per request: ``client.peer = (ip, port)``."""
    app = create_app(vault=vault)

    class Transport(httpx.ASGITransport):
        peer = ("203.0.113.9", 40000)

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.client = self.peer
            return await super().handle_async_request(request)

    transport = Transport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        c.transport_ref = transport  # type: ignore[attr-defined]
        yield c


# -- storage, versions, audit -----------------------------------------------------------------


async def test_put_list_show_delete_keep_versions_and_audit(vault: Vault) -> None:
    app, _ = await make_app(vault)
    doc = {"description": "read-only", "rules": {"methods": ["get"]}}
    first = await policy_service.put_policy(
        vault, app, "read-only", doc, actor=OPERATOR, source="rules:\n  methods: [get]\n"
    )
    assert first.version == 1 and first.document["rules"]["methods"] == ["GET"]
    second = await policy_service.put_policy(
        vault, app, "read-only", {"rules": {"methods": ["GET", "HEAD"]}}, actor=OPERATOR
    )
    assert (second.version, second.policy_id) == (2, first.policy_id)
    listed = await policy_service.list_policies(vault, app)
    assert [(p.name, p.version) for p in listed] == [("read-only", 2)]
    old = await policy_service.get_policy(vault, app, "read-only", version=1)
    assert old.source == "rules:\n  methods: [get]\n"
    assert await policy_service.delete_policy(vault, app, "read-only", actor=OPERATOR) == 2
    assert await policy_service.list_policies(vault, app) == []
    # The text of an audited version stays readable after the delete ...
    assert (await policy_service.get_policy(vault, app, "read-only", version=2)).version == 2
    # ... and a new policy of the same name does not reuse a version number.
    third = await policy_service.put_policy(vault, app, "read-only", doc, actor=OPERATOR)
    assert third.version == 4
    async with vault.db.read() as conn:
        events = (
            await conn.execute(
                sa.select(audit_events.c.event, audit_events.c.details)
                .where(audit_events.c.event.like("policy.%"))
                .order_by(audit_events.c.seq)
            )
        ).all()
        versions = (
            await conn.execute(
                sa.select(policy_versions.c.version, policy_versions.c.document.is_(None))
                .where(policy_versions.c.app_id == app.id)
                .order_by(policy_versions.c.version)
            )
        ).all()
    assert [e.event for e in events] == [
        "policy.created",
        "policy.updated",
        "policy.deleted",
        "policy.created",
    ]
    assert [
        json.loads(e.details)["policy_version"]
        if isinstance(e.details, str)
        else e.details["policy_version"]
        for e in events
    ] == [1, 2, 2, 4]
    assert [tuple(v) for v in versions] == [(1, False), (2, False), (3, True), (4, False)]


async def test_invalid_documents_are_refused_with_every_problem_named(vault: Vault) -> None:
    from grantvault_server.errors import VaultError

    app, _ = await make_app(vault)
    with pytest.raises(VaultError) as caught:
        await policy_service.put_policy(
            vault,
            app,
            "bad",
            {
                "rules": {
                    "time_windows": {"timezone": "Europe/Berln", "windows": []},
                    "ip_allow": ["10.0.0.1/8"],
                    "colour": "red",
                }
            },
            actor=OPERATOR,
        )
    error = caught.value
    assert error.code == "invalid_request" and error.status == 422
    locs = {e["loc"] for e in error.extra["errors"]}
    assert {"rules.time_windows.timezone", "rules.ip_allow[0]", "rules.colour"} <= locs
    assert await policy_service.list_policies(vault, app) == []
    with pytest.raises(VaultError) as name_error:
        await policy_service.put_policy(
            vault, app, "Bad Name", {"rules": {"methods": ["GET"]}}, actor=OPERATOR
        )
    assert name_error.value.extra["errors"][0]["loc"] == "name"


def test_policy_files_parse_as_yaml_or_json_with_line_numbers() -> None:
    from grantvault_server.policy.document import PolicyDocumentError

    assert policy_service.parse_source('{"rules": {"methods": ["GET"]}}') == {
        "rules": {"methods": ["GET"]}
    }
    with pytest.raises(PolicyDocumentError) as caught:
        policy_service.parse_source("rules:\n  methods: [GET\n")
    assert caught.value.errors[0][0].startswith("line ")
    with pytest.raises(PolicyDocumentError):
        policy_service.parse_source("- just\n- a list\n")


# -- answers ----------------------------------------------------------------------------------


async def test_a_denial_names_the_policy_version_and_rule_and_is_audited(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(client, key)
    assert (await sc.post("/sdk/token", _body(grant_id, method="POST"))).status_code == 200
    await _put(vault, app, "read-only", {"rules": {"methods": ["GET"]}})
    denied = await sc.post("/sdk/token", _body(grant_id, method="POST"))
    assert denied.status_code == 403, denied.text
    body = denied.json()
    assert body["error"] == "policy_violation"
    assert (body["policy"], body["policy_version"], body["rule"]) == ("read-only", 1, "methods")
    assert "POST" in body["message"] and "read-only" in body["message"]
    assert "access_token" not in denied.text
    allowed = await sc.post("/sdk/token", _body(grant_id))
    assert allowed.status_code == 200
    async with vault.db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(audit_events.c.outcome, audit_events.c.details)
                .where(audit_events.c.event == "credential.retrieved")
                .order_by(audit_events.c.seq)
            )
        ).all()
    details = [r.details if isinstance(r.details, dict) else json.loads(r.details) for r in rows]
    assert [r.outcome for r in rows] == ["success", "denied", "success"]
    assert details[1]["policy"] == "read-only" and details[1]["rule"] == "methods"
    assert details[1]["policy_version"] == 1
    assert details[2]["policies"] == ["read-only@1"]


async def test_a_change_applies_to_the_next_request(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(client, key)
    await _put(vault, app, "p", {"rules": {"methods": ["POST"]}})
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 403
    await _put(vault, app, "p", {"rules": {"methods": ["GET"]}})
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 200
    await policy_service.delete_policy(vault, app, "p", actor=OPERATOR)
    assert (await sc.post("/sdk/token", _body(grant_id, method="DELETE"))).status_code == 200


async def test_time_windows_follow_the_clock_across_edges_and_dst(
    vault: Vault, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(client, key)
    await _put(
        vault,
        app,
        "office-hours",
        {
            "rules": {
                "time_windows": {
                    "timezone": "Europe/Berlin",
                    "windows": [
                        {
                            "days": ["mon", "tue", "wed", "thu", "fri"],
                            "start": "09:00",
                            "end": "17:00",
                        }
                    ],
                }
            }
        },
    )
    # Friday 2027-10-29 16:59:59 CEST (UTC+2) is inside; 17:00:00 is outside.
    clock.advance(_until(clock, datetime(2027, 10, 29, 14, 59, 59, tzinfo=UTC)))
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 200
    clock.advance(1)
    late = await sc.post("/sdk/token", _body(grant_id))
    assert late.status_code == 403 and late.json()["rule"] == "time_windows"
    assert late.json()["message"] == (
        "outside office-hours: allowed Mon\u2013Fri 09:00\u201317:00 Europe/Berlin"
    )
    # After the change to CET on Sunday 31 October, 09:00 local is 08:00 UTC on Monday.
    clock.advance(_until(clock, datetime(2027, 11, 1, 7, 59, 59, tzinfo=UTC)))
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 403
    clock.advance(1)
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 200


async def test_ip_rules_see_the_socket_peer_and_only_a_trusted_proxys_forwarded_for(
    vault: Vault, peer_client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(peer_client, key)
    transport = peer_client.transport_ref  # type: ignore[attr-defined]
    await _put(vault, app, "office", {"rules": {"ip_allow": ["10.0.0.0/8", "2001:db8::/32"]}})
    transport.peer = ("10.1.2.3", 5000)
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 200
    transport.peer = ("2001:db8::7", 5000)
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 200
    transport.peer = ("2001:db9::7", 5000)
    outside = await sc.post("/sdk/token", _body(grant_id))
    assert outside.status_code == 403 and outside.json()["rule"] == "ip_allow"
    # An untrusted peer cannot talk its way in with X-Forwarded-For ...
    transport.peer = ("203.0.113.9", 5000)
    payload = json.dumps(_body(grant_id), separators=(",", ":")).encode()
    headers = sc.headers("POST", "/sdk/token", payload)
    spoofed = await peer_client.post(
        "/sdk/token", content=payload, headers={**headers, "X-Forwarded-For": "10.1.2.3"}
    )
    assert spoofed.status_code == 403 and "203.0.113.9" in spoofed.json()["message"]
    # ... while the trusted proxy (127.0.0.1 by default) names the client it serves.
    transport.peer = ("127.0.0.1", 5000)
    headers = sc.headers("POST", "/sdk/token", payload)
    proxied = await peer_client.post(
        "/sdk/token",
        content=payload,
        headers={**headers, "X-Forwarded-For": "198.51.100.1, 10.1.2.3"},
    )
    assert proxied.status_code == 200, proxied.text
    headers = sc.headers("POST", "/sdk/token", payload)
    proxied_outside = await peer_client.post(
        "/sdk/token", content=payload, headers={**headers, "X-Forwarded-For": "198.51.100.1"}
    )
    assert proxied_outside.status_code == 403


async def test_paths_are_normalised_before_matching(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app, template="stripe")
    sc = SignedClient(client, key)
    await _put(vault, app, "charges", {"rules": {"paths": ["/v1/charges", "/v1/charges/*"]}})
    base = "https://api.stripe.com"
    for path, status in [
        ("/v1/charges", 200),
        ("/v1/charges/ch_1", 200),
        ("/v1/%63harges/ch_1", 200),
        ("/v1/charges/../admin", 403),
        ("/v1/charges/%2e%2e/admin", 403),
        ("/v1/charges/..%2Fadmin", 403),
        ("/v1/customers", 403),
    ]:
        r = await sc.post("/sdk/token", _body(grant_id, url=base + path))
        assert r.status_code == status, (path, r.text)


async def test_quota_counts_exactly_and_answers_429_with_retry_after(
    vault: Vault, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(client, key)
    await _put(
        vault, app, "daily", {"rules": {"quota": {"limit": 3, "window": "day", "per": "grant"}}}
    )
    clock.advance(_until(clock, datetime(2027, 12, 7, 23, 0, 0, tzinfo=UTC)))
    for _ in range(3):
        assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 200
    over = await sc.post("/sdk/token", _body(grant_id))
    assert over.status_code == 429, over.text
    assert over.json()["error"] == "quota_exceeded" and over.headers["retry-after"] == "3600"
    assert over.json()["policy"] == "daily" and "access_token" not in over.text
    # A refused call is not counted; the next day starts again.
    clock.advance(3600)
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 200


async def test_rate_limit_answers_with_the_policys_budget_headers(
    vault: Vault, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(client, key)
    await _put(vault, app, "burst", {"rules": {"rate_limit": {"per_minute": 2, "per": "app"}}})
    clock.advance(_until(clock, datetime(2027, 12, 7, 12, 0, 30, tzinfo=UTC)))
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 200
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 200
    limited = await sc.post("/sdk/token", _body(grant_id))
    assert limited.status_code == 429
    body = limited.json()
    assert (body["error"], body["scope"], body["limit"], body["window_seconds"]) == (
        "rate_limit_exceeded",
        "policy",
        2,
        60,
    )
    assert limited.headers["retry-after"] == "30"
    assert limited.headers["x-ratelimit-limit"] == "2"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert limited.headers.get_list("x-ratelimit-limit") == ["2"]
    clock.advance(30)
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 200


async def test_a_corrupt_policy_row_denies_every_retrieval(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(client, key)
    await _put(
        vault,
        app,
        "unrelated",
        {"applies_to": {"providers": ["github"]}, "rules": {"methods": ["GET"]}},
    )
    assert (await sc.post("/sdk/token", _body(grant_id))).status_code == 200
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(policies)
            .where(policies.c.app_id == app.id)
            .values(document={"rules": {"methods": ["GET"], "mystery": 1}})
        )
        # A hand edit does not bump the generation; a restarted replica reads it fresh.
    vault.policies.apps.clear()
    denied = await sc.post("/sdk/token", _body(grant_id))
    assert denied.status_code == 403, denied.text
    assert denied.json()["error"] == "policy_evaluation_failed"
    assert denied.json()["policy"] == "unrelated"
    assert "access_token" not in denied.text


async def test_policies_apply_only_to_the_grants_they_select(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    openai = await _grant(vault, app)
    stripe = await _grant(vault, app, template="stripe")
    sc = SignedClient(client, key)
    await _put(
        vault,
        app,
        "stripe-read",
        {"applies_to": {"secrets": ["stripe"]}, "rules": {"methods": ["GET"]}},
    )
    assert (await sc.post("/sdk/token", _body(openai, method="POST"))).status_code == 200
    r = await sc.post(
        "/sdk/token", _body(stripe, url="https://api.stripe.com/v1/charges", method="POST")
    )
    assert r.status_code == 403 and r.json()["policy"] == "stripe-read"


async def test_per_user_quota_without_an_end_user_fails_closed(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    sc = SignedClient(client, key)
    await _put(
        vault, app, "per-user", {"rules": {"quota": {"limit": 5, "window": "day", "per": "user"}}}
    )
    r = await sc.post("/sdk/token", _body(grant_id))
    assert r.status_code == 403 and r.json()["error"] == "policy_evaluation_failed"
    assert r.json()["rule"] == "quota"


async def test_counters_charge_all_or_nothing_and_are_purged_after_their_window(
    vault: Vault,
) -> None:
    from grantvault_server.policy.compile import Charge
    from grantvault_server.services.policy_counters import apply_charges, purge_counters

    app, _ = await make_app(vault)
    start = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    end = start + timedelta(minutes=1)
    small = Charge(app.id, "p", 1, "quota", "app", app.id, 2, start, end)
    large = Charge(app.id, "q", 1, "quota", "app", app.id, 10, start, end)
    async with vault.db.write() as conn:
        outcomes = await apply_charges(conn, [[small, large]] * 3, start)
    assert outcomes[:2] == [None, None]
    assert outcomes[2] is not None and outcomes[2].status == 429
    async with vault.db.write() as conn:
        # The refused third call charged neither counter: "q" has 8 left, not 7.
        again = await apply_charges(conn, [[large]] * 9, start)
    assert [o is None for o in again] == [True] * 8 + [False]
    assert await purge_counters(vault.db, start + timedelta(minutes=2)) == 2
