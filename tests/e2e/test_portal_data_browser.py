"""The portal's data pages (managed secrets, grants, policies, audit) in a real headless
Chromium against a real ``grantvault serve`` (issue 12, item 4).

One journey: a managed secret from a template, its credential set (write-only: never in a
page afterwards), a grant, a REAL call with the ``grantvault`` SDK through the vault to a
local echo endpoint, that retrieval found in the portal's audit view, the chain verified, a
policy edited with a validation error shown at its line and then fixed, a request tested
beside the editor. Then axe-core on every new page at 1280x800 and 390 px. Journeys fail on
a Content-Security-Policy console message; only the axe check bypasses the CSP (to inject
axe). Screenshots as in tests/e2e/test_portal_browser.py (``GRANTVAULT_PORTAL_SCREENSHOTS``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from grantvault import App
from tests.e2e.conftest import Echo, Server, free_port, running_server, server_env
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

pytestmark = pytest.mark.e2e

CREDENTIAL = "sk-e2e-portal-credential-0123456789abcdef"
BROKEN = """description: Reads only.
rules:
  methods: [GET]
  no_such_rule: 3
"""
FIXED = """description: Reads only.
rules:
  methods: [GET]
"""


@pytest.fixture(scope="module")
def data_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("portal-data")
    env = server_env(tmp, "", "sqlite", free_port())
    with running_server(env, tmp / "server.log", migrate=False) as srv:
        yield srv


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    pw = await async_playwright().start()
    launched = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    try:
        yield launched
    finally:
        await launched.close()
        await pw.stop()


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path)


async def create_from_template(page: Page, app: str, hosts: str) -> str:
    """Add the OpenAI template's secret (its hosts replaced by ``hosts``); its id."""
    await page.goto(f"/portal/apps/{app}/secrets")
    await page.get_by_label("Template", exact=True).select_option("openai")
    await page.get_by_label(re.compile("^Allowed hosts .*added")).fill(hosts)
    await page.get_by_role("button", name="Add secret", exact=True).click()
    match = re.search(r"/secrets/([^/?]+)\?done=secret_created", page.url)
    assert match, page.url
    return match.group(1)


async def test_secret_grant_real_call_audit_verify_and_policy(
    data_server: Server, browser: Browser, shots: Shots, echo: Echo
) -> None:
    operator(data_server, "olga", "owner")
    data_server.cli("apps", "create", "payments")
    api_key = data_server.cli_json("keys", "create", "--app", "payments", "--name", "e2e")[
        "api_key"
    ]
    context, page, violations = await new_page(browser, data_server)
    await sign_in(page, "olga")

    # A managed secret from a template; the credential, write-only.
    await page.goto("/portal/apps/payments/secrets")
    assert "No managed secrets yet" in await text(page)
    secret_id = await create_from_template(page, "payments", echo.host_rule)
    assert "Managed secret created" in await text(page)
    field = page.get_by_label("Token", exact=True)
    assert await field.get_attribute("type") == "password"
    await field.fill(CREDENTIAL)
    await page.get_by_role("button", name="Set credential").click()
    assert "Credential stored" in await text(page)
    assert await page.get_by_role("button", name="Replace credential").is_visible()
    assert CREDENTIAL not in await page.content()
    assert await page.get_by_label("Token", exact=True).input_value() == ""
    await page.goto("/portal/apps/payments/secrets")
    await shots.take(page, "secrets")

    # A grant for it.
    await page.goto("/portal/apps/payments/grants")
    await page.get_by_label("Label").fill("billing-worker")
    await page.get_by_role("button", name="Create grant").click()
    assert "Grant created" in await text(page)
    grant_id = page.url.split("/grants/")[1].split("?")[0]

    # A real call with the grantvault SDK, through the vault, to the local endpoint.
    async with App(api_key, base_url=data_server.base_url) as app:
        answer = await app.request("GET", f"{echo.url}/v1/models", grant_id=grant_id)
    assert answer.status_code == 200
    assert echo.seen[-1]["headers"]["Authorization"] == f"Bearer {CREDENTIAL}"

    # The grant's last use, and from it to its events in the audit view.
    await page.goto(f"/portal/apps/payments/grants/{grant_id}")
    assert "never" not in (await page.locator(".details").inner_text()).split("Last used")[1][:20]
    await page.goto("/portal/apps/payments/grants")
    await shots.take(page, "grants")
    await page.goto(f"/portal/apps/payments/grants/{grant_id}")
    await page.get_by_role("link", name="All events of this grant").click()
    body = await text(page)
    assert "credential.retrieved" in body or "token." in body, body
    row = page.locator("details.audit-row").first
    await row.locator("summary").click()
    assert "/v1/models" in await row.inner_text()
    # The vault-wide view finds it too, filtered by outcome and grant.
    await page.goto(f"/portal/audit?outcome=success&grant={grant_id}")
    assert "payments" in await text(page)
    await page.get_by_role("button", name="Verify the chains").click()
    assert await page.get_by_role("heading", name="The chain is intact").is_visible()
    await page.goto(f"/portal/audit?chain=&grant={grant_id}")
    await page.locator("details.audit-row summary").first.click()
    await shots.take(page, "audit")
    assert CREDENTIAL not in await page.content()

    # A policy: a validation error at its line, then fixed; a request tested beside it.
    await page.goto("/portal/apps/payments/policies")
    await page.get_by_label("Name", exact=True).fill("reads-only")
    await page.get_by_label("Document (YAML or JSON)").fill(BROKEN)
    await page.get_by_role("button", name="Save policy").click()
    alert = page.get_by_role("alert")
    assert "line 4" in await alert.inner_text() and "no_such_rule" in await alert.inner_text()
    await page.get_by_label("Document (YAML or JSON)").fill(FIXED)
    await page.get_by_role("button", name="Save policy").click()
    assert "Policy saved" in await text(page)
    editor = page.get_by_label("Policy text (YAML or JSON)")
    await editor.fill(BROKEN)
    await page.get_by_role("button", name=re.compile("^Save as version")).click()
    assert "line 4" in await page.get_by_role("alert").inner_text()
    await editor.fill(FIXED)
    await page.get_by_label("Method", exact=True).select_option("POST")
    await page.get_by_label("URL", exact=True).fill(f"{echo.url}/v1/chat")
    await page.get_by_role("button", name="Test this request").click()
    verdict = page.locator(".verdict")
    assert "Denied" in await verdict.inner_text() and "reads-only" in await verdict.inner_text()
    await shots.take(page, "policy")
    await page.get_by_role("button", name=re.compile("^Save as version")).click()
    assert "Policy saved" in await text(page) and "version 2" in await text(page)

    await page.goto("/portal/apps/payments/secrets/" + secret_id)
    assert CREDENTIAL not in await page.content()
    assert violations == []
    await context.close()
    assert CREDENTIAL not in data_server.log.read_text()

    # At phone width the pages do not scroll sideways.
    context, page, violations = await new_page(browser, data_server, viewport=PHONE)
    await sign_in(page, "olga")
    for path in (
        "/portal/apps/payments/secrets",
        "/portal/apps/payments/grants",
        "/portal/apps/payments/policies/reads-only",
        "/portal/audit",
    ):
        await page.goto(path)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], (path, width)
    assert violations == []
    await context.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
async def test_every_data_page_passes_axe(
    data_server: Server, browser: Browser, viewport: dict[str, int], echo: Echo
) -> None:
    assert AXE.exists(), "axe-core is missing: run scripts/bootstrap (npm ci in tests/axe)"
    tag = "d" if viewport is DESKTOP else "p"
    owner, app = f"axe-data-{tag}", f"axe-data-{tag}"
    operator(data_server, owner, "owner")
    data_server.cli("apps", "create", app)
    context, page, _ = await new_page(browser, data_server, viewport=viewport, bypass_csp=True)
    problems: dict[str, list[str]] = {}

    async def check(label: str) -> None:
        found = await axe_violations(page)
        if found:
            problems[label] = found

    await sign_in(page, owner)
    base = f"/portal/apps/{app}"
    for path, label in (
        (f"{base}/secrets", "secrets (empty)"),
        (f"{base}/grants", "grants (empty)"),
        (f"{base}/policies", "policies (empty)"),
        (f"{base}/audit", "app audit"),
    ):
        await page.goto(path)
        await check(label)
    secret_id = await create_from_template(page, app, echo.host_rule)
    await check("secret")
    await page.get_by_label("Token", exact=True).fill("tok-axe-123456")
    await page.get_by_role("button", name="Set credential").click()
    await page.goto(f"{base}/secrets/{secret_id}/delete")
    await check("secret delete confirmation")
    await page.goto(f"{base}/secrets")
    await check("secrets")
    await page.goto(f"{base}/grants")
    await page.get_by_role("button", name="Create grant").click()
    await check("grant")
    grant_id = page.url.split("/grants/")[1].split("?")[0]
    await page.goto(f"{base}/grants/{grant_id}/revoke")
    await check("grant revoke confirmation")
    await page.goto(f"{base}/grants")
    await check("grants")
    await page.goto(f"{base}/policies")
    await page.get_by_label("Name", exact=True).fill("p1")
    await page.get_by_label("Document (YAML or JSON)").fill(BROKEN)
    await page.get_by_role("button", name="Save policy").click()
    await check("policies with errors")
    await page.get_by_label("Document (YAML or JSON)").fill(FIXED)
    await page.get_by_role("button", name="Save policy").click()
    await check("policy")
    await page.get_by_label("URL", exact=True).fill("https://api.openai.com/v1/models")
    await page.get_by_role("button", name="Test this request").click()
    await check("policy tested")
    await page.goto(f"{base}/policies/p1/delete")
    await check("policy delete confirmation")
    await page.goto("/portal/audit")
    await page.locator("details.audit-row summary").first.click()
    await check("audit, a row expanded")
    await page.get_by_role("button", name="Verify the chains").click()
    await check("audit verified")
    event_href = await page.locator("details.audit-row a").first.get_attribute("href")
    assert event_href
    await page.goto(event_href)
    await check("audit event")
    await context.close()
    assert problems == {}, "\n".join(f"{k}: {v}" for k, v in problems.items())
