"""Fixtures for the SDK tests: a real ``grantvault serve`` per backend, an operator CLI, a
local provider endpoint that shows what reached it, and both SDK clients.

The server is started once per test module and backend (SQLite and PostgreSQL); tests make
their own apps, so they do not see each other's data. The operator CLI runs in-process
(Typer's runner, in a worker thread because commands call ``asyncio.run``): the same
commands as ``grantvault ...`` without paying a Python start-up per command.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from grantvault import App, SyncApp
from tests.conftest import _asyncpg_url, new_master_key
from tests.e2e.conftest import (
    create_pg_database,
    drop_pg_database,
    free_port,
    run_cli,
    wait_ready,
)


@dataclass
class Vault:
    """A running ``grantvault serve`` and the operator commands that set it up."""

    base_url: str
    env: dict[str, str]
    log: Path
    backend: str

    def cli(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """Run ``grantvault <args>`` in-process; return stdout (fail the test on error)."""
        result = run_cli(list(args), self.env, stdin)
        if check and result.returncode != 0:
            raise AssertionError(
                f"grantvault {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr or result.stdout}"
            )
        return str(result.stdout)

    def cli_json(self, *args: str, stdin: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.cli(*args, "--json", stdin=stdin))
        return data

    def new_app(self) -> tuple[str, str]:
        """A fresh app and an API key for it: ``(app name, api key)``."""
        name = f"sdk-{uuid.uuid4().hex[:8]}"
        self.cli_json("apps", "create", name)
        return name, str(self.cli_json("keys", "create", "--app", name)["api_key"])

    def new_secret(self, app: str, credential: str, *create_args: str, host: str) -> dict[str, Any]:
        slug = f"s-{uuid.uuid4().hex[:8]}"
        secret = self.cli_json(
            "secrets", "create", "--app", app, "--slug", slug, *create_args, "--allowed-host", host
        )
        self.cli(
            "secrets", "set-credential", secret["managed_secret_id"], "--stdin", stdin=credential
        )
        secret["slug"] = slug
        return secret

    def grant(self, secret_id: str, *args: str) -> str:
        grant = self.cli_json("grants", "create", "--secret", secret_id, *args)
        return str(grant["grant_id"])

    def make_grant(self, app: str, credential: str, *create_args: str, host: str) -> str:
        """A managed secret with ``credential`` and a system grant on it; the grant id."""
        secret = self.new_secret(app, credential, *create_args, host=host)
        return self.grant(secret["managed_secret_id"])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def vault_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Vault]:
    """One real server per module and backend."""
    backend = str(request.param)
    tmp = tmp_path_factory.mktemp(f"vault-{backend}")
    port = free_port()
    env = {
        **os.environ,
        "GRANTVAULT_DATA_DIR": str(tmp / "data"),
        "GRANTVAULT_PORT": str(port),
        "GRANTVAULT_ALLOW_HTTP_HOSTS": '["127.0.0.1"]',
        "GRANTVAULT_LOG_LEVEL": "WARNING",
    }
    env.pop("GRANTVAULT_DATABASE_URL", None)
    env.pop("GRANTVAULT_MASTER_KEY", None)
    database: str | None = None
    if backend == "postgresql":
        template = request.getfixturevalue("pg_template")
        database = create_pg_database(template, "gv_sdk")
        env["GRANTVAULT_DATABASE_URL"] = _asyncpg_url(database)
        env["GRANTVAULT_MASTER_KEY"] = new_master_key()
    log = tmp / "server.log"
    vault = Vault(f"http://127.0.0.1:{port}", env, log, backend)
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "grantvault_server", "serve"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(vault.base_url, proc, describe=log.read_text)
        yield vault
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if database is not None:
            drop_pg_database(database)


@dataclass
class Echo:
    """A local "provider": answers with what reached it (and records it).

    ``/status/<code>`` answers that status; ``/status/403-scope`` adds an RFC 6750
    ``insufficient_scope`` challenge; ``/slow`` waits two seconds.
    """

    port: int
    seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def last(self) -> dict[str, Any]:
        return self.seen[-1]


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    state = Echo(free_port())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            record = {
                "method": self.command,
                "path": parts.path,
                "raw_path": self.path,
                "query": {k: v[0] for k, v in parse_qs(parts.query).items()},
                "headers": dict(self.headers.items()),
                "body": base64.b64encode(body).decode(),
            }
            state.seen.append(record)
            status, extra = 200, {}
            if parts.path.startswith("/status/"):
                code = parts.path.removeprefix("/status/")
                if code == "403-scope":
                    status = 403
                    extra["WWW-Authenticate"] = (
                        'Bearer realm="echo", error="insufficient_scope", scope="repo admin:org"'
                    )
                else:
                    status = int(code)
            if parts.path == "/slow":
                time.sleep(2)
            payload = json.dumps(record).encode()
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                # /slow outlives the client's timeout on purpose: the client has gone.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

        def log_message(self, *_args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def app_key(vault_server: Vault) -> tuple[str, str]:
    """A fresh app on the shared server: ``(name, api key)``."""
    return vault_server.new_app()


@pytest.fixture(params=["async", "sync"])
async def client(
    request: pytest.FixtureRequest, vault_server: Vault, app_key: tuple[str, str]
) -> AsyncIterator[App | SyncApp]:
    """The async ``App`` and the sync ``SyncApp`` on the same app, in turn."""
    if request.param == "async":
        async with App(app_key[1], base_url=vault_server.base_url) as app:
            yield app
    else:
        with SyncApp(app_key[1], base_url=vault_server.base_url) as sync_app:
            yield sync_app


async def call(result: Any) -> Any:
    """Await a result when it is awaitable (lets one test body drive both clients)."""
    if hasattr(result, "__await__"):
        return await result
    return result
