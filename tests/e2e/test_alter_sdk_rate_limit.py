"""The unmodified public ``alter-sdk`` client meets the vault's rate limit (issue 9, item 3).

A real ``grantvault serve`` with a per-key budget of 4 requests a minute: the client must
raise ``RateLimitError`` with the scope, limit, window and wait the vault sent, and fill
``last_rate_limit`` from the budget headers of every answer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alter_sdk import App
from alter_sdk.exceptions import RateLimitError

from tests.e2e.conftest import Echo, Server, free_port, running_server, server_env
from tests.e2e.test_alter_sdk import make_grant

pytestmark = pytest.mark.e2e


@pytest.fixture
def limited_server(tmp_path: Path, database_url: str, backend: str) -> Iterator[Server]:
    env = server_env(
        tmp_path,
        database_url,
        backend,
        free_port(),
        GRANTVAULT_RATE_LIMIT_PER_KEY="4",
        GRANTVAULT_RATE_LIMIT_PER_APP="1000",
    )
    with running_server(env, tmp_path / "server.log", migrate=backend == "postgresql") as srv:
        yield srv


async def test_alter_sdk_raises_rate_limit_error_and_reads_the_budget(
    limited_server: Server, echo: Echo, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = limited_server
    app = f"limits-{uuid.uuid4().hex[:6]}"
    server.cli_json("apps", "create", app)
    api_key = server.cli_json("keys", "create", "--app", app)["api_key"]
    grant_id = make_grant(
        server,
        app,
        "tok-limit-123456",
        "--slug",
        "s-limit",
        "--auth",
        "bearer",
        "--allowed-host",
        echo.host_rule,
    )
    monkeypatch.setenv("ALTER_BASE_URL", server.base_url)
    async with App(api_key=api_key) as vault:
        first = await vault.request("GET", f"{echo.url}/v1/ping", grant_id=grant_id)
        assert first.status_code == 200
        budget = vault.last_rate_limit
        assert budget is not None and budget.limit == 4 and 0 <= budget.remaining <= 3
        assert budget.reset_at > datetime.now(UTC)
        # Each call spends the key's budget (the client's post-call audit report too).
        with pytest.raises(RateLimitError) as caught:
            for _ in range(6):
                await vault.request("GET", f"{echo.url}/v1/ping", grant_id=grant_id)
        error = caught.value
        assert error.scope == "api_key"
        assert error.limit == 4 and error.window_seconds == 60
        assert error.retry_after is not None and 1 <= error.retry_after <= 15
        after = vault.last_rate_limit
        assert after is not None and after.limit == 4 and after.remaining == 0
        assert after.reset_at.timestamp() <= time.time() + 61
