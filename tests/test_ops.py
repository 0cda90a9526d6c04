"""Operations endpoints, the OpenAPI document, and log redaction."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import httpx
import pytest

from grantvault_server.config import Settings
from grantvault_server.observability import JsonFormatter, redact
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Database
from tests.conftest import SignedClient, make_app


async def test_health_ready_and_metrics(vault: Vault, client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "database": "ok",
        "barrier": "unsealed",
    }
    _, key = await make_app(vault)
    await SignedClient(client, key).post("/sdk/grants/list", {"limit": 1, "offset": 0})
    await SignedClient(client, "alter_rk_aaaaaaaaaaaaaaaaaaaaaa_" + "a" * 6).post(
        "/sdk/grants/list", {}
    )
    text = (await client.get("/metrics")).text
    assert (
        'grantvault_http_requests_total{method="POST",route="/sdk/grants/list",status="200"} 1.0'
        in text
    )
    assert "grantvault_http_request_duration_seconds_bucket" in text
    assert 'grantvault_denials_total{code="invalid_key"}' in text


async def test_database_down_fails_closed(
    vault: Vault, client: httpx.AsyncClient, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = await make_app(vault)
    dead_url = (
        "sqlite:////nonexistent-dir/grantvault.db"
        if backend == "sqlite"
        else "postgresql+asyncpg://postgres@127.0.0.1:1/grantvault"
    )
    dead = Database(dead_url)
    monkeypatch.setattr(vault, "db", dead)
    try:
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["database"] == "unavailable"
        r = await SignedClient(client, key).post("/sdk/grants/list", {"limit": 1, "offset": 0})
        assert r.status_code == 503 and r.json()["error"] == "storage_unavailable"
        assert r.headers["retry-after"] == "5"
    finally:
        await dead.dispose()


async def test_openapi_documents_the_protocol(vault: Vault, client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in (
        "/sdk/token",
        "/sdk/grants/list",
        "/sdk/oauth/grants/{grant_id}/revoke",
        "/sdk/managed-secrets/{managed_secret_id}/grants",
        "/sdk/oauth/audit/api-call",
    ):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert {"TokenResponse", "TokenBody", "RequestTarget"} <= set(schemas)
    body = spec["paths"]["/sdk/token"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert body == {"$ref": "#/components/schemas/TokenBody"}
    assert schemas["TokenBody"]["properties"]["request"] == {
        "$ref": "#/components/schemas/RequestTarget"
    }


def test_log_lines_are_json_and_redacted() -> None:
    record = logging.makeLogRecord(
        {
            "name": "x",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "calling with Authorization: Bearer sk-live-abcdef123456 and alter_rk_abcdefghijklmnopqrstuv_abcdef",
            "grant_id": "g1",
        }
    )
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert data["grant_id"] == "g1" and data["level"] == "info"
    assert "sk-live-abcdef123456" not in line and "alter_rk_abcdefghijklmnopqrstuv" not in line
    assert redact("api_key=supersecretvalue&x=1") == "api_key= [redacted]&x=1"


async def test_access_log_lines_name_the_route_not_the_raw_path(
    vault: Vault, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    _, key = await make_app(vault)
    with caplog.at_level(logging.INFO, logger="grantvault.access"):
        await SignedClient(client, key).post("/sdk/oauth/grants/some-grant/revoke?token=leak", {})
    [record] = [r for r in caplog.records if r.name == "grantvault.access"]
    assert record.route == "/sdk/oauth/grants/{grant_id}/revoke"  # type: ignore[attr-defined]
    assert record.status == 404 and "leak" not in JsonFormatter().format(record)  # type: ignore[attr-defined]


def test_every_setting_is_documented() -> None:
    """docs/operations.md is the operator's reference: a setting that is not in it does not
    exist for them. The README's table links there and must name only real settings."""
    root = Path(__file__).resolve().parents[1]
    operations = (root / "docs" / "operations.md").read_text()
    readme = (root / "README.md").read_text()
    names = {f"GRANTVAULT_{field.upper()}" for field in Settings.model_fields}
    missing = sorted(n for n in names if n not in operations)
    assert not missing, f"settings missing from docs/operations.md: {missing}"
    mentioned = set(re.findall(r"`(GRANTVAULT_[A-Z_]+)`", readme))
    # Not server settings: the test suite's database, and the CLI's remote target.
    others = {"GRANTVAULT_TEST_PG_URL", "GRANTVAULT_SERVER", "GRANTVAULT_TOKEN"}
    unknown = sorted(mentioned - names - others)
    assert not unknown, f"README names settings that do not exist: {unknown}"
