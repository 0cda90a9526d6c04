"""Single sign-on for operators in a real headless Chromium against a real ``grantvault serve``
and the real OIDC peer (issue 12: "SSO through the OAuth peer mapping a group to a role").

The peer logs its default user in without a form and puts the user's groups in the ID token;
the vault maps the group to a role, creates the operator just in time and lands on the
overview, under the portal's strict CSP, with no secret in the server's log.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest
from playwright.async_api import Browser, async_playwright

from tests.e2e.conftest import Server, free_port, running_server, server_env
from tests.peer import BASIC_CLIENT, Peer, start_peer

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic"]


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def peer(port: int) -> Iterator[Peer]:
    started = start_peer(
        PEER_REDIRECT_URIS=f"http://127.0.0.1:{port}/portal/sso/callback",
        PEER_DEFAULT_USER="olivia",
        PEER_USER_GROUPS_JSON=json.dumps({"olivia": ["vault-auditors", "vault-admins"]}),
    )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def sso_server(tmp_path_factory: pytest.TempPathFactory, peer: Peer, port: int) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("portal-sso")
    env = server_env(
        tmp,
        "",
        "sqlite",
        port,
        GRANTVAULT_OPERATOR_SSO_ISSUER=peer.issuer,
        GRANTVAULT_OPERATOR_SSO_CLIENT_ID=BASIC_CLIENT[0],
        GRANTVAULT_OPERATOR_SSO_CLIENT_SECRET=BASIC_CLIENT[1],
        GRANTVAULT_OPERATOR_SSO_ROLE_MAP=json.dumps(
            {"vault-admins": "admin", "vault-auditors": "auditor"}
        ),
    )
    with running_server(env, tmp / "server.log", migrate=False) as srv:
        yield srv


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    from tests.e2e.test_portal_browser import CHROMIUM

    pw = await async_playwright().start()
    browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        await browser.close()
        await pw.stop()


async def test_sso_through_the_peer_maps_a_group_to_a_role(
    sso_server: Server, chromium: Browser
) -> None:
    context = await chromium.new_context(base_url=sso_server.base_url)
    page = await context.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    await page.goto("/portal/login")
    await page.get_by_role("link", name="Sign in with SSO").click()
    await page.wait_for_url("**/portal/")
    assert await page.get_by_role("heading", name="Overview", level=1).is_visible()
    who = await page.locator(".who-name").inner_text()
    assert "olivia" in who and "admin" in who  # the highest of the mapped groups
    cookies = {c["name"]: c for c in await context.cookies()}
    assert cookies["gv_portal"]["httpOnly"] and cookies["gv_portal"]["sameSite"] == "Strict"
    assert "gv_portal_sso" not in cookies  # the flow cookie is gone
    assert violations == []
    await context.close()

    listed = sso_server.cli_json("operators", "list")
    olivia = next(o for o in listed["operators"] if o["name"] == "olivia")
    assert olivia["role"] == "admin" and olivia["sso"] is True and olivia["password"] is False
    log = sso_server.log.read_text()
    assert BASIC_CLIENT[1] not in log and "eyJ" not in log
