"""The unmodified public ``alter-sdk`` client against a real ``grantvault serve`` process.

Set-up goes through the CLI exactly as the README shows; the client then retrieves each
credential shape and calls a local endpoint, which records what arrived.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alter_sdk import App
from alter_sdk.exceptions import (
    BlockedDestinationError,
    GrantNotFoundError,
    GrantRevokedError,
    InvalidKeyError,
    KeyRevokedError,
)
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from grantvault.protocol.key_format import mint_key
from tests.e2e.conftest import Echo, Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(module_server: Server) -> Server:
    """One server per backend for this module: every test makes its own app."""
    return module_server


@pytest.fixture
def app_key(server: Server) -> tuple[str, str]:
    name = f"demo-{uuid.uuid4().hex[:6]}"
    assert server.cli_json("apps", "create", name)["name"] == name
    key = server.cli_json("keys", "create", "--app", name)
    assert key["api_key"].startswith("alter_rk_")
    return name, key["api_key"]


@pytest.fixture
async def vault(
    server: Server, app_key: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    monkeypatch.setenv("ALTER_BASE_URL", server.base_url)
    async with App(api_key=app_key[1]) as client:
        yield client


def make_grant(server: Server, app: str, credential: str, *create_args: str) -> str:
    secret = server.cli_json("secrets", "create", "--app", app, *create_args)
    server.cli(
        "secrets", "set-credential", secret["managed_secret_id"], "--stdin", stdin=credential
    )
    grant = server.cli_json(
        "grants", "create", "--secret", secret["managed_secret_id"], "--principal", "system"
    )
    return str(grant["grant_id"])


SHAPES: dict[str, tuple[list[str], str, dict[str, str], str]] = {
    # name: (secrets create args, credential on stdin, expected headers, expected query fragment)
    "bearer": (
        ["--auth", "bearer"],
        "tok-bearer-123456",
        {"Authorization": "Bearer tok-bearer-123456"},
        "",
    ),
    "custom-header": (
        ["--auth", "header", "--header", "X-Api-Key", "--format", "Key {token}"],
        "tok-header-123456",
        {"X-Api-Key": "Key tok-header-123456"},
        "",
    ),
    "query": (
        [
            "--auth",
            "query",
            "--query-param",
            "api_key",
            "--header",
            "X-Api-Key",
            "--format",
            "{token}",
        ],
        "tok-query-123456",
        {},
        "api_key=tok-query-123456",
    ),
    "basic": (
        ["--auth", "basic"],
        json.dumps({"username": "ACuser", "password": "pw-basic-123456"}),
        {"Authorization": "Basic " + base64.b64encode(b"ACuser:pw-basic-123456").decode()},
        "",
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_credential_shapes_reach_the_endpoint(
    server: Server, app_key: tuple[str, str], vault: App, echo: Echo, shape: str
) -> None:
    args, credential, headers, query = SHAPES[shape]
    grant_id = make_grant(
        server,
        app_key[0],
        credential,
        "--slug",
        f"s-{shape}",
        *args,
        "--allowed-host",
        echo.host_rule,
    )
    response = await vault.request("POST", f"{echo.url}/v1/items", grant_id=grant_id, json={"n": 1})
    assert response.status_code == 200
    seen = echo.seen[-1]
    for name, value in headers.items():
        assert seen["headers"].get(name) == value, (name, seen["headers"])
    assert query in seen["path"]
    assert json.loads(seen["body"]) == {"n": 1}
    assert "x-api-key" not in {k.lower() for k in seen["headers"]} or shape in {
        "custom-header",
        "query",
    }


async def test_sigv4_signature_matches_botocore(
    server: Server, app_key: tuple[str, str], vault: App, echo: Echo
) -> None:
    creds = {
        "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "session_token": "session-token-example",
    }
    grant_id = make_grant(
        server, app_key[0], json.dumps(creds), "--slug", "aws-local", "--auth", "sigv4",
        "--aws-region", "eu-west-1", "--aws-service", "execute-api", "--allowed-host", echo.host_rule,
    )  # fmt: skip
    url = f"{echo.url}/prod/items?b=2&a=1"
    response = await vault.request("POST", url, grant_id=grant_id, json={"hello": "world"})
    assert response.status_code == 200
    seen = echo.seen[-1]
    auth = seen["headers"]["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/execute-api/aws4_request" in auth
    signed_headers = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    lower = {k.lower(): v for k, v in seen["headers"].items()}
    # Rebuild the request botocore would sign, with exactly the headers the client signed.
    request = AWSRequest(
        method="POST",
        url=f"{echo.url}{seen['path']}",
        data=seen["body"],
        headers={h: lower[h] for h in signed_headers},
    )
    request.context["timestamp"] = lower["x-amz-date"]
    signer = SigV4Auth(
        Credentials(creds["access_key_id"], creds["secret_access_key"], creds["session_token"]),
        "execute-api",
        "eu-west-1",
    )
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    assert auth.endswith(f"Signature={expected}")
    assert lower["x-amz-security-token"] == creds["session_token"]


async def test_typed_errors_from_real_answers(
    server: Server,
    app_key: tuple[str, str],
    vault: App,
    echo: Echo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grant_id = make_grant(
        server,
        app_key[0],
        "tok-errors-123456",
        "--slug",
        "errs",
        "--auth",
        "bearer",
        "--allowed-host",
        echo.host_rule,
    )
    with pytest.raises(BlockedDestinationError):
        await vault.request("GET", "https://api.github.com/user", grant_id=grant_id)
    with pytest.raises(GrantNotFoundError):
        await vault.request("GET", f"{echo.url}/x", grant_id=str(uuid.uuid4()))
    server.cli("grants", "revoke", grant_id, "--reason", "test")
    with pytest.raises(GrantRevokedError):
        await vault.request("GET", f"{echo.url}/x", grant_id=grant_id)
    async with App(api_key=mint_key("rk")) as stranger:
        with pytest.raises(InvalidKeyError):
            await stranger.list_grants()


async def test_revoked_key_and_sdk_grant_calls(
    server: Server, app_key: tuple[str, str], vault: App, echo: Echo
) -> None:
    from alter_sdk import SystemPrincipal

    secret = server.cli_json("secrets", "create", "--app", app_key[0], "--template", "openai")
    server.cli(
        "secrets", "set-credential", secret["managed_secret_id"], "--stdin", stdin="sk-e2e-123456"
    )
    created = await vault.create_managed_secret_grant(
        secret["managed_secret_id"],
        principal=SystemPrincipal(label="ci"),
        grant_policy={"max_ttl_seconds": 3600},
    )
    listed = await vault.list_grants()
    assert created.grant_id in {g.grant_id for g in listed.grants}
    revoked = await vault.revoke_grant(created.grant_id, reason="done")
    assert revoked.success is True
    keys = server.cli_json("keys", "list", "--app", app_key[0])["keys"]
    server.cli("keys", "revoke", keys[0]["key_id"], "--app", app_key[0])
    with pytest.raises(KeyRevokedError):
        await vault.list_grants()


async def test_post_call_audit_rows_are_stored(
    server: Server, app_key: tuple[str, str], monkeypatch: pytest.MonkeyPatch, echo: Echo
) -> None:
    grant_id = make_grant(
        server,
        app_key[0],
        "tok-audit-123456",
        "--slug",
        "aud",
        "--auth",
        "bearer",
        "--allowed-host",
        echo.host_rule,
    )
    monkeypatch.setenv("ALTER_BASE_URL", server.base_url)
    async with App(api_key=app_key[1], caller="nightly-report") as client:
        await client.request(
            "GET",
            f"{echo.url}/v1/report?token=QueryTokenValue77",
            grant_id=grant_id,
            reason="nightly",
        )
    events: list[dict[str, Any]] = server.cli_json(
        "audit", "list", "--app", app_key[0], "--grant", grant_id
    )["events"]
    kinds = {e["event"]: e for e in events}
    assert {"credential.retrieved", "provider.api_call"} <= set(kinds)
    call = kinds["provider.api_call"]
    assert call["actor"]["caller"] == "nightly-report"
    assert "QueryTokenValue77" not in json.dumps(call) and "tok-audit-123456" not in json.dumps(
        events
    )
    assert server.cli("audit", "verify", "--app", app_key[0]).returncode == 0
    # The server's own log never contains the credential.
    assert "tok-audit-123456" not in server.log.read_text()
