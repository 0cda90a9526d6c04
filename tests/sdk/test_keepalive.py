"""The idle keep-alive race (issue 9, item 15).

A server closes an idle keep-alive connection just as the client sends a request on it: the
request reaches a socket nobody reads and the client sees "Server disconnected without
sending a response". The SDK resends such a request once, signed afresh (a new nonce), for
every call but grant creation; and ``grantvault serve`` keeps idle connections open longer
than the clients' pools do, so the client closes first.

The server here is a real TCP server that plays the race deterministically: it reads the
first request in full and closes the connection without a byte of answer.
"""

from __future__ import annotations

import gc
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import grantvault as gv
from grantvault import App, SyncApp
from grantvault.protocol.key_format import mint_key
from grantvault.protocol.signing import HEADER_NONCE
from tests.e2e.conftest import free_port

GRANT = "0b6f7c1e-8a7d-4a4e-9b52-5d3f8f7f2a11"
SECRET = "5c0e6f55-3a7b-4a39-9a55-1f1d2c3b4a5e"
REVOKED = {"success": True, "message": "revoked", "grant_id": GRANT, "revoked_at": "2026-01-01"}


@dataclass
class DroppingServer:
    """Answers every request with ``answer``, except the first ``drops`` requests, whose
    connection it closes once the request has arrived in full."""

    answer: dict[str, Any]
    drops: int = 1
    seen: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    def handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while True:
                request_line = reader.readline()
                if not request_line:
                    return
                headers: dict[str, str] = {}
                while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                reader.read(int(headers.get("content-length", "0")))
                self.seen.append(headers)
                if self.drops > 0:
                    self.drops -= 1
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                body = json.dumps(self.answer).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )


@pytest.fixture
def dropping() -> Iterator[DroppingServer]:
    state = DroppingServer(REVOKED)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    state.port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=state.handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield state
    finally:
        listener.close()


def _url(server: DroppingServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def test_async_client_resends_an_unanswered_request_once_with_a_fresh_nonce(
    dropping: DroppingServer,
) -> None:
    # Revoking changes state, so the retry policy never repeats it (max_retries is moot);
    # the resend happens anyway, because the server never read the first attempt.
    async with App(mint_key(), base_url=_url(dropping), max_retries=0) as vault:
        result = await vault.revoke_grant(GRANT)
    assert result.grant_id == GRANT
    nonces = [h[HEADER_NONCE.lower()] for h in dropping.seen]
    assert len(nonces) == 2 and nonces[0] != nonces[1]


def test_sync_client_resends_too(dropping: DroppingServer) -> None:
    with SyncApp(mint_key(), base_url=_url(dropping), max_retries=0) as vault:
        assert vault.revoke_grant(GRANT).grant_id == GRANT
    assert len(dropping.seen) == 2


async def test_only_once(dropping: DroppingServer) -> None:
    dropping.drops = 2
    async with App(mint_key(), base_url=_url(dropping), max_retries=0) as vault:
        with pytest.raises(gv.NetworkError):
            await vault.revoke_grant(GRANT)
    assert len(dropping.seen) == 2


async def test_grant_creation_is_not_resent(dropping: DroppingServer) -> None:
    """A server that died after committing would also close without an answer; a resent
    grant creation would then create a second grant, so that one call is left to the
    caller."""
    async with App(mint_key(), base_url=_url(dropping), max_retries=0) as vault:
        with pytest.raises(gv.NetworkError):
            await vault.create_managed_secret_grant(
                SECRET, principal=gv.SystemPrincipal(), grant_policy=None
            )
    assert len(dropping.seen) == 1


def test_serve_keeps_idle_connections_longer_than_client_pools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from grantvault._constants import POOL_KEEPALIVE_EXPIRY
    from grantvault_server.cli.main import cli
    from grantvault_server.config import Settings

    captured: list[uvicorn.Config] = []

    async def fake_serve(self: uvicorn.Server, sockets: Any = None) -> None:
        captured.append(self.config)

    monkeypatch.setattr(uvicorn.Server, "serve", fake_serve)
    # serve's process-wide tuning must not leak into the test process.
    monkeypatch.setattr("grantvault_server.observability.configure_logging", lambda *_: None)
    monkeypatch.setattr(gc, "freeze", lambda: None)
    monkeypatch.setattr(gc, "set_threshold", lambda *_: None)
    default = Settings().keep_alive_seconds
    assert default > POOL_KEEPALIVE_EXPIRY and default > 5  # our SDK and alter-sdk: 30 s
    env = {"GRANTVAULT_DATA_DIR": str(tmp_path / "data"), "GRANTVAULT_PORT": str(free_port())}
    for extra, expected in (({}, default), ({"GRANTVAULT_KEEP_ALIVE_SECONDS": "42"}, 42)):
        result = CliRunner().invoke(cli, ["serve"], env={**env, **extra})
        assert captured, result.output
        assert captured[-1].timeout_keep_alive == expected
