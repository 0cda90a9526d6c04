"""The operator portal in a real headless Chromium (Debian's, driven by Playwright) against a
real ``grantvault serve`` (issue 12's browser journeys for the portal's foundation).

First sign-in and TOTP enrolment (codes from pyotp), creating an app and minting a key (copy
button, key shown once), a form posted without its CSRF token, a locked-out sign-in, the
auditor's journey (sees everything, no button that changes anything, refused anyway), and
axe-core on every page with no serious or critical violation. Pages must work under the
portal's strict CSP: every journey fails on a Content-Security-Policy console message; only
the axe check bypasses the CSP, to inject axe itself.

Set ``GRANTVAULT_PORTAL_SCREENSHOTS`` to a folder to keep the screenshots (docs/images has a
few of them); they are always written under the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.e2e.conftest import Server, free_port, running_server, server_env
from tests.e2e.test_oauth_e2e import signed_token_request

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic"]
AXE = Path(__file__).resolve().parents[1] / "axe" / "node_modules" / "axe-core" / "axe.min.js"
PASSWORD = "correct-stapler-orbit-47"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def portal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server (SQLite) for the module; each test makes its own operators and apps."""
    tmp = tmp_path_factory.mktemp("portal")
    env = server_env(tmp, "", "sqlite", free_port())
    with running_server(env, tmp / "server.log", migrate=False) as srv:
        yield srv


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    pw = await async_playwright().start()
    browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    try:
        yield browser
    finally:
        await browser.close()
        await pw.stop()


class Shots:
    """Screenshots under the test's folder (and ``GRANTVAULT_PORTAL_SCREENSHOTS`` if set)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.keep = os.environ.get("GRANTVAULT_PORTAL_SCREENSHOTS")

    async def take(self, page: Page, name: str, *, secret: str | None = None) -> None:
        """``secret``: a selector of something shown once (a key, a seed), masked in the
        picture: screenshots end up in the docs."""
        path = self.folder / f"portal-{name}.png"
        mask = [page.locator(secret)] if secret else None
        await page.screenshot(path=str(path), full_page=True, mask=mask, mask_color="#c9ced6")
        if self.keep:
            Path(self.keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(self.keep) / path.name)


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path)


def operator(server: Server, name: str, role: str, *extra: str) -> None:
    server.cli(
        "operators", "create", name, "--role", role, *extra, "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip


async def new_page(
    browser: Browser, server: Server, *, viewport: dict[str, int] = DESKTOP, **options: Any
) -> tuple[BrowserContext, Page, list[str]]:
    """A fresh browser profile and page; the list collects CSP violations it reports."""
    context = await browser.new_context(base_url=server.base_url, viewport=viewport, **options)  # type: ignore[arg-type]
    page = await context.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    return context, page, violations


async def sign_in(page: Page, name: str, password: str = PASSWORD) -> None:
    await page.goto("/portal/login")
    await page.get_by_label("Operator name").fill(name)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def text(page: Page) -> str:
    return await page.locator("body").inner_text()


# --------------------------------------------------------------------------- journeys


async def test_first_sign_in_and_totp_enrolment(
    portal_server: Server, chromium: Browser, shots: Shots
) -> None:
    operator(portal_server, "root", "owner")
    context, page, violations = await new_page(chromium, portal_server)
    await page.goto("/portal/")
    assert page.url.endswith("/portal/login")
    await shots.take(page, "login")
    await sign_in(page, "root")
    assert page.url.endswith("/portal/")
    assert await page.get_by_role("heading", name="Overview", level=1).is_visible()
    assert "No apps yet" in await text(page)
    await shots.take(page, "overview-empty")

    await page.get_by_role("link", name="Account").click()
    await page.get_by_role("button", name="Set up two-factor authentication").click()
    secret = (await page.locator("#totp-secret").inner_text()).replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    assert await page.locator(".qr svg").is_visible()
    await shots.take(page, "totp-enrol", secret=".qr svg, #totp-secret")
    await page.get_by_label("6-digit code from the app").fill(pyotp.TOTP(secret).now())
    await page.get_by_role("button", name="Confirm and turn on").click()
    assert await page.get_by_role("heading", name="Your recovery codes").is_visible()
    codes = await page.locator("#recovery-codes li").all_inner_texts()
    assert len(codes) == 10
    await page.get_by_role("link", name="I have saved them").click()
    later = await page.content()
    assert secret not in later and not any(c in later for c in codes)

    await page.get_by_role("button", name="Sign out", exact=True).click()
    assert "You signed out" in await text(page)
    await sign_in(page, "root")
    assert page.url.endswith("/portal/login/totp")
    await shots.take(page, "totp-step")
    await page.get_by_label("Authentication code").fill(pyotp.TOTP(secret).now())
    await page.get_by_role("button", name="Verify").click()
    assert page.url.endswith("/portal/")
    assert violations == []
    await context.close()
    logged = portal_server.log.read_text()
    assert secret not in logged and PASSWORD not in logged
    assert not any(c in logged for c in codes)


async def test_create_an_app_and_mint_a_key_shown_once(
    portal_server: Server, chromium: Browser, shots: Shots
) -> None:
    operator(portal_server, "alice", "owner")
    context, page, violations = await new_page(chromium, portal_server)
    await context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=portal_server.base_url
    )
    await sign_in(page, "alice")
    await page.get_by_role("link", name="Apps", exact=True).click()
    await page.get_by_label("Name", exact=True).fill("billing-agent")
    await page.get_by_role("button", name="Create app").click()
    assert page.url.endswith("/portal/apps/billing-agent?done=app_created")
    assert "App created" in await text(page)

    await page.get_by_label("Label").fill("production")
    await page.get_by_label("Expires").select_option("90d")
    await page.get_by_role("button", name="Mint key").click()
    key = await page.locator("#new-key").inner_text()
    assert key.startswith("alter_rk_")
    copy = page.get_by_role("button", name="Copy")
    assert await copy.is_visible()  # the script unhid it
    assert "only time the whole key is shown" in await text(page)
    await shots.take(page, "key-minted", secret="#new-key")
    await copy.click()
    await page.get_by_text("Copied to the clipboard.").wait_for()
    assert await page.evaluate("navigator.clipboard.readText()") == key

    # The app calls the vault with it (a grant it does not have): a denial on the overview.
    with httpx.Client(timeout=15) as sdk:
        denied = sdk.send(
            signed_token_request(
                portal_server.base_url, key, str(uuid.uuid4()), "https://api.example.com/v1"
            )
        )
    assert denied.json()["error"] == "grant_not_found"
    await page.goto("/portal/")
    assert "grant_not_found" in await text(page) and key[:15] in await text(page)
    await shots.take(page, "overview")

    await page.goto("/portal/apps/billing-agent")
    assert key not in await page.content()
    assert key[:15] in await text(page)  # the prefix stays
    await shots.take(page, "app")
    await page.get_by_role("link", name=re.compile("^Manage")).click()
    await shots.take(page, "key")
    await page.get_by_role("link", name=re.compile("^Revoke key")).click()
    await shots.take(page, "revoke-confirm")
    await page.get_by_role("button", name=re.compile("^Revoke key")).click()
    assert "The key was revoked" in await text(page)
    assert key not in await page.content()

    await page.goto("/portal/operators")
    await shots.take(page, "operators")
    assert key not in portal_server.log.read_text()
    assert violations == []
    await context.close()

    # The same pages at phone width.
    context, page, violations = await new_page(chromium, portal_server, viewport=PHONE)
    await sign_in(page, "alice")
    await shots.take(page, "overview-phone")
    await page.goto("/portal/apps/billing-agent")
    await shots.take(page, "app-phone")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the page scrolls sideways on a phone"
    assert violations == []
    await context.close()


async def test_a_form_posted_without_its_csrf_token_is_refused(
    portal_server: Server, chromium: Browser, shots: Shots
) -> None:
    operator(portal_server, "carol", "owner")
    context, page, _ = await new_page(chromium, portal_server)
    await sign_in(page, "carol")
    await page.goto("/portal/apps")
    await page.evaluate("document.querySelector('#create input[name=csrf]').remove()")
    await page.get_by_label("Name", exact=True).fill("no-token")
    async with page.expect_response("**/portal/apps") as answer:
        await page.get_by_role("button", name="Create app").click()
    assert (await answer.value).status == 403
    assert "forbidden" in await text(page) and "security token" in await text(page)
    await shots.take(page, "csrf-refused")
    await page.goto("/portal/apps")
    assert "no-token" not in await text(page)
    await context.close()


async def test_a_locked_out_sign_in(portal_server: Server, chromium: Browser, shots: Shots) -> None:
    operator(portal_server, "dave", "admin")
    context, page, violations = await new_page(chromium, portal_server)
    for _ in range(5):
        await sign_in(page, "dave", "not-the-right-password")
        assert "login_failed" in await text(page)
    await sign_in(page, "dave")
    body = await text(page)
    assert "account_locked" in body and re.search(r"try again in \d+ s", body)
    assert await page.get_by_role("alert").is_visible()
    await shots.take(page, "locked")
    assert violations == []
    await context.close()


async def test_the_auditor_sees_everything_and_can_change_nothing(
    portal_server: Server, chromium: Browser, shots: Shots
) -> None:
    operator(portal_server, "erin", "auditor")
    portal_server.cli("apps", "create", "audited")
    key_id = portal_server.cli_json("keys", "create", "--app", "audited", "--name", "ci")["key_id"]
    context, page, violations = await new_page(chromium, portal_server)
    await sign_in(page, "erin")
    pages = [
        "/portal/",
        "/portal/apps",
        "/portal/apps/audited",
        f"/portal/apps/audited/keys/{key_id}",
        f"/portal/apps/audited/keys/{key_id}/revoke",
        "/portal/account",
    ]
    for path in pages:
        await page.goto(path)
        assert "audited" in await text(page) or path == "/portal/account"
        buttons = await page.get_by_role("button").all_inner_texts()
        allowed = {"Sign out", "Filter", "Set up two-factor authentication", "Sign out everywhere"}
        assert set(buttons) <= allowed, (path, buttons)
        assert await page.locator("a.button.danger").count() == 0, path
    await page.goto("/portal/apps/audited")
    await shots.take(page, "auditor-app")
    assert await page.get_by_role("link", name="Operators").count() == 0

    # The server refuses anyway: a hand-made form with a valid token.
    async with page.expect_response("**/keys") as answer:
        await page.evaluate(
            """() => {
              const token = document.querySelector('input[name=csrf]').value;
              const form = document.createElement('form');
              form.method = 'post';
              form.action = '/portal/apps/audited/keys';
              form.innerHTML = '<input name="csrf"><input name="name" value="sneaky">';
              form.querySelector('input[name=csrf]').value = token;
              document.body.appendChild(form);
              form.submit();
            }"""
        )
    assert (await answer.value).status == 403
    await page.wait_for_load_state()
    assert "forbidden" in await text(page) and "auditor role may not" in await text(page)
    keys = portal_server.cli_json("keys", "list", "--app", "audited")["keys"]
    assert [k["name"] for k in keys] == ["ci"]
    refused = portal_server.cli_json("audit", "list", "--event", "admin.refused")
    assert any(e["actor"].get("name") == "erin" for e in refused["events"])
    assert violations == []
    await context.close()


# --------------------------------------------------------------------------- accessibility


async def axe_violations(page: Page) -> list[str]:
    """Serious and critical axe-core violations of the page, one line each."""
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
async def test_every_page_passes_axe(
    portal_server: Server, chromium: Browser, viewport: dict[str, int]
) -> None:
    assert AXE.exists(), "axe-core is missing: run scripts/bootstrap (npm ci in tests/axe)"
    tag = "d" if viewport is DESKTOP else "p"
    owner, other = f"axe-{tag}", f"axe-{tag}-bob"
    operator(portal_server, owner, "owner")
    operator(portal_server, other, "admin")
    app = f"axe-{tag}"
    # Only here is the CSP bypassed: to inject axe itself.
    context, page, _ = await new_page(chromium, portal_server, viewport=viewport, bypass_csp=True)
    problems: dict[str, list[str]] = {}

    async def check(label: str) -> None:
        found = await axe_violations(page)
        if found:
            problems[label] = found

    await page.goto("/portal/login")
    await check("login")
    await sign_in(page, owner, "wrong-password-for-axe")
    await check("login with an error")
    await sign_in(page, owner)
    await check("overview (empty)")
    await page.goto("/portal/apps")
    await check("apps (empty)")
    await page.get_by_label("Name", exact=True).fill(app)
    await page.get_by_role("button", name="Create app").click()
    await check("app (no keys)")
    await page.get_by_role("button", name="Mint key").click()
    await check("key minted")
    await page.goto(f"/portal/apps/{app}")
    await check("app")
    await page.get_by_role("link", name=re.compile("^Manage")).click()
    await check("key")
    await page.get_by_role("link", name=re.compile("^Revoke key")).click()
    await check("revoke confirmation")
    await page.goto("/portal/apps")
    await check("apps")
    await page.goto("/portal/")
    await check("overview")
    await page.goto("/portal/operators")
    await check("operators")
    await page.goto(f"/portal/operators/{other}")
    await check("operator")
    await page.goto("/portal/apps/does-not-exist")
    await check("error page")
    await page.goto("/portal/account")
    await check("account")
    await page.get_by_role("button", name="Set up two-factor authentication").click()
    await check("TOTP enrolment")
    secret = (await page.locator("#totp-secret").inner_text()).replace(" ", "")
    await page.get_by_label("6-digit code from the app").fill(pyotp.TOTP(secret).now())
    await page.get_by_role("button", name="Confirm and turn on").click()
    await check("recovery codes")
    await page.get_by_role("link", name="I have saved them").click()
    await page.get_by_role("button", name="Sign out", exact=True).click()
    await sign_in(page, owner)
    await check("TOTP step")
    await context.close()
    assert problems == {}, "\n".join(f"{k}: {v}" for k, v in problems.items())
