"""The SDK (async ``App`` and sync ``SyncApp``) against a real ``grantvault serve``.

Every credential shape reaches a local endpoint that reports what arrived; every exception
class the server can produce today is raised from a real server answer.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from grantvault import (
    AmbiguousGrantError,
    App,
    BackendError,
    BlockedDestinationError,
    ConnectConfigError,
    CredentialIdRequiredError,
    GrantExpiredError,
    GrantNotFoundError,
    GrantRevokedError,
    HttpMethod,
    InvalidKeyError,
    KeyExpiredError,
    KeyRevokedError,
    KeyRotationExpiredError,
    NetworkError,
    ProviderAPIError,
    ProviderUnauthorizedError,
    ScopeReauthRequiredError,
    SyncApp,
    SystemPrincipal,
    TimeoutError,
)
from grantvault.protocol.key_format import mint_key
from tests.sdk.conftest import Echo, Vault, call

pytestmark = pytest.mark.e2e

# name: (secrets create args, credential on stdin, headers expected, query expected)
SHAPES: dict[str, tuple[list[str], str, dict[str, str], dict[str, str]]] = {
    "bearer": (["--auth", "bearer"], "tok-bearer-1234", {"Authorization": "Bearer tok-bearer-1234"}, {}),
    "custom-header": (
        ["--auth", "header", "--header", "X-Api-Key", "--format", "Key {token}"],
        "tok-header-1234",
        {"X-Api-Key": "Key tok-header-1234"},
        {},
    ),
    "query": (
        ["--auth", "query", "--query-param", "api_key", "--header", "X-Api-Key", "--format", "{token}"],
        "tok-query-1234",
        {},
        {"api_key": "tok-query-1234"},
    ),
    "basic": (
        ["--auth", "basic"],
        json.dumps({"username": "ACuser", "password": "pw-basic-1234"}),
        {"Authorization": "Basic " + base64.b64encode(b"ACuser:pw-basic-1234").decode()},
        {},
    ),
    "additional": (
        ["--auth", "header", "--header", "X-Api-Key", "--format", "{token}",
         "--field", "token", "--field", "app_key",
         "--inject", "header:X-App-Key=app_key", "--inject", "query:team=token"],
        json.dumps({"token": "tok-main-1234", "app_key": "app-key-5678"}),
        {"X-Api-Key": "tok-main-1234", "X-App-Key": "app-key-5678"},
        {"team": "tok-main-1234"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_every_credential_shape_reaches_the_provider(
    vault_server: Vault, app_key: tuple[str, str], client: App | SyncApp, echo: Echo, shape: str
) -> None:
    args, credential, headers, query = SHAPES[shape]
    grant_id = vault_server.make_grant(app_key[0], credential, *args, host=echo.host)
    response = await call(
        client.request(
            HttpMethod.POST,
            f"{echo.url}/v1/items/{{item}}",
            grant_id=grant_id,
            path_params={"item": "a b/c"},
            query_params={"page": "2"},
            json={"n": 1},
            extra_headers={"X-Trace": "t-1"},
        )
    )
    assert response.status_code == 200
    seen = response.json()
    assert seen == echo.last()
    assert seen["path"] == "/v1/items/a%20b%2Fc"
    for name, value in headers.items():
        assert seen["headers"].get(name) == value, (name, seen["headers"])
    assert seen["query"] == {"page": "2", **query}
    assert seen["headers"]["X-Trace"] == "t-1"
    assert json.loads(base64.b64decode(seen["body"])) == {"n": 1}
    # The vault key never reaches a provider.
    assert app_key[1] not in json.dumps(seen)
    assert "x-api-key" not in {k.lower() for k in seen["headers"]} or shape != "bearer"


async def test_sigv4_matches_botocore(
    vault_server: Vault, app_key: tuple[str, str], client: App | SyncApp, echo: Echo
) -> None:
    creds = {
        "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "session_token": "session-token-example",
    }
    grant_id = vault_server.make_grant(
        app_key[0], json.dumps(creds), "--auth", "sigv4", "--aws-region", "eu-west-1",
        "--aws-service", "execute-api", host=echo.host,
    )  # fmt: skip
    response = await call(
        client.request(
            "POST",
            f"{echo.url}/prod/items",
            grant_id=grant_id,
            query_params={"b": "2 3", "a": "1"},
            json={"hello": "world"},
        )
    )
    assert response.status_code == 200
    seen = echo.last()
    lower = {k.lower(): v for k, v in seen["headers"].items()}
    auth = lower["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/execute-api/aws4_request" in auth
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    request = AWSRequest(
        method="POST",
        url=f"{echo.url}{seen['raw_path']}",
        data=base64.b64decode(seen["body"]),
        headers={h: lower[h] for h in signed},
    )
    request.context["timestamp"] = lower["x-amz-date"]
    signer = SigV4Auth(
        Credentials(creds["access_key_id"], creds["secret_access_key"], creds["session_token"]),
        "execute-api",
        "eu-west-1",
    )
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    assert auth.endswith(f"Signature={expected}")
    assert lower["x-amz-security-token"] == creds["session_token"]
    assert seen["query"] == {"a": "1", "b": "2 3"}


async def test_identity_mode_by_slug_and_ambiguity(
    vault_server: Vault, app_key: tuple[str, str], client: App | SyncApp, echo: Echo
) -> None:
    secret = vault_server.new_secret(
        app_key[0], "tok-slug-1234", "--auth", "bearer", host=echo.host
    )
    vault_server.grant(secret["managed_secret_id"], "--label", "first")
    response = await call(client.request("GET", f"{echo.url}/me", provider=secret["slug"]))
    assert echo.last()["headers"]["Authorization"] == "Bearer tok-slug-1234"
    assert response.status_code == 200
    second = vault_server.grant(secret["managed_secret_id"], "--label", "second")
    with pytest.raises(AmbiguousGrantError) as info:
        await call(client.request("GET", f"{echo.url}/me", provider=secret["slug"]))
    assert second in info.value.grant_ids
    assert {c.label for c in info.value.candidates} == {"first", "second"}
    await call(client.request("GET", f"{echo.url}/me", provider=secret["slug"], label="second"))


async def test_grant_errors_from_the_server(
    vault_server: Vault, app_key: tuple[str, str], client: App | SyncApp, echo: Echo
) -> None:
    grant_id = vault_server.make_grant(
        app_key[0], "tok-errs-1234", "--auth", "bearer", host=echo.host
    )
    with pytest.raises(BlockedDestinationError) as blocked:
        await call(client.request("GET", "https://api.github.com/user", grant_id=grant_id))
    assert blocked.value.status_code == 422 and blocked.value.request_id
    with pytest.raises(GrantNotFoundError):
        await call(client.request("GET", f"{echo.url}/x", grant_id=str(uuid.uuid4())))
    with pytest.raises(GrantNotFoundError):
        await call(client.request("GET", f"{echo.url}/x", provider="no-such-slug"))
    revoked = await call(client.revoke_grant(grant_id, reason="e2e"))
    assert revoked.success and revoked.grant_id == grant_id
    with pytest.raises(GrantRevokedError) as info:
        await call(client.request("GET", f"{echo.url}/x", grant_id=grant_id))
    assert info.value.grant_id == grant_id and info.value.code == "grant_revoked"
    with pytest.raises(BackendError) as idp:
        await call(client.request("GET", f"{echo.url}/x", grant_id=grant_id, user_token="jwt"))
    assert idp.value.code == "idp_not_configured" and idp.value.status_code == 400


async def test_grant_lifecycle_and_its_errors(
    vault_server: Vault, app_key: tuple[str, str], client: App | SyncApp, echo: Echo
) -> None:
    secret = vault_server.new_secret(
        app_key[0], "tok-life-1234", "--auth", "bearer", host=echo.host
    )
    secret_id = secret["managed_secret_id"]
    expires = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    created = await call(
        client.create_managed_secret_grant(
            secret_id,
            principal=SystemPrincipal(label="short"),
            grant_policy={"expires_at": expires},
        )
    )
    assert created.principal_type == "system" and created.label == "short"
    listed = await call(client.list_grants(provider_id=secret["slug"]))
    assert [g.grant_id for g in listed.grants] == [created.grant_id]
    assert listed.grants[0].grant_kind == "managed_secret"
    await call(client.request("GET", f"{echo.url}/ok", grant_id=created.grant_id))
    time.sleep(2.2)
    with pytest.raises(GrantExpiredError):
        await call(client.request("GET", f"{echo.url}/late", grant_id=created.grant_id))
    with pytest.raises(ConnectConfigError):  # 404 secret_not_found, as alter-sdk maps it
        await call(
            client.create_managed_secret_grant(str(uuid.uuid4()), principal=SystemPrincipal())
        )
    vault_server.cli("secrets", "set-credential", secret_id, "--stdin", "--add", "--label", "two",
                     stdin="tok-life-5678")  # fmt: skip
    with pytest.raises(CredentialIdRequiredError) as several:
        await call(client.create_managed_secret_grant(secret_id, principal=SystemPrincipal()))
    assert {c.label for c in several.value.credentials} >= {"two"}
    chosen = several.value.credentials[0].credential_id
    again = await call(
        client.create_managed_secret_grant(
            secret_id, principal=SystemPrincipal(), credential_id=chosen
        )
    )
    assert again.credential_id == chosen


async def test_provider_errors_and_scope_drift(
    vault_server: Vault, app_key: tuple[str, str], client: App | SyncApp, echo: Echo
) -> None:
    grant_id = vault_server.make_grant(
        app_key[0], "tok-prov-1234", "--auth", "bearer", host=echo.host
    )
    with pytest.raises(ScopeReauthRequiredError) as scope:
        await call(client.request("GET", f"{echo.url}/status/403-scope", grant_id=grant_id))
    assert scope.value.missing_scopes == ["repo", "admin:org"]
    assert scope.value.grant_id == grant_id and scope.value.status_code == 403
    with pytest.raises(ProviderUnauthorizedError):
        await call(client.request("GET", f"{echo.url}/status/401", grant_id=grant_id))
    with pytest.raises(ProviderAPIError) as server_error:
        await call(client.request("GET", f"{echo.url}/status/500", grant_id=grant_id))
    assert type(server_error.value) is ProviderAPIError and server_error.value.status_code == 500


def test_transport_errors(vault_server: Vault, app_key: tuple[str, str], echo: Echo) -> None:
    grant_id = vault_server.make_grant(
        app_key[0], "tok-net-1234", "--auth", "bearer", host=echo.host
    )
    with (
        SyncApp(app_key[1], base_url=vault_server.base_url, timeout=0.5) as app,
        pytest.raises(TimeoutError),
    ):
        app.request("GET", f"{echo.url}/slow", grant_id=grant_id)
    with (
        SyncApp(app_key[1], base_url="http://127.0.0.1:9") as nowhere,
        pytest.raises(NetworkError) as info,
    ):
        nowhere.list_grants()
    assert type(info.value) is NetworkError


async def test_key_errors(vault_server: Vault) -> None:
    name, key = vault_server.new_app()
    async with App(mint_key("rk"), base_url=vault_server.base_url) as stranger:
        with pytest.raises(InvalidKeyError) as invalid:
            await stranger.list_grants()
    assert invalid.value.status_code == 401 and invalid.value.code == "invalid_key"
    key_id = vault_server.cli_json("keys", "list", "--app", name)["keys"][0]["key_id"]
    rotated = vault_server.cli_json("keys", "rotate", key_id, "--app", name, "--overlap", "0s")
    with (
        SyncApp(key, base_url=vault_server.base_url) as old,
        pytest.raises(KeyRotationExpiredError),
    ):
        old.list_grants()
    new_key = rotated["api_key"]
    new_id = next(
        k["key_id"]
        for k in vault_server.cli_json("keys", "list", "--app", name)["keys"]
        if new_key.startswith(k["key_prefix"])
    )
    async with App(new_key, base_url=vault_server.base_url) as app:
        assert (await app.list_grants()).total == 0
        vault_server.cli("keys", "expire", new_id, "--app", name, "--in", "0s")
        with pytest.raises(KeyExpiredError):
            await app.list_grants()
    third_name, third = vault_server.new_app()
    third_id = vault_server.cli_json("keys", "list", "--app", third_name)["keys"][0]["key_id"]
    vault_server.cli("keys", "revoke", third_id, "--app", third_name)
    with SyncApp(third, base_url=vault_server.base_url) as revoked, pytest.raises(KeyRevokedError):
        revoked.list_grants()


async def test_audit_rows_are_stored_without_credentials(
    vault_server: Vault, app_key: tuple[str, str], echo: Echo
) -> None:
    grant_id = vault_server.make_grant(
        app_key[0], "tok-audit-9876", "--auth", "bearer", host=echo.host
    )
    async with App(app_key[1], base_url=vault_server.base_url, caller="nightly") as app:
        await app.request(
            "GET", f"{echo.url}/report", grant_id=grant_id, reason="nightly run",
            context={"run_id": "r-42"},
        )  # fmt: skip
    with SyncApp(app_key[1], base_url=vault_server.base_url, caller="sync-job") as sync_app:
        sync_app.request("GET", f"{echo.url}/report", grant_id=grant_id)
    events: list[dict[str, Any]] = vault_server.cli_json(
        "audit", "list", "--app", app_key[0], "--grant", grant_id
    )["events"]
    calls = [e for e in events if e["event"] == "provider.api_call"]
    assert {c["actor"]["caller"] for c in calls} == {"nightly", "sync-job"}
    assert any(c["actor"].get("context", {}).get("run_id") == "r-42" for c in calls)
    assert "tok-audit-9876" not in json.dumps(events)
