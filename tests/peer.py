"""Start the real OpenID Connect peer (``tests/oauth_peer``, panva's oidc-provider) from tests.

The peer is a Node process; ``scripts/bootstrap`` installs it with ``npm ci`` from its
address-free lockfile. When Node or the installed peer is missing the tests *fail* with a
message saying what to run: the OAuth and identity suites are the proof that Grantvault
works with a real provider, so they never skip.

Login at the peer is browserless: a test plays the browser with an ``httpx`` cookie jar and
follows ``Location`` headers (see ``follow_to``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

PEER_DIR = Path(__file__).parent / "oauth_peer"

# The vault in in-process tests says it lives here; nothing listens on it: tests carry the
# peer's redirect back to the ASGI app themselves.
VAULT_BASE_URL = "http://127.0.0.1:8765"
DEFAULT_REDIRECT_URIS = (
    f"{VAULT_BASE_URL}/sdk/oauth/callback",
    f"{VAULT_BASE_URL}/sdk/auth/callback",
)

BASIC_CLIENT = ("vault-basic", "vault-basic-secret-0123456789abcdef")
POST_CLIENT = ("vault-post", "vault-post-secret-0123456789abcdef")


@dataclass
class Peer:
    """A running peer: its issuer (use it verbatim, host included) and its process."""

    issuer: str
    port: int
    proc: subprocess.Popen[str]
    ready: dict[str, Any]
    log: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def admin(self, path: str) -> httpx.Response:
        """Call a test-only admin route (``/__peer/...``)."""
        r = httpx.post(f"{self.issuer}/__peer/{path.lstrip('/')}", timeout=10)
        r.raise_for_status()
        return r

    def introspect(self, token: str, client: tuple[str, str] = BASIC_CLIENT) -> dict[str, Any]:
        r = httpx.post(
            f"{self.issuer}/token/introspection",
            data={"token": token},
            auth=client,
            timeout=10,
        )
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def log_events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Parsed stderr log lines, optionally only those whose ``event`` is ``kind``."""
        out = []
        for line in list(self.log):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if kind is None or entry.get("event") == kind:
                out.append(entry)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for thread in self.threads:
            thread.join(timeout=2)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def start_peer(**env: str | int) -> Peer:
    """Start a peer on a free port; ``env`` adds ``PEER_*`` settings (see its README)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "Node.js 20.18+ is required for the OAuth tests (the real OIDC peer runs on it).",
            pytrace=False,
        )
    if not (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(
            "The OAuth test peer is not installed: run scripts/bootstrap "
            "(or `npm ci` in tests/oauth_peer).",
            pytrace=False,
        )
    full_env = {
        **os.environ,
        "PEER_PORT": "0",
        "PEER_REDIRECT_URIS": " ".join(DEFAULT_REDIRECT_URIS),
    }
    full_env.update({k: str(v) for k, v in env.items()})
    proc = subprocess.Popen(
        [node, "--no-warnings", "peer.mjs"],
        cwd=PEER_DIR,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read()
        pytest.fail(f"OAuth peer exited with {proc.wait()}: {err[-2000:]}", pytrace=False)
    ready = json.loads(line)
    peer = Peer(issuer=ready["issuer"], port=ready["port"], proc=proc, ready=ready)

    def drain(stream: Any, sink: list[str]) -> None:
        for raw in stream:
            sink.append(raw.rstrip("\n"))

    for stream in (proc.stderr, proc.stdout):
        thread = threading.Thread(target=drain, args=(stream, peer.log), daemon=True)
        thread.start()
        peer.threads.append(thread)
    return peer


def follow_to(url: str, stop_prefix: str, browser: httpx.Client | None = None) -> str:
    """Play the browser at the peer: follow redirects until one points at ``stop_prefix``.

    Returns that final URL (the vault's callback with ``code``/``state``/``iss``, or an
    error). ``browser`` keeps cookies between calls; a new one is a fresh browser session.
    """
    own = browser is None
    browser = browser or httpx.Client(timeout=10)
    try:
        for _ in range(12):
            if url.startswith(stop_prefix):
                return url
            r = browser.get(url, follow_redirects=False)
            if r.status_code not in (302, 303):
                raise AssertionError(f"peer answered {r.status_code} at {url}: {r.text[:500]}")
            url = urljoin(url, r.headers["location"])
        raise AssertionError("too many redirects at the peer")
    finally:
        if own:
            browser.close()


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
