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
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from tests.conftest import PG_ADMIN_URL, _asyncpg_url, _run_in_thread, new_master_key

_CLI_LOCK = threading.Lock()
_CLI_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gv-cli")


def run_cli(
    args: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``grantvault <args>`` in this process with ``env`` as its environment.

    The same commands as the ``grantvault`` executable (Typer's runner) without paying a
    Python start-up (about 1.7 s) per command. One at a time, in a worker thread: commands
    call ``asyncio.run`` and read ``os.environ``. ``GRANTVAULT_*`` variables that ``env``
    does not name are unset for the call. (tests/e2e/test_readme.py runs the real executable.)
    """
    from grantvault_server.cli.main import cli

    unset: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith("GRANTVAULT_") and k not in env
    }

    def invoke() -> Any:
        return CliRunner().invoke(cli, args, input=stdin, env={**env, **unset})

    with _CLI_LOCK:
        result = _CLI_POOL.submit(invoke).result(timeout=120)
    stderr = result.stderr
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess(
        ["grantvault", *args], result.exit_code, result.stdout, stderr
    )


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
        proc = run_cli(list(args), self.env, stdin)
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


async def expire_access_token(server: Server, grant_id: str) -> None:
    """Make the server treat the grant's stored access token as expired (it refreshes at its
    next use) without waiting for real time to pass: a ``serve`` process has its own clock.

    The peer still accepts the old token until its own expiry; the refresh does not care.
    """
    from datetime import timedelta

    import sqlalchemy as sa

    from grantvault_server.services.vault_time import utcnow
    from grantvault_server.storage.db import Database
    from grantvault_server.storage.tables import oauth_tokens

    url = server.env.get("GRANTVAULT_DATABASE_URL") or f"sqlite:///{server.data_dir}/grantvault.db"
    db = Database(url)
    try:
        async with db.write() as conn:
            await conn.execute(
                sa.update(oauth_tokens)
                .where(oauth_tokens.c.grant_id == grant_id)
                .values(access_expires_at=utcnow() - timedelta(seconds=1))
            )
    finally:
        await db.dispose()


@pytest.fixture
def server(tmp_path: Path, database_url: str, backend: str) -> Iterator[Server]:
    env = server_env(tmp_path, database_url, backend, free_port())
    with running_server(env, tmp_path / "server.log", migrate=backend == "postgresql") as srv:
        yield srv


def create_pg_database(template: str, prefix: str = "gv_e2e") -> str:
    """A fresh PostgreSQL database cloned from the migrated ``template``; its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            await admin.close()

    _run_in_thread(create())
    return name


def drop_pg_database(name: str) -> None:
    async def drop() -> None:
        admin = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    _run_in_thread(drop())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One real server per test module and backend, for modules whose tests each make their
    own app (a server start is a Python start-up: seconds, paid once instead of per test)."""
    backend = str(request.param)
    tmp = tmp_path_factory.mktemp(f"server-{backend}")
    database: str | None = None
    url = ""
    if backend == "postgresql":
        database = create_pg_database(request.getfixturevalue("pg_template"))
        url = _asyncpg_url(database)
    try:
        env = server_env(tmp, url, backend, free_port())
        with running_server(env, tmp / "server.log", migrate=False) as srv:
            yield srv
    finally:
        if database is not None:
            drop_pg_database(database)


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
