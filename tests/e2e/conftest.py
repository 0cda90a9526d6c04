"""A real ``grantvault serve`` process (SQLite and PostgreSQL), the CLI, and an echo endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import new_master_key


def wait_ready(
    base_url: str,
    proc: subprocess.Popen[Any],
    *,
    describe: Callable[[], str] = str,
    timeout: float = 30,
) -> None:
    """Wait until ``/readyz`` answers 200; fail with the server's output if it dies or hangs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"server did not start:\n{describe()}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    base_url: str
    env: dict[str, str]
    data_dir: Path
    log: Path

    def cli(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "grantvault_server", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"grantvault {' '.join(args)} failed ({proc.returncode}): {proc.stderr}"
            )
        return proc

    def cli_json(self, *args: str, stdin: str | None = None) -> dict[str, Any]:
        out = self.cli(*args, "--json", stdin=stdin).stdout
        data: dict[str, Any] = json.loads(out)
        return data


def server_env(
    tmp_path: Path, database_url: str, backend: str, port: int, **extra: str
) -> dict[str, str]:
    """The environment of a ``grantvault serve`` on ``port`` (and of its CLI)."""
    env = {
        **os.environ,
        "GRANTVAULT_DATA_DIR": str(tmp_path / "data"),
        "GRANTVAULT_PORT": str(port),
        "GRANTVAULT_ALLOW_HTTP_HOSTS": '["127.0.0.1"]',
        "GRANTVAULT_LOG_LEVEL": "INFO",
    }
    env.pop("GRANTVAULT_DATABASE_URL", None)
    env.pop("GRANTVAULT_MASTER_KEY", None)
    env.pop("GRANTVAULT_PUBLIC_BASE_URL", None)
    if backend == "postgresql":
        # Production shape: explicit database and master key, schema migrated by `db upgrade`.
        env["GRANTVAULT_DATABASE_URL"] = database_url
        env["GRANTVAULT_MASTER_KEY"] = new_master_key()
    env.update(extra)
    return env


@contextlib.contextmanager
def running_server(env: dict[str, str], log: Path, *, migrate: bool) -> Iterator[Server]:
    """Start ``grantvault serve`` with ``env``; stop it (SIGTERM) when the block ends."""
    srv = Server(
        f"http://127.0.0.1:{env['GRANTVAULT_PORT']}", env, Path(env["GRANTVAULT_DATA_DIR"]), log
    )
    if migrate:
        srv.cli("db", "upgrade")
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "grantvault_server", "serve"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(srv.base_url, proc, describe=log.read_text)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def server(tmp_path: Path, database_url: str, backend: str) -> Iterator[Server]:
    env = server_env(tmp_path, database_url, backend, free_port())
    with running_server(env, tmp_path / "server.log", migrate=backend == "postgresql") as srv:
        yield srv


@dataclass
class Echo:
    """A local HTTP endpoint that records what reached it (headers, path, query, body)."""

    port: int
    seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host_rule(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def echo() -> Iterator[Echo]:
    port = free_port()
    state = Echo(port)

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            state.seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": body,
                }
            )
            payload = json.dumps({"ok": True}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = _record

        def log_message(self, *_args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
