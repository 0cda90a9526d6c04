"""The operator portal (issue 12) in process, on SQLite and PostgreSQL.

Sign-in (password, TOTP, lockout), the session cookie and its timeouts (the vault clock is
moved, nothing sleeps), CSRF, the security headers, roles (an auditor sees no form that
changes anything and the server refuses anyway, with an ``admin.refused`` row), and secrets
that appear once and never again: passwords, the TOTP seed, minted API keys.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pyotp
import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from grantvault_server.app import create_app
from grantvault_server.ratelimit import is_unauthenticated_surface
from grantvault_server.services import apps as app_service, operators as ops
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import FakeClock
from grantvault_server.storage.tables import api_keys, audit_events, operator_sessions
from tests.conftest import OPERATOR

PASSWORD = "correct-stapler-orbit-47"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id with the production parameters costs about half a second a hash on a CI
    machine, and these tests sign in dozens of times. They are about sessions, not hashing
    (tests/test_operators.py checks the real parameters), so they use the cheapest Argon2id."""
    monkeypatch.setattr(
        ops, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )


@pytest.fixture
async def app(vault: Vault) -> Any:
    return create_app(vault=vault)


def browser(app: Any, base_url: str = "http://testserver") -> httpx.AsyncClient:
    """A browser: its own cookie jar; redirects are not followed (the tests read them)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


@pytest.fixture
async def web(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with browser(app) as client:
        yield client


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


async def make_operator(vault: Vault, name: str, role: str, apps: list[str] | None = None) -> None:
    await ops.create_operator(vault, name, role, actor=OPERATOR, password=PASSWORD, apps=apps)


async def sign_in(client: httpx.AsyncClient, name: str, password: str = PASSWORD) -> httpx.Response:
    page = await client.get("/portal/login")
    assert page.status_code == 200, page.text
    return await client.post(
        "/portal/login", data={"name": name, "password": password, "csrf": csrf_of(page.text)}
    )


async def signed_in(client: httpx.AsyncClient, name: str) -> None:
    r = await sign_in(client, name)
    assert r.status_code == 303 and r.headers["location"] == "/portal/", r.text


async def post_form(
    client: httpx.AsyncClient, page: str, action: str, data: dict[str, Any] | None = None
) -> httpx.Response:
    """Load ``page`` (for its CSRF token), then post ``data`` to ``action``."""
    loaded = await client.get(page)
    assert loaded.status_code == 200, loaded.text
    return await client.post(action, data={**(data or {}), "csrf": csrf_of(loaded.text)})


async def audit_rows(vault: Vault, event: str | None = None) -> list[dict[str, Any]]:
    async with vault.db.read() as conn:
        stmt = sa.select(audit_events)
        if event is not None:
            stmt = stmt.where(audit_events.c.event == event)
        rows = (await conn.execute(stmt.order_by(audit_events.c.id))).mappings().all()
    return [dict(r) for r in rows]


def mutating_forms(html: str) -> list[str]:
    """The actions of the page's POST forms, except signing out."""
    actions = re.findall(r'<form method="post" action="([^"]+)"', html)
    return [a for a in actions if a != "/portal/logout"]


# --------------------------------------------------------------------------- sign-in


async def test_sign_in_and_out_with_a_strict_http_only_cookie(
    vault: Vault, web: httpx.AsyncClient, app: Any
) -> None:
    await make_operator(vault, "root", "owner")
    first = await web.get("/portal/")
    assert first.status_code == 303 and first.headers["location"] == "/portal/login"

    r = await sign_in(web, "root")
    assert r.status_code == 303 and r.headers["location"] == "/portal/"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("gv_portal="))
    flags = [p.strip().lower() for p in cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/portal" in flags
    assert "secure" not in flags  # plain http: a Secure cookie would never come back
    session_id = cookie.split(";")[0].split("=", 1)[1]
    async with vault.db.read() as conn:
        stored = (await conn.execute(sa.select(operator_sessions.c.id_hash))).scalars().all()
    assert session_id not in stored and len(stored) == 1  # only its SHA-256

    overview = await web.get("/portal/")
    assert overview.status_code == 200 and "<h1>Overview</h1>" in overview.text
    assert "root" in overview.text

    out = await post_form(web, "/portal/", "/portal/logout")
    assert out.status_code == 303 and out.headers["location"] == "/portal/login?ended=revoked"
    assert (await web.get("/portal/")).status_code == 303
    # The old cookie is dead even if a browser kept it.
    async with browser(app) as stale:
        stale.cookies.set("gv_portal", session_id, path="/portal")
        assert (await stale.get("/portal/")).headers["location"] == "/portal/login"
    assert [r["details"]["scope"] for r in await audit_rows(vault, "operator.signed_out")] == [
        "session"
    ]


async def test_the_cookie_is_secure_over_https(vault: Vault, app: Any) -> None:
    await make_operator(vault, "root", "owner")
    async with browser(app, "https://vault.example") as client:
        r = await sign_in(client, "root")
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("gv_portal="))
    assert "secure" in [p.strip().lower() for p in cookie.split(";")]


async def test_a_wrong_password_then_a_lockout_say_so_in_the_apis_words(
    vault: Vault, web: httpx.AsyncClient, clock: FakeClock
) -> None:
    await make_operator(vault, "root", "owner")
    wrong = await sign_in(web, "root", "not-the-password-at-all")
    assert wrong.status_code == 401
    assert "login_failed" in wrong.text and "is not right" in wrong.text
    assert 'value="root"' in wrong.text  # the name stays filled in, never the password
    assert "not-the-password-at-all" not in wrong.text
    for _ in range(4):
        await sign_in(web, "root", "not-the-password-at-all")
    locked = await sign_in(web, "root")  # even the right password waits
    assert locked.status_code == 429 and locked.headers["retry-after"] == "60"
    assert "account_locked" in locked.text and "try again in 60 s" in locked.text
    clock.advance(61)
    assert (await sign_in(web, "root")).status_code == 303


async def test_the_sign_in_form_needs_its_token(vault: Vault, web: httpx.AsyncClient) -> None:
    await make_operator(vault, "root", "owner")
    await web.get("/portal/login")
    r = await web.post("/portal/login", data={"name": "root", "password": PASSWORD})
    assert r.status_code == 403 and "forbidden" in r.text
    assert "gv_portal=" not in r.headers.get("set-cookie", "")


def test_the_sign_in_steps_spend_the_ip_budget() -> None:
    assert is_unauthenticated_surface("/portal/login")
    assert is_unauthenticated_surface("/portal/login/totp")
    assert not is_unauthenticated_surface("/portal/apps")


# --------------------------------------------------------------------------- second factor


async def enrol(client: httpx.AsyncClient, clock: FakeClock) -> tuple[str, list[str]]:
    """Enrol TOTP through the account page; the seed and the recovery codes."""
    started = await post_form(client, "/portal/account", "/portal/account/totp")
    assert started.status_code == 200, started.text
    match = re.search(r'id="totp-secret"[^>]*>([A-Z2-7 ]+)</code>', started.text)
    assert match
    seed = match.group(1).replace(" ", "")
    assert "<svg" in started.text  # the QR code
    wrong = await client.post(
        "/portal/account/totp/confirm", data={"code": "000000", "csrf": csrf_of(started.text)}
    )
    assert wrong.status_code == 422 and "does not match" in wrong.text
    assert seed[:4] in wrong.text  # the same seed is shown again to retry
    code = pyotp.TOTP(seed).at(clock.now())
    done = await client.post(
        "/portal/account/totp/confirm", data={"code": code, "csrf": csrf_of(started.text)}
    )
    assert done.status_code == 200, done.text
    codes = re.findall(r"<li><code>([0-9a-f]{8}-[0-9a-f]{8})</code></li>", done.text)
    assert len(codes) == 10
    return seed, codes


async def test_totp_enrolment_then_sign_in_with_a_code_or_a_recovery_code(
    vault: Vault, web: httpx.AsyncClient, app: Any, clock: FakeClock
) -> None:
    await make_operator(vault, "root", "owner")
    await signed_in(web, "root")
    seed, codes = await enrol(web, clock)
    account = await web.get("/portal/account")
    assert "Two-factor authentication" in account.text and "badge-active" in account.text
    grouped = " ".join(seed[i : i + 4] for i in range(0, len(seed), 4))
    for later in (account.text, (await web.get("/portal/")).text):
        assert seed not in later and grouped not in later
        assert not any(c in later for c in codes)

    async with browser(app) as phone:
        r = await sign_in(phone, "root")
        assert r.headers["location"] == "/portal/login/totp"
        pending = phone.cookies.get("gv_portal")
        # The pending session allows the TOTP step only.
        assert (await phone.get("/portal/apps")).headers["location"] == "/portal/login/totp"
        step = await phone.get("/portal/login/totp")
        assert step.status_code == 200 and "Enter your code" in step.text
        refused = await phone.post("/portal/apps", data={"name": "x", "csrf": csrf_of(step.text)})
        assert refused.status_code == 303 and refused.headers["location"] == "/portal/login/totp"
        bad = await phone.post(
            "/portal/login/totp", data={"code": "123456", "csrf": csrf_of(step.text)}
        )
        assert bad.status_code == 401 and "login_failed" in bad.text
        clock.advance(30)
        ok = await phone.post(
            "/portal/login/totp",
            data={"code": pyotp.TOTP(seed).at(clock.now()), "csrf": csrf_of(step.text)},
        )
        assert ok.status_code == 303 and ok.headers["location"] == "/portal/"
        full = phone.cookies.get("gv_portal")
        assert full and full != pending  # a new id once the second factor checked
        assert (await phone.get("/portal/")).status_code == 200
        async with browser(app) as thief:
            thief.cookies.set("gv_portal", pending or "", path="/portal")
            assert (await thief.get("/portal/")).status_code == 303

    async with browser(app) as laptop:
        await sign_in(laptop, "root")
        step = await laptop.get("/portal/login/totp")
        first = await laptop.post(
            "/portal/login/totp", data={"code": codes[0], "csrf": csrf_of(step.text)}
        )
        assert first.status_code == 303 and first.headers["location"] == "/portal/"
    async with browser(app) as again:
        await sign_in(again, "root")
        step = await again.get("/portal/login/totp")
        reused = await again.post(
            "/portal/login/totp", data={"code": codes[0], "csrf": csrf_of(step.text)}
        )
        assert reused.status_code == 401  # a recovery code works once

    for row in await audit_rows(vault):
        dumped = json.dumps(row, default=str)
        assert seed not in dumped and not any(c in dumped for c in codes)


# --------------------------------------------------------------------------- timeouts


async def test_idle_and_absolute_timeouts(
    vault: Vault, web: httpx.AsyncClient, clock: FakeClock
) -> None:
    await make_operator(vault, "root", "owner")
    await signed_in(web, "root")
    for _ in range(3):  # active every 29 minutes: the idle timeout (30) never fires
        clock.advance(29 * 60)
        assert (await web.get("/portal/")).status_code == 200
    clock.advance(30 * 60)
    idle = await web.get("/portal/apps")
    assert idle.status_code == 303 and idle.headers["location"] == "/portal/login?ended=idle"
    message = await web.get(idle.headers["location"])
    assert "without activity" in message.text

    await signed_in(web, "root")
    for _ in range(40):  # busy all day: still ends after 12 hours
        clock.advance(25 * 60)
        r = await web.get("/portal/")
        if r.status_code == 303:
            break
    assert r.headers["location"] == "/portal/login?ended=expired"
    assert "maximum length" in (await web.get(r.headers["location"])).text


async def test_sign_out_everywhere_ends_every_session_and_older_tokens(
    vault: Vault, web: httpx.AsyncClient, app: Any, clock: FakeClock
) -> None:
    await make_operator(vault, "root", "owner")
    _, token = await ops.create_token(vault, "root", "ci", actor=OPERATOR)
    await signed_in(web, "root")
    async with browser(app) as other:
        await signed_in(other, "root")
        clock.advance(1)
        r = await post_form(web, "/portal/account", "/portal/account/sign-out-everywhere")
        assert r.headers["location"] == "/portal/login?ended=signed_out"
        assert (await other.get("/portal/")).headers["location"] == (
            "/portal/login?ended=signed_out"
        )
    assert (await web.get("/portal/")).status_code == 303
    with pytest.raises(Exception, match="signed out everywhere"):
        await ops.authenticate_token(vault, token)
    clock.advance(1)
    await signed_in(web, "root")  # a new sign-in works
    assert (await web.get("/portal/")).status_code == 200


async def test_a_disabled_operators_session_dies(
    vault: Vault, web: httpx.AsyncClient, app: Any, clock: FakeClock
) -> None:
    await make_operator(vault, "root", "owner")
    await make_operator(vault, "ada", "admin")
    async with browser(app) as ada:
        await signed_in(ada, "ada")
        await signed_in(web, "root")
        clock.advance(1)
        r = await post_form(web, "/portal/operators/ada", "/portal/operators/ada/disable")
        assert r.headers["location"] == "/portal/operators/ada?done=operator_disabled"
        gone = await ada.get("/portal/")
        assert gone.headers["location"] == "/portal/login?ended=disabled"


# --------------------------------------------------------------------------- CSRF and headers


async def test_a_form_without_its_token_changes_nothing(
    vault: Vault, web: httpx.AsyncClient, app: Any
) -> None:
    await make_operator(vault, "root", "owner")
    await signed_in(web, "root")
    for data in ({"name": "demo"}, {"name": "demo", "csrf": "0" * 32}):
        r = await web.post("/portal/apps", data=data)
        assert r.status_code == 403 and "forbidden" in r.text and "security token" in r.text
    assert await app_service.list_apps(vault) == []
    # Another browser's token does not fit this browser's session.
    async with browser(app) as other:
        await signed_in(other, "root")
        theirs = csrf_of((await other.get("/portal/apps")).text)
    r = await web.post("/portal/apps", data={"name": "demo", "csrf": theirs})
    assert r.status_code == 403
    assert await app_service.list_apps(vault) == []


async def test_every_page_and_redirect_carries_the_security_headers(
    vault: Vault, web: httpx.AsyncClient
) -> None:
    await make_operator(vault, "root", "owner")
    await app_service.register_app(vault, "demo", OPERATOR)
    responses = [await web.get("/portal/"), await web.get("/portal/login")]
    responses.append(await sign_in(web, "root"))
    for path in ("/portal/", "/portal/apps", "/portal/apps/demo", "/portal/account"):
        responses.append(await web.get(path))
    responses.append(await web.get("/portal/operators"))
    responses.append(await web.get("/portal/apps/unknown"))
    for r in responses:
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "form-action 'self'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
        if r.status_code == 200:
            assert "<script>" not in r.text and "style=" not in r.text
            assert "<style" not in r.text


# --------------------------------------------------------------------------- roles


async def test_an_auditor_sees_everything_and_can_change_nothing(
    vault: Vault, web: httpx.AsyncClient
) -> None:
    await make_operator(vault, "eve", "auditor")
    demo = await app_service.register_app(vault, "demo", OPERATOR)
    info, _ = await app_service.create_key(vault, demo, OPERATOR, name="ci")
    await signed_in(web, "eve")
    pages = [
        "/portal/",
        "/portal/apps",
        "/portal/apps/demo",
        f"/portal/apps/demo/keys/{info.id}",
        f"/portal/apps/demo/keys/{info.id}/revoke",
    ]
    for path in pages:
        r = await web.get(path)
        assert r.status_code == 200, (path, r.text)
        assert mutating_forms(r.text) == [], path
        assert "demo" in r.text
    assert info.key_prefix in (await web.get("/portal/apps/demo")).text
    assert "Operators" not in (await web.get("/portal/")).text  # not in the nav

    token = csrf_of((await web.get("/portal/apps")).text)
    refused = [
        ("/portal/apps", {"name": "sneaky"}, "apps.create"),
        ("/portal/apps/demo/keys", {"name": "x"}, "keys.create"),
        (f"/portal/apps/demo/keys/{info.id}/revoke", {}, "keys.revoke"),
        (f"/portal/apps/demo/keys/{info.id}/rotate", {"overlap": "1h"}, "keys.rotate"),
        (f"/portal/apps/demo/keys/{info.id}/expire", {"expires_in": "0s"}, "keys.expire"),
    ]
    for action, data, _ in refused:
        r = await web.post(action, data={**data, "csrf": token})
        assert r.status_code == 403 and "forbidden" in r.text, (action, r.text)
    operators_page = await web.get("/portal/operators")
    assert operators_page.status_code == 403
    rows = await audit_rows(vault, "admin.refused")
    assert [r["details"]["operation"] for r in rows] == [op for *_, op in refused] + [
        "operators.list"
    ]
    assert all(r["actor"]["name"] == "eve" and r["actor"]["via"] == "portal" for r in rows)
    assert [a.name for a in await app_service.list_apps(vault)] == ["demo"]
    (key,) = await app_service.list_keys(vault, demo)
    assert key.status(vault.clock.now()) == "active"


async def test_an_app_scoped_admin_sees_only_its_apps(vault: Vault, web: httpx.AsyncClient) -> None:
    await app_service.register_app(vault, "mine", OPERATOR)
    await app_service.register_app(vault, "theirs", OPERATOR)
    await make_operator(vault, "ada", "admin", apps=["mine"])
    await signed_in(web, "ada")
    listing = await web.get("/portal/apps")
    assert "mine" in listing.text and "theirs" not in listing.text
    assert mutating_forms(listing.text) == []  # creating apps is vault-wide
    assert "theirs" not in (await web.get("/portal/")).text
    other = await web.get("/portal/apps/theirs")
    assert other.status_code == 404 and "not_found" in other.text
    mine = await web.get("/portal/apps/mine")
    assert mutating_forms(mine.text) == ["/portal/apps/mine/keys"]


# --------------------------------------------------------------------------- apps and keys


async def test_apps_and_keys_through_the_portal_show_each_key_once(
    vault: Vault, web: httpx.AsyncClient, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await make_operator(vault, "root", "owner")
    await signed_in(web, "root")
    empty = await web.get("/portal/apps")
    assert "No apps yet" in empty.text and "grantvault apps create" in empty.text
    bad = await post_form(web, "/portal/apps", "/portal/apps", {"name": "Not Valid"})
    assert bad.status_code == 422 and "invalid_request" in bad.text
    created = await post_form(web, "/portal/apps", "/portal/apps", {"name": "demo"})
    assert created.headers["location"] == "/portal/apps/demo?done=app_created"
    page = await web.get(created.headers["location"])
    assert "App created" in page.text and "No API keys yet" in page.text
    assert "grantvault keys create --app demo" in page.text
    assert "POST /admin/v1/apps/demo/keys" in page.text

    minted = await post_form(
        web, "/portal/apps/demo", "/portal/apps/demo/keys", {"name": "ci", "expires_in": "90d"}
    )
    assert minted.status_code == 200
    key = re.search(r'id="new-key" class="secret-value">(alter_rk_[^<]+)</code>', minted.text)
    assert key and 'data-copy="new-key"' in minted.text and "shown" in minted.text
    api_key = key.group(1)
    (info,) = await app_service.list_keys(vault, await app_service.get_app(vault, "demo"))
    later = [
        await web.get("/portal/apps/demo"),
        await web.get(f"/portal/apps/demo/keys/{info.id}"),
        await web.get("/portal/"),
    ]
    for r in later:
        assert api_key not in r.text
    assert f"{info.key_prefix}…" in later[0].text

    rotated = await post_form(
        web,
        f"/portal/apps/demo/keys/{info.id}",
        f"/portal/apps/demo/keys/{info.id}/rotate",
        {"overlap": "1h"},
    )
    assert rotated.status_code == 200 and "The replacement API key" in rotated.text
    successor = re.search(
        r'id="new-key" class="secret-value">(alter_rk_[^<]+)</code>', rotated.text
    )
    assert successor and successor.group(1) != api_key
    assert "Rotating" in rotated.text

    expire = await post_form(
        web,
        f"/portal/apps/demo/keys/{info.id}",
        f"/portal/apps/demo/keys/{info.id}/expire",
        {"expires_in": "bogus"},
    )
    assert expire.status_code == 422 and "expires_in" in expire.text

    # Revoking asks first, naming the key; the GET changes nothing.
    confirm = await web.get(f"/portal/apps/demo/keys/{info.id}/revoke")
    assert f"Revoke key {info.key_prefix}…" in confirm.text and "ci" in confirm.text
    assert (await app_service.list_keys(vault, await app_service.get_app(vault, "demo")))[
        0
    ].revoked_at is None
    done = await web.post(
        f"/portal/apps/demo/keys/{info.id}/revoke", data={"csrf": csrf_of(confirm.text)}
    )
    assert done.headers["location"] == "/portal/apps/demo?done=key_revoked"
    assert "Revoked" in (await web.get("/portal/apps/demo")).text

    async with vault.db.read() as conn:
        hashes = (await conn.execute(sa.select(api_keys.c.key_hash))).scalars().all()
    assert api_key not in hashes
    for row in await audit_rows(vault):
        dumped = json.dumps(row, default=str)
        assert api_key not in dumped and successor.group(1) not in dumped
        assert PASSWORD not in dumped
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert caplog.records  # the access log at least
    assert api_key not in logged and successor.group(1) not in logged and PASSWORD not in logged


async def test_the_overview_shows_counts_retrievals_and_denials(
    vault: Vault, web: httpx.AsyncClient
) -> None:
    from grantvault_server.audit.chain import AuditRecord
    from grantvault_server.audit.events import AuditEvent, Outcome

    await make_operator(vault, "root", "owner")
    demo = await app_service.register_app(vault, "demo", OPERATOR)
    await app_service.create_key(vault, demo, OPERATOR)
    actor = {"type": "api_key", "key_prefix": "alter_rk_abc", "caller": "agent"}
    async with vault.db.write() as conn:
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=demo.id,
                    event=AuditEvent.CREDENTIAL_RETRIEVED,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    provider_id="stripe",
                    principal="system",
                    occurred_at=vault.clock.now(),
                ),
                AuditRecord(
                    chain=demo.id,
                    event=AuditEvent.CREDENTIAL_RETRIEVED,
                    outcome=Outcome.DENIED,
                    actor=actor,
                    reason="policy_violation",
                    provider_id="stripe",
                    occurred_at=vault.clock.now(),
                ),
            ],
        )
    await signed_in(web, "root")
    page = await web.get("/portal/")
    assert page.status_code == 200
    assert re.search(r'stat-value">1</span> <span class="stat-label">active API keys', page.text)
    assert "retrieved" in page.text and "policy_violation" in page.text
    assert "stripe" in page.text and "alter_rk_abc" in page.text


async def test_owners_manage_operators_through_the_portal(
    vault: Vault, web: httpx.AsyncClient, app: Any, clock: FakeClock
) -> None:
    await make_operator(vault, "root", "owner")
    await app_service.register_app(vault, "demo", OPERATOR)
    await signed_in(web, "root")
    weak = await post_form(
        web,
        "/portal/operators",
        "/portal/operators",
        {"name": "bob", "role": "admin", "password": "short"},
    )
    assert weak.status_code == 422 and "too short" in weak.text and 'value="bob"' in weak.text
    new_password = "plum-harbour-quietly-9"
    made = await post_form(
        web,
        "/portal/operators",
        "/portal/operators",
        {"name": "bob", "role": "admin", "password": new_password, "apps": ["demo"]},
    )
    assert made.headers["location"] == "/portal/operators?done=operator_created"
    listing = await web.get(made.headers["location"])
    assert "bob" in listing.text and new_password not in listing.text
    bob = await ops.get_operator(vault, "bob")
    assert bob.role == "admin" and bob.apps is not None and len(bob.apps) == 1

    changed = await post_form(
        web, "/portal/operators/bob", "/portal/operators/bob", {"role": "auditor"}
    )
    assert changed.headers["location"] == "/portal/operators/bob?done=operator_updated"
    bob = await ops.get_operator(vault, "bob")
    assert bob.role == "auditor" and bob.apps is None

    async with browser(app) as other:
        for _ in range(5):
            await sign_in(other, "bob", "wrong-password-here-1")
    page = await web.get("/portal/operators/bob")
    assert 'action="/portal/operators/bob/unlock"' in page.text
    unlocked = await web.post("/portal/operators/bob/unlock", data={"csrf": csrf_of(page.text)})
    assert unlocked.headers["location"] == "/portal/operators/bob?done=operator_unlocked"
    assert (await ops.get_operator(vault, "bob")).locked_until is None

    for row in await audit_rows(vault):
        assert new_password not in json.dumps(row, default=str)


async def test_non_owners_do_not_get_the_operators_pages(
    vault: Vault, web: httpx.AsyncClient
) -> None:
    await make_operator(vault, "root", "owner")
    await make_operator(vault, "ada", "admin")
    await signed_in(web, "ada")
    assert (await web.get("/portal/operators")).status_code == 403
    assert (await web.get("/portal/operators/root")).status_code == 403
    token = csrf_of((await web.get("/portal/")).text)
    r = await web.post("/portal/operators/root/disable", data={"csrf": token})
    assert r.status_code == 403
    assert not (await ops.get_operator(vault, "root")).disabled
    operations = [r["details"]["operation"] for r in await audit_rows(vault, "admin.refused")]
    assert operations == ["operators.list", "operators.show", "operators.update"]
    own = await web.get("/portal/operators/ada")  # one's own record is readable
    assert own.status_code == 200 and mutating_forms(own.text) == []


async def test_clock_drives_relative_times(
    vault: Vault, web: httpx.AsyncClient, clock: FakeClock
) -> None:
    await make_operator(vault, "root", "owner")
    await app_service.register_app(vault, "demo", OPERATOR)
    clock.advance(hours=3)
    await signed_in(web, "root")
    page = await web.get("/portal/apps")
    assert "3 hours ago" in page.text and ' UTC"' in page.text
