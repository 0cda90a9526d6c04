"""Shared fixtures: a vault on SQLite *and* PostgreSQL for every storage test.

PostgreSQL is not optional: when it cannot be reached the tests fail, they do not skip.
Point ``GRANTVAULT_TEST_PG_URL`` at an admin connection (default: the local server,
user ``postgres``, trust auth); every test gets a fresh database cloned from a migrated
template and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from grantvault.protocol.signing import sign_request
from grantvault_server.app import create_app
from grantvault_server.config import Settings
from grantvault_server.services import apps as app_service
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import FakeClock

from .peer import Peer, start_peer

PG_ADMIN_URL = os.environ.get(
    "GRANTVAULT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", "postgresql"]

# pytest-xdist workers start with COLUMNS=80 in their environment, and a rich console (the
# CLI's) fixes its width from COLUMNS when it is built; a serial run has none. Keep the two
# alike: the CLI is imported by tests only, after this.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)

OPERATOR = {"type": "operator", "via": "test", "user": "pytest"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backend(name): storage backend of the test")


async def _pg_admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is required for the storage tests and is unreachable at {PG_ADMIN_URL} "
            f"({type(exc).__name__}). Start it or set GRANTVAULT_TEST_PG_URL.",
            pytrace=False,
        )


def _asyncpg_url(db: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{db}"


def _run_in_thread(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to completion on a private loop (safe inside a running loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database, created once per session (per xdist worker: each worker
    is its own session, and every test clones its own database from it)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"gv_tpl_{worker}_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        admin = await _pg_admin()
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        from grantvault_server.storage import migrate
        from grantvault_server.storage.db import Database

        db = Database(_asyncpg_url(name))
        try:
            await migrate.upgrade(db)
        finally:
            await db.dispose()

    async def drop() -> None:
        admin = await _pg_admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    _run_in_thread(create())
    yield name
    _run_in_thread(drop())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(backend: str, tmp_path: Path, pg_template: str) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'grantvault.db'}"
        return
    template = pg_template
    name = f"gv_t_{uuid.uuid4().hex[:12]}"
    admin = await _pg_admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    yield _asyncpg_url(name)
    admin = await _pg_admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def new_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def master_key() -> str:
    return new_master_key()


@pytest.fixture
def settings(tmp_path: Path, database_url: str, master_key: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        master_key=master_key,  # type: ignore[arg-type]
        allow_http_hosts=["127.0.0.1"],
        log_format="console",
    )


@pytest.fixture
async def vault(settings: Settings) -> AsyncIterator[Vault]:
    v = await Vault.start(settings, migrate_schema=True)
    try:
        yield v
    finally:
        await v.close()


@pytest.fixture
def clock(vault: Vault) -> FakeClock:
    """The vault's clock, replaced by one the test moves (``clock.advance(6)``) instead of
    sleeping. Only the vault's view of time moves: a real peer keeps its own clock."""
    fake = FakeClock()
    vault.clock = fake
    return fake


@pytest.fixture
async def client(vault: Vault) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(vault=vault)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


class SignedClient:
    """Signs requests the way the SDK does; lets tests tamper with any part."""

    def __init__(self, client: httpx.AsyncClient, api_key: str) -> None:
        self.client = client
        self.api_key = api_key

    def headers(self, method: str, target: str, body: bytes, **kw: Any) -> dict[str, str]:
        headers = sign_request(self.api_key, method=method, target=target, body=body, **kw)
        headers["x-api-key"] = self.api_key
        headers["Content-Type"] = "application/json"
        return headers

    async def post(self, path: str, payload: Any, **kw: Any) -> httpx.Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return await self.client.post(
            path, content=body, headers=self.headers("POST", path, body, **kw)
        )


#: The password of operators made by the tests (long, not common, without the name).
OPERATOR_PASSWORD = "correct-stapler-orbit-47"


async def token_for(vault: Vault, name: str, role: str, apps: list[str] | None = None) -> str:
    """A new operator ``name`` with ``role`` (and app limit), and a personal token of theirs."""
    from grantvault_server.services import operators

    await operators.create_operator(
        vault, name, role, actor=OPERATOR, password=OPERATOR_PASSWORD, apps=apps
    )
    _, token = await operators.create_token(vault, name, "test", actor=OPERATOR)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def admin(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The in-process app, for admin API calls (``headers=bearer(token)``)."""
    return client


async def make_app(vault: Vault, name: str | None = None) -> tuple[app_service.App, str]:
    """An app and a fresh API key for it."""
    app = await app_service.register_app(vault, name or f"app-{uuid.uuid4().hex[:8]}", OPERATOR)
    _, key = await app_service.create_key(vault, app, OPERATOR)
    return app, key


@pytest.fixture(scope="session")
def oauth_peer() -> Iterator[Peer]:
    """One real OIDC peer for the session (5-second access tokens, rotation on refresh).

    Tests that disable users or rotate keys should start their own with ``start_peer``
    (or reset this one) so they do not disturb others.
    """
    peer = start_peer(PEER_ACCESS_TOKEN_TTL=5)
    try:
        yield peer
    finally:
        peer.stop()
