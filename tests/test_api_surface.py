"""The HTTP surface around the served routes: no redirect built from the Host header, the
public client's unserved routes answer 501 (not a 404 the client reads as a missing grant),
405 lists the allowed methods, and the client's scope-mismatch report flags the grant."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from grantvault.protocol.signing import sign_request
from grantvault.types.errors import STATUS_BY_CODE, ErrorCode
from grantvault_server.api.unimplemented import UNSERVED
from grantvault_server.app import create_app
from grantvault_server.audit.events import AuditEvent
from grantvault_server.cli.main import cli
from grantvault_server.config import Settings
from grantvault_server.services import grants as grant_service, secrets as secret_service
from grantvault_server.services.apps import App
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import audit_events, grants, oauth_providers
from tests.conftest import OPERATOR, SignedClient, make_app


def _concrete(path: str) -> str:
    """A template path with every parameter filled in."""
    for name in ("approval_id", "grant_id", "agent_id", "key_id", "provider_id"):
        path = path.replace("{" + name + "}", str(uuid.uuid4()))
    return "/sdk" + path.replace("{kind}", "oauth")


async def _signed(
    client: httpx.AsyncClient, key: str, method: str, path: str, body: bytes = b""
) -> httpx.Response:
    headers = sign_request(key, method=method, target=path, body=body)
    headers["x-api-key"] = key
    if body:
        headers["Content-Type"] = "application/json"
    return await client.request(method, path, content=body, headers=headers)


async def _secret_grant(vault: Vault, app: App) -> str:
    secret = await secret_service.create_secret(vault, app, OPERATOR, template="openai")
    await secret_service.set_credential(vault, app, secret, {"token": "sk-test-1234567"}, OPERATOR)
    result = await grant_service.create_grant(vault, app, secret, OPERATOR, principal_type="system")
    return str(result["grant_id"])


# --- item 9: no absolute URL from the Host header --------------------------------------------


async def test_trailing_slash_is_not_redirected_to_the_host_header(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    _, key = await make_app(vault)
    body = b'{"grant_id":"6c005cee-24b7-4b1a-a58a-6700d8471692","request":{"method":"GET","url":"https://api.openai.com/"}}'
    for path in ("/sdk/token/", "/sdk/grants/list/", "/healthz/"):
        headers = sign_request(key, method="POST", target=path, body=body)
        headers |= {"x-api-key": key, "Host": "evil.example"}
        r = await client.post(path, content=body, headers=headers)
        # Formerly 307 to http://evil.example/sdk/token, re-sending body and x-api-key.
        assert r.status_code in (404, 405), (path, r.status_code)
        assert "location" not in r.headers
        assert "evil.example" not in r.text


def test_no_code_builds_urls_from_the_request() -> None:
    """Absolute URLs come from GRANTVAULT_PUBLIC_BASE_URL only (a grep, kept as a test)."""
    root = Path(__file__).resolve().parent.parent / "packages" / "server" / "src"
    offenders = []
    for source in root.rglob("*.py"):
        text = source.read_text()
        for needle in ("request.base_url", "request.url_for", ".url_for(", "request.url)"):
            if needle in text:
                offenders.append(f"{source.name}: {needle}")
        if 'headers.get("host"' in text.lower() or "headers['host']" in text.lower():
            offenders.append(f"{source.name}: Host header")
    assert offenders == []


# --- item 11: 501 for the client's routes this vault does not serve ---------------------------


def test_not_implemented_is_a_501_code() -> None:
    assert STATUS_BY_CODE[ErrorCode.NOT_IMPLEMENTED] == 501


async def test_unserved_routes_answer_501_after_authentication(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    _, key = await make_app(vault)
    for entry in UNSERVED:
        path = _concrete(entry.path)
        body = b"{}" if entry.method in ("POST", "PATCH") else b""
        r = await _signed(client, key, entry.method, path, body)
        assert r.status_code == 501, (entry, r.status_code, r.text)
        assert r.json()["error"] == "not_implemented"
        assert entry.feature in r.json()["message"]
        # Unauthenticated: the same 401 any served route gives, nothing about the feature.
        r = await client.request(entry.method, path, content=body)
        assert r.status_code == 401 and r.json()["error"] == "invalid_key", entry
        assert entry.feature not in r.text
    # A replayed request is refused like on any served route.
    headers = sign_request(key, method="GET", target="/sdk/scopes", body=b"")
    headers["x-api-key"] = key
    assert (await client.get("/sdk/scopes", headers=headers)).status_code == 501
    r = await client.get("/sdk/scopes", headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "replayed_request"


async def test_paths_the_client_calls_are_covered() -> None:
    """Every path the client builds (alter-sdk 0.29.0) is served or answers 501."""
    app = create_app(Settings(master_key="A" * 43 + "=", database_url="sqlite://"))  # type: ignore[arg-type]
    document = app.openapi()["paths"]
    served = {(method.upper(), path) for path, ops in document.items() for method in ops}
    client_calls = [
        ("POST", "/sdk/proxy"),
        ("GET", "/sdk/approvals/{approval_id}"),
        ("GET", "/sdk/approvals/{approval_id}/result"),
        ("POST", "/sdk/grants/{grant_id}/mint"),
        ("POST", "/sdk/grants/{grant_id}/delegate"),
        ("DELETE", "/sdk/grants/{grant_id}/delegations/{agent_id}"),
        ("POST", "/sdk/grants/{grant_id}/report-scope-mismatch"),
        ("POST", "/sdk/managed-secrets/connect/session"),
        ("POST", "/sdk/identity/resolve"),
        ("POST", "/sdk/identity/assert"),
        ("POST", "/sdk/agents"),
        ("GET", "/sdk/agents"),
        ("GET", "/sdk/agents/{agent_id}"),
        ("PATCH", "/sdk/agents/{agent_id}"),
        ("DELETE", "/sdk/agents/{agent_id}"),
        ("POST", "/sdk/agents/{agent_id}/keys"),
        ("GET", "/sdk/agents/{agent_id}/keys"),
        ("PATCH", "/sdk/agents/{agent_id}/keys/{key_id}/deprecate"),
        ("PATCH", "/sdk/agents/{agent_id}/keys/{key_id}/undeprecate"),
        ("DELETE", "/sdk/agents/{agent_id}/keys/{key_id}"),
        ("POST", "/sdk/keys/derive"),
        ("POST", "/sdk/keys/{key_id}/rotate"),
        ("DELETE", "/sdk/keys/{key_id}"),
        ("GET", "/sdk/scopes"),
        ("GET", "/sdk/provider-specs"),
        ("GET", "/sdk/provider-specs/{kind}/{provider_id}"),
        ("GET", "/sdk/provider-specs/{kind}/{provider_id}/operations"),
        ("GET", "/sdk/provider-specs/{kind}/{provider_id}/operation"),
        ("POST", "/sdk/spans"),
    ]
    assert [c for c in client_calls if c not in served] == []


# --- item 14 (part): 405 names every allowed method -------------------------------------------


async def test_method_not_allowed_carries_allow(vault: Vault, client: httpx.AsyncClient) -> None:
    for method, path, allow in (
        ("GET", "/sdk/token", "POST"),
        ("PUT", "/sdk/agents", "GET, POST"),
        ("POST", f"/sdk/agents/{uuid.uuid4()}", "DELETE, GET, PATCH"),
        ("DELETE", "/sdk/grants/list", "POST"),
    ):
        r = await client.request(method, path)
        assert r.status_code == 405 and r.json()["error"] == "method_not_allowed", path
        assert r.headers["allow"] == allow, path


# --- item 11: report-scope-mismatch -----------------------------------------------------------

REPORT = {
    "provider_status_code": 403,
    "provider_error_code": "insufficient_scope",
    "missing_scopes": ["repo", "read:org"],
    "raw_www_authenticate": 'Bearer error="insufficient_scope", scope="repo read:org"',
    "api_endpoint": "https://api.github.com/repos/acme/secret-project/issues?token=abc",
    "detection_source": "www_authenticate_rfc6750",
    "sdk_correlation_id": "corr-1",
}


async def _oauth_grant(vault: Vault, app: App, scopes: list[str]) -> str:
    """An OAuth grant row as a finished Connect flow leaves it (tokens are not needed here)."""
    now = datetime.now(UTC)
    provider_row, grant_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with vault.db.write() as conn:
        await conn.execute(
            sa.insert(oauth_providers).values(
                id=provider_row,
                app_id=app.id,
                provider_id="github",
                client_id="client",
                default_scopes=["read:user"],
                created_at=now,
                updated_at=now,
            )
        )
        await conn.execute(
            sa.insert(grants).values(
                id=grant_id,
                app_id=app.id,
                kind="oauth",
                oauth_provider_id=provider_row,
                scopes=scopes,
                principal_type="system",
                status="active",
                created_at=now,
            )
        )
    return grant_id


async def _listed(signed: SignedClient, grant_id: str) -> dict[str, Any]:
    r = await signed.post("/sdk/grants/list", {})
    assert r.status_code == 200, r.text
    return next(g for g in r.json()["grants"] if g["grant_id"] == grant_id)


async def test_report_scope_mismatch_flags_the_grant(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    signed = SignedClient(client, key)
    grant_id = await _oauth_grant(vault, app, ["read:user"])
    assert (await _listed(signed, grant_id))["scope_mismatch"] is False

    r = await signed.post(f"/sdk/grants/{grant_id}/report-scope-mismatch", REPORT)
    assert r.status_code == 204 and r.content == b""
    assert (await _listed(signed, grant_id))["scope_mismatch"] is True

    async with vault.db.read() as conn:
        row = (await conn.execute(sa.select(grants).where(grants.c.id == grant_id))).one()
        event = (
            await conn.execute(
                sa.select(audit_events).where(
                    audit_events.c.event == AuditEvent.GRANT_SCOPE_MISMATCH_REPORTED.value
                )
            )
        ).one()
    assert row.scope_mismatch_at is not None
    assert row.scope_mismatch["missing_scopes"] == ["repo", "read:org"]
    # Only host and first path segment of the provider URL are kept.
    assert row.scope_mismatch["api_endpoint"] == "api.github.com/repos"
    assert "secret-project" not in json.dumps(event.details) and "abc" not in str(event.details)
    assert event.grant_id == grant_id

    # Reconnected with the missing scopes: the flag clears by itself.
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(grants)
            .where(grants.c.id == grant_id)
            .values(scopes=["read:user", "repo", "read:org"])
        )
    assert (await _listed(signed, grant_id))["scope_mismatch"] is False


async def test_report_scope_mismatch_is_tenant_scoped_and_bounded(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    app, key = await make_app(vault)
    other, _ = await make_app(vault)
    theirs = await _secret_grant(vault, other)
    signed = SignedClient(client, key)
    for grant_id in (theirs, str(uuid.uuid4()), "not a uuid"):
        r = await signed.post(f"/sdk/grants/{grant_id}/report-scope-mismatch", REPORT)
        assert r.status_code == 404 and r.json()["error"] == "grant_not_found", grant_id
    ours = await _secret_grant(vault, app)
    path = f"/sdk/grants/{ours}/report-scope-mismatch"
    for bad in (
        {**REPORT, "missing_scopes": ["s"] * 51},
        {**REPORT, "missing_scopes": ["s" * 257]},
        {**REPORT, "raw_www_authenticate": "x" * 4097},
        {**REPORT, "provider_status_code": True},
        {**REPORT, "provider_status_code": 42},
        {**REPORT, "provider_error_code": "a\x00b"},
    ):
        r = await signed.post(path, bad)
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", bad
    # Unknown keys from a newer client are ignored, not refused (the report must land).
    r = await signed.post(path, {**REPORT, "missing_scopes": None, "new_field": 1})
    assert r.status_code == 204
    # Unsigned: 401 like any /sdk route.
    r = await client.post(path, json=REPORT)
    assert r.status_code == 401
    async with vault.db.read() as conn:
        theirs_row = (await conn.execute(sa.select(grants).where(grants.c.id == theirs))).one()
    assert theirs_row.scope_mismatch_at is None


async def test_grants_list_cli_shows_the_flag(
    vault: Vault,
    client: httpx.AsyncClient,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, key = await make_app(vault)
    grant_id = await _secret_grant(vault, app)
    r = await SignedClient(client, key).post(
        f"/sdk/grants/{grant_id}/report-scope-mismatch", REPORT
    )
    assert r.status_code == 204
    monkeypatch.setenv("GRANTVAULT_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("GRANTVAULT_MASTER_KEY", settings.master_key.get_secret_value())  # type: ignore[union-attr]
    monkeypatch.setenv("GRANTVAULT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("COLUMNS", "400")  # the table is not cut to a narrow terminal
    runner = CliRunner()

    def invoke(*args: str) -> str:
        result = runner.invoke(cli, ["grants", "list", "--app", app.name, *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    listed = json.loads(await asyncio.to_thread(invoke, "--json"))
    item = next(g for g in listed["grants"] if g["grant_id"] == grant_id)
    assert item["scope_mismatch"] is True and item["scope_mismatch_at"]
    table = await asyncio.to_thread(invoke)
    assert "scope mismatch" in table and item["scope_mismatch_at"][:10] in table


async def test_token_answer_carries_a_standing_scope_mismatch(
    vault: Vault, client: httpx.AsyncClient
) -> None:
    """The retrieval answer's ``scope_mismatch`` is the grant's standing report, so an app can
    ask the user to reconnect before the provider refuses the call."""
    app, key = await make_app(vault)
    signed = SignedClient(client, key)
    grant_id = await _secret_grant(vault, app)
    body = {
        "grant_id": grant_id,
        "request": {"method": "GET", "url": "https://api.openai.com/v1/models"},
    }
    before = await signed.post("/sdk/token", body)
    assert before.status_code == 200, before.text
    assert before.json()["scope_mismatch"] is False

    r = await signed.post(f"/sdk/grants/{grant_id}/report-scope-mismatch", REPORT)
    assert r.status_code == 204
    after = await signed.post("/sdk/token", body)
    assert after.status_code == 200, after.text
    assert after.json()["scope_mismatch"] is True
