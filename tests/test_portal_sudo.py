"""Sudo mode in the operator portal (ui.md "sensitive actions"), in process, on SQLite and
PostgreSQL: minting, rotating or revoking API keys and managing operators need the password
(or a TOTP code) entered within the last 10 minutes; signing in counts; the vault clock is
moved, nothing sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import unquote

import httpx
import pyotp
import pytest
import sqlalchemy as sa

from grantvault_server.app import create_app
from grantvault_server.services import (
    apps as app_service,
    operators as ops,
    portal_sessions,
)
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import FakeClock
from grantvault_server.storage.tables import operator_sessions, operators
from tests.conftest import OPERATOR
from tests.test_portal import (  # noqa: F401 - cheap_argon2 is an autouse fixture
    PASSWORD,
    audit_rows,
    browser,
    cheap_argon2,
    csrf_of,
    make_operator,
    post_form,
    signed_in,
)

ELEVEN_MINUTES = 11 * 60


@pytest.fixture
async def web(vault: Vault) -> AsyncIterator[httpx.AsyncClient]:
    async with browser(create_app(vault=vault)) as client:
        yield client


async def confirm(web: httpx.AsyncClient, location: str, **fields: str) -> httpx.Response:
    page = await web.get(location)
    assert page.status_code == 200, page.text
    assert "Confirm it is you" in page.text
    next_value = location.split("next=", 1)[1]
    return await web.post(
        "/portal/sudo", data={**fields, "next": unquote(next_value), "csrf": csrf_of(page.text)}
    )


async def test_minting_a_key_needs_a_fresh_password(
    vault: Vault, web: httpx.AsyncClient, clock: FakeClock
) -> None:
    await make_operator(vault, "root", "owner")
    await app_service.register_app(vault, "demo", OPERATOR)
    await signed_in(web, "root")
    # Signing in opened the window: minting right away works.
    minted = await post_form(web, "/portal/apps/demo", "/portal/apps/demo/keys", {"name": "a"})
    assert minted.status_code == 200 and "alter_rk_" in minted.text

    clock.advance(ELEVEN_MINUTES)
    asked = await post_form(web, "/portal/apps/demo", "/portal/apps/demo/keys", {"name": "b"})
    assert asked.status_code == 303
    assert asked.headers["location"] == "/portal/sudo?next=%2Fportal%2Fapps%2Fdemo"
    assert len(await app_service.list_keys(vault, await app_service.get_app(vault, "demo"))) == 1

    wrong = await confirm(web, asked.headers["location"], password="not-the-password-at-all")
    assert wrong.status_code == 401 and "login_failed" in wrong.text
    failed = await audit_rows(vault, "operator.sign_in_failed")
    assert failed[-1]["details"]["step"] == "reauthenticate"
    assert "not-the-password-at-all" not in str(await audit_rows(vault))

    ok = await confirm(web, asked.headers["location"], password=PASSWORD)
    assert ok.status_code == 303 and ok.headers["location"] == "/portal/apps/demo"
    again = await post_form(web, "/portal/apps/demo", "/portal/apps/demo/keys", {"name": "b"})
    assert again.status_code == 200 and "alter_rk_" in again.text
    assert PASSWORD not in str(await audit_rows(vault))

    # The window is 10 minutes from the confirmation.
    clock.advance(9 * 60)
    assert (
        await post_form(web, "/portal/apps/demo", "/portal/apps/demo/keys", {"name": "c"})
    ).status_code == 200
    clock.advance(2 * 60)
    assert (
        await post_form(web, "/portal/apps/demo", "/portal/apps/demo/keys", {"name": "d"})
    ).status_code == 303


async def test_revoking_a_key_and_managing_operators_need_it_too(
    vault: Vault, web: httpx.AsyncClient, clock: FakeClock
) -> None:
    await make_operator(vault, "root", "owner")
    await make_operator(vault, "bob", "auditor")
    demo = await app_service.register_app(vault, "demo", OPERATOR)
    info, _ = await app_service.create_key(vault, demo, OPERATOR, name="ci")
    await signed_in(web, "root")
    clock.advance(ELEVEN_MINUTES)
    revoke = f"/portal/apps/demo/keys/{info.id}/revoke"
    asked = await post_form(web, revoke, revoke)
    assert asked.status_code == 303 and asked.headers["location"].startswith("/portal/sudo?")
    for page, action, data in [
        ("/portal/operators", "/portal/operators", {"name": "carl", "role": "auditor"}),
        ("/portal/operators/bob", "/portal/operators/bob/disable", {}),
        ("/portal/operators/bob", "/portal/operators/bob", {"role": "admin"}),
        ("/portal/operators/bob", "/portal/operators/bob/unlock", {}),
    ]:
        refused = await post_form(web, page, action, data)
        assert refused.status_code == 303, action
        assert refused.headers["location"].startswith("/portal/sudo?next=%2Fportal%2Foperators")
    assert (await ops.get_operator(vault, "bob")).role == "auditor"
    assert not (await ops.get_operator(vault, "bob")).disabled
    # Reads and the operator's own account need nothing.
    assert (await web.get("/portal/operators")).status_code == 200
    assert (await web.get("/portal/account")).status_code == 200
    # Confirmed: the revocation goes through.
    ok = await confirm(web, asked.headers["location"], password=PASSWORD)
    assert ok.headers["location"] == "/portal/apps/demo"
    done = await post_form(web, revoke, revoke)
    assert done.headers["location"] == "/portal/apps/demo?done=key_revoked"


async def test_a_totp_code_also_confirms(
    vault: Vault, web: httpx.AsyncClient, clock: FakeClock
) -> None:
    from tests.test_portal import enrol

    await make_operator(vault, "root", "owner")
    await app_service.register_app(vault, "demo", OPERATOR)
    await signed_in(web, "root")
    seed, _ = await enrol(web, clock)
    clock.advance(ELEVEN_MINUTES)
    asked = await post_form(web, "/portal/apps/demo", "/portal/apps/demo/keys", {"name": "b"})
    assert asked.status_code == 303
    ok = await confirm(web, asked.headers["location"], code=pyotp.TOTP(seed).at(clock.now()))
    assert ok.status_code == 303, ok.text


async def test_the_return_address_stays_in_the_portal(
    vault: Vault, web: httpx.AsyncClient, clock: FakeClock
) -> None:
    await make_operator(vault, "root", "owner")
    await signed_in(web, "root")
    clock.advance(ELEVEN_MINUTES)
    page = await web.get("/portal/sudo", params={"next": "/portal/apps"})
    assert page.status_code == 200 and 'value="/portal/apps"' in page.text
    for evil in ("https://evil.example/", "//evil.example/portal/", "/portal/\\evil", "/other"):
        ok = await web.post(
            "/portal/sudo",
            data={"password": PASSWORD, "next": evil, "csrf": csrf_of(page.text)},
        )
        assert ok.headers["location"] == "/portal/", evil
        # Already confirmed: the form is skipped, to the portal's overview, not elsewhere.
        skipped = await web.get("/portal/sudo", params={"next": evil})
        assert skipped.headers["location"] == "/portal/", evil


async def test_the_window_is_per_session_and_stored(
    vault: Vault, web: httpx.AsyncClient, clock: FakeClock
) -> None:
    await make_operator(vault, "root", "owner")
    await signed_in(web, "root")
    async with vault.db.read() as conn:
        stamp = (await conn.execute(sa.select(operator_sessions.c.reauthenticated_at))).scalar()
    assert stamp == clock.now()
    session = await portal_sessions.resolve(vault, web.cookies.get("gv_portal"))
    assert portal_sessions.sudo_active(vault, session)
    clock.advance(ELEVEN_MINUTES)
    session = await portal_sessions.resolve(vault, web.cookies.get("gv_portal"))
    assert not portal_sessions.sudo_active(vault, session)


async def test_sso_only_operators_are_not_asked(vault: Vault, clock: FakeClock) -> None:
    """No password or code to re-enter here: the IdP authenticates them (see the module
    docstring of services.portal_sessions)."""
    op = await ops.create_operator(
        vault, "sally", "owner", actor=OPERATOR, sso_subject="https://idp.example sally"
    )
    _, session = await portal_sessions.start(vault, op, pending_mfa=False)
    clock.advance(ELEVEN_MINUTES)
    assert portal_sessions.sudo_active(vault, session)
    async with vault.db.read() as conn:
        row = (await conn.execute(sa.select(operators).where(operators.c.name == "sally"))).one()
    assert row.password_hash is None
