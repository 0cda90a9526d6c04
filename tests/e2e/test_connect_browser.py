"""The hosted Connect pages in a real headless Chromium (Debian's, driven by Playwright).

An app page opens the popup the way the Connect widget does (``/sdk/oauth/connect#session=``);
the end user continues to the provider (the real OIDC peer), comes back, and the result page
posts the outcome to the opener with ``postMessage``, only when the opener is the session's
``allowed_origin``. Pages are also checked for Content-Security-Policy violations: every page
must work with no inline script.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright

from tests.e2e.conftest import free_port, running_server, server_env
from tests.e2e.test_oauth_e2e import World, setup_world
from tests.peer import start_peer

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic"]

OPENER = b"""<!doctype html><html><head><meta charset="utf-8"><title>App</title></head>
<body><h1>The app</h1><script>
window.received = [];
window.addEventListener("message", function (e) {
  window.received.push({origin: e.origin, data: e.data});
});
</script></body></html>"""


@pytest.fixture
def app_origins() -> Iterator[tuple[str, str]]:
    """The app's page on two origins: 127.0.0.1 (allowed) and localhost (foreign)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(OPENER)))
            self.end_headers()
            self.wfile.write(OPENER)

        def log_message(self, *_args: object) -> None:
            return

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield (
            f"http://127.0.0.1:{servers[0].server_address[1]}",
            f"http://localhost:{servers[1].server_address[1]}",
        )
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


@pytest.fixture
def world(tmp_path: Path, database_url: str, backend: str) -> Iterator[World]:
    port = free_port()
    peer = start_peer(PEER_REDIRECT_URIS=f"http://127.0.0.1:{port}/sdk/oauth/callback")
    env = server_env(
        tmp_path, database_url, backend, port, GRANTVAULT_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}"
    )
    try:
        with running_server(env, tmp_path / "server.log", migrate=backend == "postgresql") as srv:
            yield setup_world(srv, peer)
    finally:
        peer.stop()


def _session(world: World, allowed_origin: str) -> dict[str, Any]:
    import httpx

    from tests.e2e.test_oauth_e2e import _signed

    with httpx.Client(timeout=15) as c:
        r = c.send(
            _signed(
                world.server.base_url,
                world.key,
                "/sdk/oauth/connect/session",
                {"allowed_providers": ["peer"], "allowed_origin": allowed_origin},
            )
        )
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _run_popup(
    world: World, opener_origin: str, allowed_origin: str
) -> tuple[Page, list[str]]:
    session = _session(world, allowed_origin)
    widget_url = f"{world.server.base_url}/sdk/oauth/connect#session={session['session_token']}"
    violations: list[str] = []
    pw = await async_playwright().start()
    browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(opener_origin)
    async with page.expect_popup() as popup_info:
        await page.evaluate(
            "url => { window.open(url, 'connect', 'width=500,height=700'); }", widget_url
        )
    popup = await popup_info.value

    def on_console(msg: Any) -> None:
        if "Content Security Policy" in msg.text:
            violations.append(msg.text)

    popup.on("console", on_console)
    await popup.get_by_role("button", name="Continue to peer").click()
    # The peer logs in the default user and consents by itself; then the vault's result page
    # posts to the opener and closes the popup.
    if not popup.is_closed():
        await popup.wait_for_event("close", timeout=20_000)
    page.context_holder = (pw, browser)  # type: ignore[attr-defined]
    return page, violations


async def _close(page: Page) -> None:
    pw, browser = page.context_holder  # type: ignore[attr-defined]
    await browser.close()
    await pw.stop()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_popup_posts_the_result_to_the_allowed_origin(
    world: World, app_origins: tuple[str, str]
) -> None:
    allowed, _ = app_origins
    page, violations = await _run_popup(world, allowed, allowed)
    try:
        await page.wait_for_function("window.received.length > 0", timeout=10_000)
        received = await page.evaluate("window.received")
        (message,) = received
        assert message["origin"] == world.server.base_url
        assert message["data"]["type"] == "alter_connect_success"
        (grant,) = message["data"]["grants"]
        assert grant["provider"] == "peer" and grant["account_identifier"]
        assert violations == []
    finally:
        await _close(page)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_foreign_opener_receives_nothing(
    world: World, app_origins: tuple[str, str]
) -> None:
    allowed, foreign = app_origins
    page, _ = await _run_popup(world, foreign, allowed)
    try:
        await page.wait_for_timeout(1500)
        assert await page.evaluate("window.received") == []
    finally:
        await _close(page)
