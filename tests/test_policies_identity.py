"""Policies and identity (issue 11): group rules judged on JWTs of the real OIDC peer as the
app's IdP, per-user quotas in JWT identity mode, and one battery of rules that must answer
the same for managed-secret and OAuth grants in every identity mode.

The peer issues no ``groups`` claim of its own, so tokens with groups are signed with the
peer's own private key (``IdpPeer.forge``) and verified by the vault against the peer's live
JWKS, exactly as its logins are; a user "removed from a group" is the next token without it.
A login token the peer issued itself (no groups at all) is checked too.

Every test runs on SQLite and PostgreSQL with the vault's clock frozen (``clock``), so no
quota or rate-limit window rolls over while a test runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from grantvault_server.app import create_app
from grantvault_server.config import Settings
from grantvault_server.services import (
    apps as app_service,
    grants as grant_service,
    policies as policy_service,
    secrets as secret_service,
)
from grantvault_server.services.identity import service as identity
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import FakeClock
from grantvault_server.storage.tables import policy_counters

from .conftest import OPERATOR, SignedClient, make_app
from .oauth_flow import approve, browser_for, register_peer
from .peer import VAULT_BASE_URL
from .test_identity_support import IdpPeer, configure, idp_peer_fixture

__all__ = ["idp_peer_fixture"]  # the session's IdP peer, shared with the identity tests

OPENAI = "https://api.openai.com/v1/models"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"public_base_url": VAULT_BASE_URL})


@dataclass
class World:
    """An app whose IdP is the peer, with the peer also registered as an OAuth provider
    ("peer") and a managed secret "openai" with a credential."""

    vault: Vault
    app: app_service.App
    signed: SignedClient
    idp: IdpPeer
    asgi: Any
    clock: FakeClock
    secret: Any

    def user(self, sub: str, *groups: str) -> str:
        """A user token of the IdP with these groups, valid on the vault's clock."""
        now = int(self.clock.time())
        return self.idp.forge(self.idp.claims(sub=sub, groups=list(groups), iat=now, exp=now + 300))

    async def put(self, name: str, document: dict[str, Any]) -> None:
        await policy_service.put_policy(self.vault, self.app, name, document, actor=OPERATOR)

    async def delete(self, name: str) -> None:
        await policy_service.delete_policy(self.vault, self.app, name, actor=OPERATOR)

    async def idp_id(self) -> str:
        found = await identity.active_idp_id(self.vault, self.app.id)
        assert found is not None
        return found

    async def managed_grant(self, principal_type: str, principal_id: str | None = None) -> str:
        result = await grant_service.create_grant(
            self.vault,
            self.app,
            self.secret,
            OPERATOR,
            principal_type=principal_type,
            principal_id=principal_id,
            idp_id=None if principal_type == "system" else await self.idp_id(),
        )
        return str(result["grant_id"])

    async def connect(self, user_token: str | None, account: str) -> str:
        """The headless Connect flow: session, the browser's consent and sign-in at the
        peer, then the poll that hands over the grant."""
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
        assert polled.json()["status"] == "completed", polled.text
        return str(polled.json()["grants"][0]["grant_id"])

    async def token(
        self,
        url: str = OPENAI,
        method: str = "GET",
        user_token: str | None = None,
        **target: Any,
    ) -> httpx.Response:
        body: dict[str, Any] = {"reason": None, "request": {"method": method, "url": url}}
        body.update(target)
        if user_token is not None:
            body["user_token"] = user_token
        return await self.signed.post("/sdk/token", body)

    async def counters(self) -> list[int]:
        async with self.vault.db.read() as conn:
            rows = await conn.execute(
                sa.select(policy_counters.c["count"]).where(policy_counters.c.app_id == self.app.id)
            )
            return sorted(int(r[0]) for r in rows)


@pytest.fixture
async def world(vault: Vault, clock: FakeClock, idp_peer: IdpPeer) -> AsyncIterator[World]:
    app, key = await make_app(vault)
    await configure(vault, app, idp_peer)
    await register_peer(vault, app, idp_peer.peer)
    secret = await secret_service.create_secret(
        vault, app, OPERATOR, template="openai", slug="openai"
    )
    await secret_service.set_credential(
        vault, app, secret, {"token": "sk-test-identity-0123456"}, OPERATOR
    )
    asgi = create_app(vault=vault)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi), base_url="http://testserver"
    ) as api:
        yield World(vault, app, SignedClient(api, key), idp_peer, asgi, clock, secret)


def _denial(r: httpx.Response) -> tuple[int, str | None, str | None]:
    if r.status_code == 200:
        return (200, None, None)
    body = r.json()
    return (r.status_code, body.get("error"), body.get("rule"))


# -- group rules against the IdP's tokens ------------------------------------------------------


async def test_groups_any_allows_members_and_refuses_a_user_removed_from_the_group(
    world: World,
) -> None:
    await world.managed_grant("group", "staff")
    await world.put("finance-only", {"rules": {"groups_any": ["finance"]}})
    carol = world.user("carol", "finance", "staff")
    r = await world.token(user_token=carol, provider_id="openai")
    assert r.status_code == 200, r.text

    dan = await world.token(user_token=world.user("dan", "staff"), provider_id="openai")
    assert _denial(dan) == (403, "policy_violation", "groups_any")
    assert dan.json()["policy"] == "finance-only" and "finance" in dan.json()["message"]
    assert "access_token" not in dan.text

    # Carol leaves finance at the IdP: her very next token says so, and she is refused.
    removed = await world.token(user_token=world.user("carol", "staff"), provider_id="openai")
    assert _denial(removed) == (403, "policy_violation", "groups_any")
    # Back in the group, back in.
    again = await world.token(
        user_token=world.user("carol", "staff", "finance"), provider_id="openai"
    )
    assert again.status_code == 200, again.text


async def test_a_token_the_peer_issued_at_login_carries_no_groups_and_is_refused(
    world: World,
) -> None:
    # Not forged: a real authorization-code login at the peer, whose ID token has no
    # groups claim. No groups is a known fact (the user is in none), so it is a violation.
    grant_id = await world.managed_grant("user", "erin")
    await world.put("finance-only", {"rules": {"groups_any": ["finance"]}})
    erin = world.idp.id_token("erin")
    r = await world.token(user_token=erin, provider_id="openai")
    assert _denial(r) == (403, "policy_violation", "groups_any")
    await world.delete("finance-only")
    r = await world.token(user_token=erin, provider_id="openai")
    assert r.status_code == 200 and r.json()["grant_id"] == grant_id


async def test_a_policy_selected_by_the_users_groups_applies_only_to_members(
    world: World,
) -> None:
    await world.managed_grant("group", "staff")
    await world.put(
        "finance-read-only",
        {"applies_to": {"groups": ["finance"]}, "rules": {"methods": ["GET"]}},
    )
    member = world.user("carol", "finance", "staff")
    outsider = world.user("dan", "staff")
    assert (
        await world.token(method="POST", user_token=outsider, provider_id="openai")
    ).status_code == 200
    r = await world.token(method="POST", user_token=member, provider_id="openai")
    assert _denial(r) == (403, "policy_violation", "methods")
    assert (
        await world.token(method="GET", user_token=member, provider_id="openai")
    ).status_code == 200
    # Removed from finance: the policy no longer selects her.
    left = world.user("carol", "staff")
    assert (
        await world.token(method="POST", user_token=left, provider_id="openai")
    ).status_code == 200


@pytest.mark.parametrize(
    ("document", "rule"),
    [
        ({"rules": {"groups_any": ["finance"]}}, "groups_any"),
        ({"applies_to": {"groups": ["finance"]}, "rules": {"methods": ["GET"]}}, "applies_to"),
    ],
    ids=["groups_any", "applies_to.groups"],
)
async def test_group_policies_fail_closed_without_a_user_token(
    world: World, document: dict[str, Any], rule: str
) -> None:
    user_grant = await world.managed_grant("user", "carol")
    system_grant = await world.managed_grant("system")
    await world.put("finance", document)
    # With her token, carol's own grant is judged on her groups and allowed ...
    carol = world.user("carol", "finance")
    assert (await world.token(user_token=carol, provider_id="openai")).status_code == 200
    # ... but named by grant_id without a token her groups are unknown: refused, never
    # waved through (leaving the token out is no way around a group rule). The app's own
    # grant has no end user at all: refused alike.
    for grant_id in (user_grant, system_grant):
        r = await world.token(grant_id=grant_id)
        assert _denial(r) == (403, "policy_evaluation_failed", rule), r.text
        assert r.json()["policy"] == "finance" and r.json()["policy_version"] == 1
        assert "user token" in r.json()["message"]
        assert "access_token" not in r.text


async def test_concurrent_first_user_tokens_wait_for_the_idps_keys(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica that has not fetched the IdP's keys yet (just started, or the IdP was just
    configured) and receives several user tokens at once must verify them all once its one
    fetch returns (every caller but the first used to get 503 idp_unavailable).

    Deterministic: the key fetch is held until every caller has asked the key cache for a
    key (or five seconds pass), as a slow IdP would hold it."""
    from grantvault_server.identity import jwks

    callers = 6
    asked: list[int] = []
    everyone = asyncio.Event()
    key_for, fetch_json = jwks.JwksCache.key_for, jwks.fetch_json

    async def counted(self: jwks.JwksCache, kid: str | None, alg: str) -> Any:
        asked.append(1)
        if len(asked) == callers:
            everyone.set()
        return await key_for(self, kid, alg)

    async def slow_fetch(*args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everyone.wait(), 5)
        return await fetch_json(*args, **kwargs)

    monkeypatch.setattr(jwks.JwksCache, "key_for", counted)
    monkeypatch.setattr(jwks, "fetch_json", slow_fetch)
    await world.managed_grant("group", "staff")
    tokens = [world.user(f"user{i}", "staff") for i in range(callers)]
    responses = await asyncio.gather(
        *(world.token(user_token=t, provider_id="openai") for t in tokens)
    )
    assert [(r.status_code, r.json().get("error")) for r in responses] == [(200, None)] * callers


# -- per-user quota in JWT identity mode -------------------------------------------------------


async def test_a_per_user_quota_counts_each_user_on_a_shared_group_grant(world: World) -> None:
    limit = 3
    await world.managed_grant("group", "staff")
    await world.put(
        "per-user", {"rules": {"quota": {"limit": limit, "window": "day", "per": "user"}}}
    )
    carol, dan = world.user("carol", "staff"), world.user("dan", "staff")
    # Carol's first call fetches the IdP's keys (concurrent callers on a cold key cache are
    # the subject of test_concurrent_first_user_tokens_wait_for_the_idps_keys).
    assert (await world.token(user_token=carol, provider_id="openai")).status_code == 200
    # Both users call the same group grant at once, three times their quota each (Dan's
    # first sign-in among them).
    calls = [carol, dan] * (3 * limit)
    responses = await asyncio.gather(
        *(world.token(user_token=t, provider_id="openai") for t in calls)
    )
    per_user: dict[str, list[int]] = {"carol": [], "dan": []}
    for t, r in zip(calls, responses, strict=True):
        per_user["carol" if t == carol else "dan"].append(r.status_code)
    assert sorted(per_user["carol"]) == [200] * (limit - 1) + [429] * (2 * limit + 1)
    assert sorted(per_user["dan"]) == [200] * limit + [429] * (2 * limit)
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"] == "quota_exceeded" and refused.json()["per"] == "user"
    assert int(refused.headers["retry-after"]) > 0
    assert await world.counters() == [limit, limit]
    # A third user still has a whole quota of their own.
    erin = world.user("erin", "staff")
    assert (await world.token(user_token=erin, provider_id="openai")).status_code == 200


async def test_a_users_grant_by_id_spends_the_same_per_user_quota_as_with_their_token(
    world: World,
) -> None:
    grant_id = await world.managed_grant("user", "carol")
    await world.put(
        "per-user", {"rules": {"quota": {"limit": 2, "window": "month", "per": "user"}}}
    )
    assert (
        await world.token(user_token=world.user("carol"), provider_id="openai")
    ).status_code == 200
    assert (await world.token(grant_id=grant_id)).status_code == 200
    # Carol's quota is used up, whichever way her grant is named.
    over = await world.token(user_token=world.user("carol"), provider_id="openai")
    assert _denial(over) == (429, "quota_exceeded", "quota")
    assert _denial(await world.token(grant_id=grant_id)) == (429, "quota_exceeded", "quota")
    assert await world.counters() == [2]


# -- the same answers for every kind of grant and every identity mode --------------------------


MODES = [
    ("managed_secret", "system-by-id"),
    ("managed_secret", "jwt"),
    ("managed_secret", "user-by-id"),
    ("oauth", "system-by-id"),
    ("oauth", "jwt"),
    ("oauth", "user-by-id"),
]


def _window(hour: int) -> dict[str, Any]:
    """Every day, from ``hour`` for one hour (UTC)."""
    end = (hour + 1) % 24
    return {
        "timezone": "UTC",
        "windows": [
            {
                "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "start": f"{hour % 24:02d}:00",
                "end": "24:00" if end == 0 else f"{end:02d}:00",
            }
        ],
    }


@dataclass
class Target:
    """One grant and how a caller names it."""

    grant_id: str
    name: dict[str, Any]
    url: str
    other_path: str


async def _target(world: World, kind: str, mode: str) -> Target:
    """``system-by-id``: the app's own grant named by ``grant_id``; ``jwt``: a user's grant
    found by ``provider_id`` and their token; ``user-by-id``: a user's grant named by
    ``grant_id`` without a token. OAuth grants come from the headless Connect flow (session,
    sign-in at the peer, poll); managed-secret grants from the operator."""
    user = {"system-by-id": None, "jwt": "carol", "user-by-id": "dave"}[mode]
    token = world.user(user, "finance") if user else None
    if kind == "oauth":
        provider = "peer"
        grant_id = await world.connect(token, user or "app-account")
        url, other = f"{world.idp.issuer}/api/whoami", f"{world.idp.issuer}/api/echo"
    else:
        provider = "openai"
        grant_id = await world.managed_grant("user" if user else "system", user)
        url, other = OPENAI, "https://api.openai.com/v1/files"
    name: dict[str, Any] = (
        {"provider_id": provider, "user_token": token} if mode == "jwt" else {"grant_id": grant_id}
    )
    return Target(grant_id, name, url, other)


async def test_rules_answer_alike_for_every_grant_kind_and_identity_mode(world: World) -> None:
    """The same policies, one at a time, give every target the same answers."""
    targets = {f"{kind}/{mode}": await _target(world, kind, mode) for kind, mode in MODES}
    hour = world.clock.now().hour
    # (policy, document, calls: (method, "url" or "other_path"))
    steps: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
        ("read-only", {"rules": {"methods": ["GET"]}}, [("GET", "url"), ("POST", "url")]),
        (
            "paths",
            {"rules": {"paths": ["/v1/models", "/api/whoami"]}},
            [("GET", "url"), ("GET", "other_path")],
        ),
        ("office-net", {"rules": {"ip_allow": ["10.0.0.0/8", "2001:db8::/32"]}}, [("GET", "url")]),
        ("loopback", {"rules": {"ip_allow": ["127.0.0.0/8"]}}, [("GET", "url")]),
        ("later", {"rules": {"time_windows": _window(hour + 2)}}, [("GET", "url")]),
        ("this-hour", {"rules": {"time_windows": _window(hour)}}, [("GET", "url")]),
        (
            "selected",
            {
                "applies_to": {
                    "secrets": ["openai"],
                    "providers": ["peer"],
                    "principals": ["system", "user"],
                },
                "rules": {"methods": ["GET"]},
            },
            [("POST", "url")],
        ),
        (
            "not-selected",
            {
                "applies_to": {"secrets": ["stripe"], "providers": ["github"]},
                "rules": {"methods": ["GET"]},
            },
            [("POST", "url")],
        ),
        (
            "quota",
            {"rules": {"quota": {"limit": 2, "window": "day", "per": "grant"}}},
            [("GET", "url")] * 3,
        ),
        (
            "burst",
            {"rules": {"rate_limit": {"per_minute": 1, "per": "grant"}}},
            [("GET", "url")] * 2,
        ),
    ]

    async def call(target: Target, method: str, where: str) -> tuple[int, str | None, str | None]:
        r = await world.token(getattr(target, where), method, **target.name)
        if r.status_code == 200:
            assert r.json()["grant_id"] == target.grant_id and r.json()["access_token"]
        else:
            assert "access_token" not in r.text
        return _denial(r)

    seen: dict[str, dict[str, list[tuple[int, str | None, str | None]]]] = {t: {} for t in targets}
    for policy, document, calls in steps:
        await world.put(policy, document)
        for label, target in targets.items():
            seen[label][policy] = [await call(target, method, where) for method, where in calls]
        await world.delete(policy)
    allowed = (200, None, None)
    expected = {
        "read-only": [allowed, (403, "policy_violation", "methods")],
        "paths": [allowed, (403, "policy_violation", "paths")],
        "office-net": [(403, "policy_violation", "ip_allow")],
        "loopback": [allowed],
        "later": [(403, "policy_violation", "time_windows")],
        "this-hour": [allowed],
        "selected": [(403, "policy_violation", "methods")],
        "not-selected": [allowed],
        "quota": [allowed, allowed, (429, "quota_exceeded", "quota")],
        "burst": [allowed, (429, "rate_limit_exceeded", "rate_limit")],
    }
    assert seen == {label: expected for label in targets}
