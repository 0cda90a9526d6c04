"""The client's protocol logic against ``httpx.MockTransport``: configuration, validation
before I/O, signing, retries, the request() path and the post-call audit row."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest

import grantvault as gv
from grantvault import App, SyncApp
from grantvault._retry import RetryPolicy, parse_retry_after
from tests.sdk.fakes import (
    BASE_URL,
    FakeClock,
    FakeProvider,
    FakeVault,
    make_app,
    make_sync_app,
    new_uuid,
    token_answer,
)

GRANT = "0b6f7c1e-8a7d-4a4e-9b52-5d3f8f7f2a11"
LIST_OK = httpx.Response(200, json={"grants": [], "total": 0, "limit": 100, "offset": 0,
                                    "has_more": False})  # fmt: skip


# --- configuration -----------------------------------------------------------------------


def test_configuration_from_arguments_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GRANTVAULT_API_KEY", "ALTER_API_KEY", "GRANTVAULT_BASE_URL", "ALTER_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    key = FakeVault().api_key
    with pytest.raises(gv.AlterSDKError, match="GRANTVAULT_API_KEY"):
        SyncApp(base_url=BASE_URL)
    with pytest.raises(gv.AlterSDKError, match=r"GRANTVAULT_BASE_URL.*ALTER_BASE_URL"):
        SyncApp(key)
    monkeypatch.setenv("ALTER_API_KEY", key)
    monkeypatch.setenv("ALTER_BASE_URL", "http://localhost:9999/")
    with SyncApp() as app:
        assert app.base_url == "http://localhost:9999"
    monkeypatch.setenv("GRANTVAULT_BASE_URL", "https://vault.example.com")
    with SyncApp() as app:
        assert app.base_url == "https://vault.example.com"
    with SyncApp(base_url="http://127.0.0.1:1") as app:
        assert app.base_url == "http://127.0.0.1:1"
    with pytest.raises(gv.AlterSDKError, match="malformed"):
        SyncApp("alter_rk_not-a-key", base_url=BASE_URL)
    for bad in ("http://vault.example.com", "ftp://x", "https://u:p@x.example", "https://x/?q=1"):
        with pytest.raises(gv.AlterSDKError):
            SyncApp(key, base_url=bad)
    with pytest.raises(gv.AlterValueError):
        SyncApp(key, base_url=BASE_URL, caller_type="robot")
    with pytest.raises(gv.AlterValueError):
        SyncApp(key, base_url=BASE_URL, caller="bad\ncaller")
    with pytest.raises(gv.AlterSDKError):
        SyncApp(key, base_url=BASE_URL, user_token_getter="not callable")  # type: ignore[arg-type]
    assert "key" not in repr(SyncApp(key, base_url=BASE_URL)).lower()


def test_migration_names_fail_with_guidance() -> None:
    for name, hint in (("AlterVault", "Use App"), ("AlterApp", "renamed to App"),
                       ("AlterAgent", "CallerType.AGENT")):  # fmt: skip
        with pytest.raises(ImportError, match=hint):
            getattr(gv, name)
    with pytest.raises(ImportError):
        __import__("grantvault", fromlist=["AlterVault"])
    with pytest.raises(AttributeError):
        _ = gv.NoSuchThing  # type: ignore[attr-defined]


# --- validation before any I/O -------------------------------------------------------------


class NoIO(httpx.MockTransport):
    def __init__(self) -> None:
        super().__init__(self.fail)

    @staticmethod
    def fail(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no request may be sent, got {request.method} {request.url}")


BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"url": "http://api.example.com/x", "grant_id": GRANT}, "https"),
    ({"url": "ftp://127.0.0.1/x", "grant_id": GRANT}, "https"),
    ({"url": "/relative", "grant_id": GRANT}, "absolute"),
    ({"url": "https://a.example/{id}", "grant_id": GRANT}, "path parameter"),
    ({"url": "https://a.example/{id}/{x}", "grant_id": GRANT, "path_params": {"id": "1"}}, "'x'"),
    ({"url": "https://a.example/x}", "grant_id": GRANT}, "path parameter"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "path_params": {"a-b": "1"}}, "identifiers"),
    ({"url": "https://a.example/x"}, "exactly one"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "provider": "github"}, "exactly one"),
    ({"url": "https://a.example/x", "grant_id": "not-a-uuid"}, "UUID"),
    ({"url": "https://a.example/x", "grant_id": GRANT.upper().replace("-", "")}, "UUID"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "json": {}, "body": b"x"}, "not both"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "json": {"n": float("nan")}}, "finite"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "body": "text"}, "bytes"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "extra_headers": {"Bad Name": "v"}}, "header name"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "extra_headers": {"X-A": "a\r\nb"}}, "single-line"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "context": {str(i): "v" for i in range(21)}}, "keys"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "context": {"k" * 65: "v"}}, "chars"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "context": {"k": "v" * 513}}, "512"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "context": {"k": 1}}, "strings"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "label": "work"}, "only valid with provider"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "caller": "x" * 256}, "255"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "user_token": ""}, "non-empty"),
    ({"url": "https://a.example/" + "x" * 70_000, "grant_id": GRANT}, "long"),
    ({"url": "https://a.example/x", "grant_id": GRANT, "method": "BREW"}, "method"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "match"), BAD_REQUESTS)
async def test_request_validation_happens_before_any_io(kwargs: dict[str, Any], match: str) -> None:
    vault = FakeVault()
    method = kwargs.pop("method", "GET")
    async with App(vault.api_key, base_url=BASE_URL, transport=NoIO(),
                   provider_transport=NoIO()) as app:  # fmt: skip
        with pytest.raises(gv.AlterValueError, match=match):
            await app.request(method, **kwargs)
    with SyncApp(vault.api_key, base_url=BASE_URL, transport=NoIO(),
                 provider_transport=NoIO()) as sync_app:  # fmt: skip
        kwargs.setdefault("url", "https://a.example/x")
        with pytest.raises(gv.AlterValueError, match=match):
            sync_app.request(method, **kwargs)


async def test_other_calls_validate_before_io() -> None:
    vault = FakeVault()
    async with App(vault.api_key, base_url=BASE_URL, transport=NoIO()) as app:
        with pytest.raises(gv.AlterValueError):
            await app.revoke_grant("123")
        with pytest.raises(gv.AlterValueError):
            await app.list_grants(limit=0)
        with pytest.raises(gv.AlterValueError):
            await app.list_grants(limit=True)  # type: ignore[arg-type]
        with pytest.raises(gv.AlterValueError):
            await app.create_managed_secret_grant(GRANT, principal={"type": "system"})  # type: ignore[arg-type]
        with pytest.raises(gv.AlterValueError, match="grant_policy"):
            await app.create_managed_secret_grant(
                GRANT, principal=gv.SystemPrincipal(), grant_policy={"maxTtlSeconds": 5}
            )
        with pytest.raises(gv.AlterValueError, match="direct"):
            await app.create_connect_session(allowed_providers=["a", "b"], direct=True)
        with pytest.raises(gv.AlterValueError):
            await app.create_connect_session(allowed_providers=[])
        with pytest.raises(gv.AlterValueError):
            await app.create_connect_session(switch_account="false")  # type: ignore[arg-type]
        with pytest.raises(gv.AlterValueError):
            await app.create_connect_session(metadata={"ip": "1.2.3.4"})
        with pytest.raises(gv.AlterValueError):
            await app.create_connect_session(allowed_providers=["x"], repair_grant_id="nope")
        with pytest.raises(gv.AlterValueError):
            await app.create_connect_session(scope_constraint=["two words"])
        with pytest.raises(gv.AlterValueError):
            await app.poll_connect_session("", timeout=1)
        with pytest.raises(gv.AlterValueError):
            await app.poll_connect_session("t", poll_interval=float("inf"))
        with pytest.raises(gv.AlterValueError):
            await app.poll_auth_session("t", timeout=0)
        assert await app.verify_user_token("   ") is None


# --- the request() path --------------------------------------------------------------------


async def test_request_signs_injects_and_audits() -> None:
    vault = FakeVault().on("/sdk/token", httpx.Response(200, json=token_answer(
        retry_info={"total_attempts": 2, "successful_attempt": 2,
                    "errors": [{"attempt": 1, "error": "503", "error_type": "transient_refresh",
                                "delay_s": 0.5}]})))  # fmt: skip
    provider = FakeProvider()
    async with make_app(vault, provider, caller="nightly") as app:
        response = await app.request(
            gv.HttpMethod.POST,
            "https://api.example.com/repos/{owner}/{repo}",
            grant_id=GRANT,
            path_params={"owner": "a b", "repo": "x/y"},
            query_params={"per_page": 5, "q": "a b", "flag": True},
            json={"name": "new"},
            extra_headers={"Authorization": "spoof", "X-Trace": "1"},
            reason="sync job",
            context={"run_id": "r1"},
        )
        assert response.status_code == 200
        assert response.retry_info.total_attempts == 2  # type: ignore[attr-defined]
        assert app.last_retry_info is not None
    sent = provider.seen[0]
    assert sent.url.raw_path.decode().split("?")[0] == "/repos/a%20b/x%2Fy"
    assert sent.url.query.decode() == "per_page=5&q=a%20b&flag=true"
    assert sent.headers["authorization"] == "Bearer tok-secret-value"
    assert sent.headers["x-trace"] == "1" and "x-api-key" not in sent.headers
    assert json.loads(sent.content) == {"name": "new"}
    token_call = vault.bodies("/sdk/token")[0]
    assert token_call == {
        "grant_id": GRANT,
        "reason": "sync job",
        "request": {"method": "POST", "url": str(sent.url)},
    }
    token_request = vault.calls[0][2]
    assert token_request.headers["x-alter-caller"] == "nightly"
    assert json.loads(token_request.headers["x-alter-context"]) == {"run_id": "r1"}
    assert (
        token_request.headers["x-alter-signature-v2"] == token_request.headers["x-alter-signature"]
    )
    (audit,) = vault.bodies("/sdk/oauth/audit/api-call")
    assert audit["grant_id"] == GRANT and audit["response_status"] == 200
    assert audit["request_headers"] == {"X-Trace": "1", "Content-Type": "application/json"}
    assert audit["request_body"] == {"name": "new"} and audit["context"] == {"run_id": "r1"}
    assert "tok-secret-value" not in json.dumps(audit)


async def test_audit_strips_credentials_and_bounds_bodies() -> None:
    vault = FakeVault().on("/sdk/token", httpx.Response(200, json=token_answer(
        injection_header="X-Api-Key", injection_format="{token}",
        additional_credentials={"app_key": "second-secret"},
        additional_injections=[{"target": "header", "key": "X-App-Key",
                                "value_source": "additional_credentials.app_key"},
                               {"target": "query_param", "key": "key", "value_source": "token"}],
    )))  # fmt: skip
    big = b"x" * 20_000
    provider = FakeProvider()
    provider.replies.append(httpx.Response(200, content=big, headers={"set-cookie": "s=1"}))
    with make_sync_app(vault, provider) as app:
        app.request("PUT", "https://api.example.com/blob", grant_id=GRANT, body=bytes(range(256)),
                    extra_headers={"Cookie": "c=1"})  # fmt: skip
    sent = provider.seen[0]
    assert sent.headers["x-api-key"] == "tok-secret-value"
    assert sent.headers["x-app-key"] == "second-secret"
    assert sent.url.params["key"] == "tok-secret-value"
    (audit,) = vault.bodies("/sdk/oauth/audit/api-call")
    assert {k.lower() for k in audit["request_headers"]} == set()
    assert audit["request_body"] == "<binary body: 256 bytes>"
    assert audit["response_body"] == "<body too large: 20000 bytes>"
    assert "set-cookie" not in {k.lower() for k in audit["response_headers"]}
    assert "second-secret" not in json.dumps(audit)
    assert "tok-secret-value" not in audit["url"]


async def test_identity_mode_sends_provider_and_the_user_token() -> None:
    vault = FakeVault().on("/sdk/token", httpx.Response(200, json=token_answer()))
    tokens = iter(["jwt-1", "jwt-2"])

    async def getter() -> str:
        return next(tokens)

    async with make_app(vault, user_token_getter=getter) as app:
        await app.request("GET", "https://api.example.com/a", provider="github", account="me@x",
                          label="work")  # fmt: skip
        await app.request("GET", "https://api.example.com/b", provider="github",
                          user_token="explicit", app_user_id="u-1")  # fmt: skip
    first, second = vault.bodies("/sdk/token")
    assert first["provider_id"] == "github" and first["user_token"] == "jwt-1"
    assert first["account"] == "me@x" and first["label"] == "work"
    assert second["user_token"] == "explicit" and second["app_user_id"] == "u-1"


async def test_user_token_getter_failures_are_sdk_errors() -> None:
    vault = FakeVault().on("/sdk/token", httpx.Response(200, json=token_answer()))

    def broken() -> str:
        raise RuntimeError("secret jwt in message")

    async with make_app(vault, user_token_getter=broken) as app:
        with pytest.raises(gv.AlterSDKError, match="user_token_getter failed") as info:
            await app.request("GET", "https://api.example.com/a", provider="github")
        assert info.value.__cause__ is None and info.value.__suppress_context__
        assert "secret jwt" not in str(info.value)
    async with make_app(vault, user_token_getter=lambda: 42) as app:
        with pytest.raises(gv.AlterSDKError, match="non-empty string"):
            await app.request("GET", "https://api.example.com/a", provider="github")

    async def async_getter() -> str:
        return "jwt"

    with (
        make_sync_app(vault, user_token_getter=async_getter) as sync_app,
        pytest.raises(gv.AlterSDKError, match="SyncApp"),
    ):
        sync_app.request("GET", "https://api.example.com/a", provider="github")


async def test_provider_transport_errors_are_audited_and_typed() -> None:
    vault = FakeVault().on("/sdk/token", httpx.Response(200, json=token_answer()))
    provider = FakeProvider()
    provider.replies.extend([httpx.ReadTimeout("slow"), httpx.ConnectError("refused")])
    async with make_app(vault, provider) as app:
        with pytest.raises(gv.TimeoutError):
            await app.request("GET", "https://api.example.com/a", grant_id=GRANT)
        with pytest.raises(gv.NetworkError):
            await app.request("GET", "https://api.example.com/a", grant_id=GRANT)
    audits = vault.bodies("/sdk/oauth/audit/api-call")
    assert [a["response_status"] for a in audits] == [0, 0]
    assert {a["response_body"] for a in audits} == {"<transport error: timeout>",
                                                    "<transport error: network>"}  # fmt: skip


async def test_scope_drift_raises_and_reports_in_the_background() -> None:
    report_path = f"/sdk/grants/{GRANT}/report-scope-mismatch"
    vault = (
        FakeVault()
        .on("/sdk/token", httpx.Response(200, json=token_answer()),
            httpx.Response(200, json=token_answer(scope_mismatch=True)))
        .on(report_path, httpx.Response(500, json={"error": "internal_error"}))
    )  # fmt: skip
    provider = FakeProvider()
    challenge = 'Bearer error="insufficient_scope", scope="repo read:org", error_description="x"'
    provider.replies.extend([
        httpx.Response(403, headers={"WWW-Authenticate": challenge}, json={"message": "no"}),
        httpx.Response(403, json={"message": "no"}),
        httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}),
        httpx.Response(404, text="missing"),
    ])  # fmt: skip
    async with make_app(vault, provider) as app:
        with pytest.raises(gv.ScopeReauthRequiredError) as drift:
            await app.request("GET", "https://api.example.com/a", grant_id=GRANT)
        with pytest.raises(gv.ScopeReauthRequiredError) as flagged:
            await app.request("GET", "https://api.example.com/a", grant_id=GRANT)
        with pytest.raises(gv.ProviderUnauthorizedError):
            await app.request("GET", "https://api.example.com/a", grant_id=GRANT)
        with pytest.raises(gv.ProviderAPIError) as other:
            await app.request("GET", "https://api.example.com/a", grant_id=GRANT)
    assert drift.value.missing_scopes == ["repo", "read:org"]
    assert drift.value.details["source"] == "provider_insufficient_scope"
    assert flagged.value.details["source"] == "backend_flag"
    assert other.value.status_code == 404 and other.value.response_body == "missing"
    (report,) = vault.bodies(report_path)  # sent once, its 500 swallowed
    assert report["missing_scopes"] == ["repo", "read:org"]
    assert report["detection_source"] == "www_authenticate_rfc6750"
    assert report["raw_www_authenticate"] == challenge


# --- retries -------------------------------------------------------------------------------


def test_retry_policy_backoff_and_retry_after() -> None:
    policy = RetryPolicy(max_retries=3, initial_delay=0.5, max_delay=4.0)
    rng = random.Random(1)
    for attempt in range(6):
        delay = policy.backoff(attempt, rng)
        assert 0 <= delay <= min(4.0, 0.5 * 2**attempt)
    headers = httpx.Headers({"Retry-After": "3"})
    assert policy.delay_for_status(0, 503, headers, idempotent=True) == 3.0
    assert policy.delay_for_status(0, 503, headers, idempotent=False) is None
    assert policy.delay_for_status(3, 503, headers, idempotent=True) is None
    assert policy.delay_for_status(0, 500, headers, idempotent=True) is None
    assert policy.delay_for_status(0, 404, headers, idempotent=True) is None
    long_wait = httpx.Headers({"Retry-After": "600"})
    assert policy.delay_for_status(0, 429, long_wait, idempotent=True) is None
    assert policy.delay_for_error(0, idempotent=True) is not None
    assert policy.delay_for_error(0, idempotent=False) is None
    assert parse_retry_after("007", cap=60) == 7
    assert parse_retry_after("+5", cap=60) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", cap=60) is None
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)


async def test_idempotent_calls_are_retried_and_resigned() -> None:
    vault = FakeVault().on(
        "/sdk/grants/list",
        httpx.Response(503, headers={"Retry-After": "2"}, json={"error": "storage_unavailable"}),
        httpx.ConnectError("reset"),
        LIST_OK,
    )
    async with make_app(vault) as app:
        result = await app.list_grants()
        assert result.total == 0
        clock = app._core.clock
        assert isinstance(clock, FakeClock)
        assert clock.sleeps[0] == 2.0 and len(clock.sleeps) == 2
    nonces = {req.headers["x-alter-nonce"] for path, _, req in vault.calls}
    assert len(vault.calls) == 3 and len(nonces) == 3  # each attempt signed afresh


async def test_token_retrieval_and_writes_are_never_retried() -> None:
    vault = (
        FakeVault()
        .on("/sdk/token", httpx.Response(503, headers={"Retry-After": "1"},
                                         json={"error": "audit_unavailable"}))
        .on(f"/sdk/oauth/grants/{GRANT}/revoke", httpx.ConnectError("down"))
        .on("/sdk/grants/list", httpx.Response(503, json={"error": "sealed"}))
    )  # fmt: skip
    async with make_app(vault, max_retries=2) as app:
        with pytest.raises(gv.BackendError) as info:
            await app.request("GET", "https://api.example.com/a", grant_id=GRANT)
        assert info.value.status_code == 503 and info.value.details["retry_after_seconds"] == 1
        with pytest.raises(gv.NetworkError):
            await app.revoke_grant(GRANT)
        with pytest.raises(gv.BackendError):
            await app.list_grants()
    assert vault.paths().count("/sdk/token") == 1
    assert vault.paths().count("/sdk/grants/list") == 3
    async with make_app(vault, max_retries=0) as app:
        with pytest.raises(gv.BackendError):
            await app.list_grants()
    assert vault.paths().count("/sdk/grants/list") == 4


async def test_response_headers_are_read() -> None:
    actor = new_uuid()
    vault = FakeVault().on(
        "/sdk/grants/list",
        httpx.Response(200, headers={"X-Alter-Actor-ID": actor, "X-RateLimit-Limit": "60",
                                     "X-RateLimit-Remaining": "59", "X-RateLimit-Reset": "2000000000",
                                     "X-Alter-Key-Deprecated": "true"},
                       json=LIST_OK.json()),
    )  # fmt: skip
    async with make_app(vault) as app:
        await app.list_grants()
        await app.list_grants()
        assert app.actor_id == actor
        assert app.last_rate_limit is not None and app.last_rate_limit.remaining == 59
    second = vault.calls[1][2]
    assert second.headers["x-alter-actor-id"] == actor


async def test_closed_clients_refuse_calls() -> None:
    vault = FakeVault().on("/sdk/grants/list", LIST_OK)
    app = make_app(vault)
    await app.close()
    with pytest.raises(gv.AlterSDKError, match="closed"):
        await app.list_grants()
    sync_app = make_sync_app(vault)
    sync_app.close()
    with pytest.raises(gv.AlterSDKError, match="closed"):
        sync_app.list_grants()
