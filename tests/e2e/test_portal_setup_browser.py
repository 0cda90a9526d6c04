"""The portal's set-up pages in a real headless Chromium against a real ``grantvault serve``
and the real OAuth peer (issue 12): configure the identity provider by issuer (Discover, see
what was found, save), register the peer as an OAuth provider and copy the redirect URI,
create a personal API token and drive the vault with it (the CLI's remote mode and the admin
API), disable a user; axe-core on every new page at 1280x800 and 390 px with no serious or
critical violation. Every journey fails on a Content-Security-Policy console message.

Screenshots go under the test's folder, and to ``GRANTVAULT_PORTAL_SCREENSHOTS`` if set
(docs/images/portal-providers.png, portal-identity.png and portal-tokens.png come from here,
with the token masked).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

import grantvault
from tests.e2e.conftest import Server, free_port, run_cli, running_server, server_env
from tests.e2e.test_portal_browser import (
    ARGS,
    AXE,
    CHROMIUM,
    DESKTOP,
    PHONE,
    Shots,
    axe_violations,
    new_page,
    operator,
    sign_in,
    text,
)
from tests.peer import BASIC_CLIENT, DEFAULT_REDIRECT_URIS, Peer, start_peer
from tests.test_identity_support import IdpPeer

pytestmark = pytest.mark.e2e


@dataclass
class World:
    server: Server
    peer: Peer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One real server (SQLite) and the OIDC peer, which is both IdP and OAuth provider."""
    tmp = tmp_path_factory.mktemp("portal-setup")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    peer = start_peer(
        PEER_REDIRECT_URIS=" ".join([f"{base}/sdk/oauth/callback", *DEFAULT_REDIRECT_URIS])
    )
    env = server_env(tmp, "", "sqlite", port, GRANTVAULT_PUBLIC_BASE_URL=base)
    try:
        with running_server(env, tmp / "server.log", migrate=False) as srv:
            yield World(srv, peer)
    finally:
        peer.stop()


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    pw = await async_playwright().start()
    browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    try:
        yield browser
    finally:
        await browser.close()
        await pw.stop()


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path)


def new_app(world: World, name: str) -> None:
    world.server.cli_json("apps", "create", name)


async def a_user_signs_in(world: World, app: str, sub: str, tmp: Path) -> None:
    """``sub`` makes one SDK call with their ID token, so the vault creates them."""
    key = world.server.cli_json("keys", "create", "--app", app)["api_key"]
    idp = IdpPeer(world.peer, tmp / "unused.json")
    token = idp.id_token(sub)
    async with grantvault.App(
        key, base_url=world.server.base_url, user_token_getter=lambda: token
    ) as sdk:
        await sdk.list_grants()


async def configure_identity(page: Page, world: World, app: str) -> None:
    await page.goto(f"/portal/apps/{app}/identity")
    assert "No identity provider yet" in await text(page)
    await page.get_by_label("Issuer URL").fill(world.peer.issuer)
    await page.get_by_role("button", name="Discover").click()
    await page.get_by_role("heading", name="2. What the vault found").wait_for()
    found = await text(page)
    assert f"{world.peer.issuer}/jwks" in found and "Token endpoint" in found
    await page.get_by_label("Audience").fill(BASIC_CLIENT[0])
    await page.get_by_label("Client id").fill(BASIC_CLIENT[0])
    await page.get_by_label("Client secret (write-only)").fill(BASIC_CLIENT[1])


async def test_identity_provider_by_issuer_discover_then_save(
    world: World, chromium: Browser, shots: Shots, tmp_path: Path
) -> None:
    operator(world.server, "ida", "owner")
    new_app(world, "shop")
    context, page, csp = await new_page(chromium, world.server)
    await context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=world.server.base_url
    )
    await sign_in(page, "ida")
    await configure_identity(page, world, "shop")
    await shots.take(page, "identity")
    await page.get_by_role("button", name="Save identity provider").click()
    await page.get_by_text("The identity provider is saved").wait_for()
    saved = await text(page)
    assert world.peer.issuer in saved and BASIC_CLIENT[1] not in await page.content()

    await page.get_by_role("button", name="Create a signing secret").click()
    secret = await page.locator("#webhook-secret").inner_text()
    assert secret.startswith("whsec_")
    await page.locator("button[data-copy='webhook-secret']").click()
    await page.get_by_text("Copied to the clipboard.").wait_for()
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    await page.goto("/portal/apps/shop/identity")
    assert secret not in await page.content()
    assert "Replace the signing secret" in await text(page)

    # A user signs in through the SDK; the users page lists them; disable, confirmed by name.
    await a_user_signs_in(world, "shop", "alice", tmp_path)
    await page.goto("/portal/apps/shop/users")
    await page.get_by_role("link", name="Disable alice").click()
    await page.get_by_role("heading", name=re.compile("^Disable ")).wait_for()
    await page.get_by_label("Reason").fill("left the team")
    await page.get_by_role("button", name=re.compile("^Disable ")).click()
    await page.get_by_text("The user is disabled").wait_for()
    assert "left the team" in await text(page)
    await context.close()
    assert csp == []


async def test_add_an_oauth_provider_and_copy_its_redirect_uri(
    world: World, chromium: Browser, shots: Shots
) -> None:
    operator(world.server, "pat", "owner")
    new_app(world, "crm")
    context, page, csp = await new_page(chromium, world.server)
    await context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=world.server.base_url
    )
    await sign_in(page, "pat")
    await page.goto("/portal/apps/crm/providers")
    redirect = f"{world.server.base_url}/sdk/oauth/callback"
    assert (await page.locator("#redirect-uri").inner_text()) == redirect
    await page.locator("button[data-copy='redirect-uri']").click()
    await page.get_by_text("Copied to the clipboard.").wait_for()
    assert await page.evaluate("navigator.clipboard.readText()") == redirect

    await page.get_by_label("Search providers").fill("github")
    await page.get_by_role("button", name="Search").click()
    assert "GitHub" in await text(page)

    await page.get_by_label("Any OpenID Connect issuer (discovery)").check()
    await page.get_by_label("Provider id").fill("peer")
    await page.get_by_label("Client id").fill(BASIC_CLIENT[0])
    await page.get_by_label("Client secret (write-only)").fill(BASIC_CLIENT[1])
    await page.get_by_label("Default scopes (optional)").fill("openid profile")
    await page.locator("details.more > summary").click()
    await page.get_by_label("OpenID Connect issuer URL").fill(world.peer.issuer)
    await page.get_by_label("Display name (custom)").fill("Peer")
    await page.get_by_label("API hosts tokens may go to").fill("127.0.0.1")
    await page.get_by_role("button", name="Save provider").click()
    await page.wait_for_load_state()
    assert "The provider is registered" in await text(page), await text(page)
    row = page.locator("tr", has_text=BASIC_CLIENT[0])
    assert "set" in await row.inner_text()
    assert BASIC_CLIENT[1] not in await page.content()
    await page.goto("/portal/apps/crm/providers?q=google")
    await shots.take(page, "providers")
    await page.goto("/portal/apps/crm/providers")
    await page.get_by_role("link", name="Remove Peer").click()
    await page.get_by_role("heading", name="Remove Peer?").wait_for()
    await context.close()
    assert csp == []


async def test_a_personal_token_drives_the_cli_and_the_admin_api(
    world: World, chromium: Browser, shots: Shots, tmp_path: Path
) -> None:
    operator(world.server, "tom", "owner")
    new_app(world, "tokens-app")
    context, page, csp = await new_page(chromium, world.server)
    await sign_in(page, "tom")
    await page.goto("/portal/account/tokens")
    assert "No personal tokens yet" in await text(page)
    await page.get_by_label("Name").fill("ci")
    await page.get_by_role("button", name="Create token").click()
    token = await page.locator("#new-token").inner_text()
    assert token.startswith("gvat_")
    hint = await page.locator("#new-token-env").inner_text()
    assert hint == f"export GRANTVAULT_SERVER={world.server.base_url} GRANTVAULT_TOKEN={token}"
    await shots.take(page, "tokens", secret=".secret-value")

    # The CLI in remote mode, with no database of its own.
    remote = {
        "GRANTVAULT_SERVER": world.server.base_url,
        "GRANTVAULT_TOKEN": token,
        "GRANTVAULT_DATA_DIR": str(tmp_path / "empty"),
    }
    listed = run_cli(["apps", "list", "--json"], remote)
    assert listed.returncode == 0, listed.stderr
    assert "tokens-app" in listed.stdout
    r = httpx.get(
        f"{world.server.base_url}/admin/v1/apps", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200 and "tokens-app" in r.text

    await page.goto("/portal/account/tokens")
    assert token not in await page.content()
    await page.get_by_role("link", name=re.compile("^Revoke")).first.click()
    await page.get_by_role("button", name=re.compile("^Revoke token")).click()
    await page.get_by_text("The token is revoked").wait_for()
    r = httpx.get(
        f"{world.server.base_url}/admin/v1/apps", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 401
    await context.close()
    assert csp == []
    assert token not in world.server.log.read_text()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
async def test_every_set_up_page_passes_axe(
    world: World, chromium: Browser, viewport: dict[str, int], tmp_path: Path, shots: Shots
) -> None:
    assert AXE.exists(), "axe-core is missing: run scripts/bootstrap (npm ci in tests/axe)"
    tag = "d" if viewport is DESKTOP else "p"
    owner, app = f"axe-setup-{tag}", f"axe-setup-{tag}"
    operator(world.server, owner, "owner")
    new_app(world, app)
    context, page, _ = await new_page(chromium, world.server, viewport=viewport, bypass_csp=True)
    problems: dict[str, list[str]] = {}

    async def check(label: str) -> None:
        found = await axe_violations(page)
        if found:
            problems[label] = found

    await sign_in(page, owner)
    base = f"/portal/apps/{app}"
    await page.goto(f"{base}/providers")
    await check("providers (empty)")
    await page.goto(f"{base}/providers?q=nothing-matches")
    await check("providers (no match)")
    await page.goto(f"{base}/providers")
    await page.get_by_label("Provider id").fill("github")
    await page.get_by_label("Client id").fill("x")
    await page.get_by_role("button", name="Save provider").click()
    await check("providers (one)")
    await shots.take(page, f"setup-providers-{tag}")
    await page.get_by_label("Provider id").fill("github")
    await page.get_by_label("Client id").fill("y")
    await page.get_by_role("button", name="Save provider").click()
    await check("providers (form error)")
    await page.goto(f"{base}/providers/github/remove")
    await check("provider removal")
    await page.goto(f"{base}/users")
    await check("users (no identity provider)")
    await page.goto(f"{base}/identity")
    await check("identity (empty)")
    await configure_identity(page, world, app)
    await check("identity (discovered)")
    await page.get_by_role("button", name="Save identity provider").click()
    await check("identity (saved)")
    await page.get_by_role("button", name="Create a signing secret").click()
    await check("identity (webhook secret)")
    await page.goto(f"{base}/users")
    await check("users (none yet)")
    await a_user_signs_in(world, app, f"bob-{tag}", tmp_path)
    await page.goto(f"{base}/users")
    await check("users")
    await shots.take(page, f"setup-users-{tag}")
    await page.goto(f"{base}/users/disable?subject=bob-{tag}")
    await check("user confirmation")
    await page.goto("/portal/account/tokens")
    await check("tokens")
    await page.get_by_label("Name").fill("axe")
    await page.get_by_role("button", name="Create token").click()
    await check("token created")
    await page.goto("/portal/account/tokens")
    await page.get_by_role("link", name=re.compile("^Revoke")).first.click()
    await check("token revocation")
    await context.close()
    assert problems == {}, "\n".join(f"{k}: {v}" for k, v in problems.items())
