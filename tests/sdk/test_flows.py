"""Connect, Connect polling and end-user sign-in (wire-protocol §2.6, §2.9), time-compressed.

The fake clock jumps forward on every sleep, so a 300-second deadline costs nothing.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import grantvault as gv
from tests.sdk.fakes import FakeClock, FakeVault, error, make_app, make_sync_app, token_answer

SESSION = {
    "session_token": "sess-1",
    "connect_url": "http://127.0.0.1:8080/sdk/oauth/connect#session=sess-1",
    "expires_in": 600,
    "expires_at": "2030-01-01T00:00:00Z",
}
GRANT = {
    "grant_id": "2e0cfc2f-54a5-4a5e-a0df-1a2b3c4d5e6f",
    "provider_id": "github",
    "account_identifier": "octocat",
    "scopes": ["repo"],
    "api_base_url": "https://api.github.com",
    "operation": "creation",
    "grant_policy": {"expires_at": None, "created_by": "developer", "created_at": None},
}
PENDING = httpx.Response(200, json={"status": "pending"})
POLL = "/sdk/oauth/connect/session/poll"


def completed(**extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"status": "completed", "grants": [GRANT], **extra})


def poll_error(code: str) -> httpx.Response:
    return httpx.Response(
        200, json={"status": "error", "error": {"error_code": code, "error_message": f"{code}!"}}
    )


def clock_of(app: gv.App | gv.SyncApp) -> FakeClock:
    clock = app._core.clock
    assert isinstance(clock, FakeClock)
    return clock


async def test_connect_prints_the_url_and_polls_at_the_interval(
    capsys: pytest.CaptureFixture[str],
) -> None:
    vault = (
        FakeVault()
        .on("/sdk/oauth/connect/session", httpx.Response(200, json=SESSION))
        .on(POLL, PENDING, PENDING, completed())
    )
    async with make_app(vault, user_token_getter=lambda: "jwt-1") as app:
        results = await app.connect(providers=["github"], open_browser=False, poll_interval=3)
        assert clock_of(app).sleeps == [3, 3]
    assert (
        capsys.readouterr().out.strip() == f"Open this URL to authorize: {SESSION['connect_url']}"
    )
    assert [r.grant_id for r in results] == [GRANT["grant_id"]]
    assert results[0].account_identifier == "octocat" and results[0].operation == "creation"
    assert results[0].grant_policy is not None
    (session_body,) = vault.bodies("/sdk/oauth/connect/session")
    assert session_body == {
        "allowed_providers": ["github"],
        "return_url": None,
        "allowed_origin": None,
        "metadata": None,
        "user_token": "jwt-1",
    }
    assert vault.bodies(POLL) == [{"session_token": "sess-1"}] * 3


def test_connect_opens_the_browser_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    vault = (
        FakeVault()
        .on("/sdk/oauth/connect/session", httpx.Response(200, json=SESSION))
        .on(POLL, completed())
    )
    opened: list[str] = []
    with make_sync_app(vault) as app:
        app._core.open_url = lambda url: opened.append(url) or True
        app.connect(providers=["github"], direct=True, allow_user_policy_rules=False)
    assert opened == [SESSION["connect_url"]] and capsys.readouterr().out == ""
    body = vault.bodies("/sdk/oauth/connect/session")[0]
    assert body["direct"] is True and body["allow_user_policy_rules"] is False


async def test_poll_honours_429_retry_after_within_the_deadline() -> None:
    limited = error(429, "rate_limit_exceeded", retry_after=7)
    vault = FakeVault().on(POLL, limited, PENDING, completed())
    async with make_app(vault) as app:
        results = await app.poll_connect_session("sess-1", poll_interval=2)
        assert clock_of(app).sleeps == [7.0, 2]
    assert len(results) == 1
    vault = FakeVault().on(
        POLL, httpx.Response(429, text="slow down", headers={"Retry-After": "1"})
    )
    async with make_app(vault) as app:
        with pytest.raises(gv.ConnectTimeoutError) as info:
            await app.poll_connect_session("sess-1", timeout=10, poll_interval=4)
    assert info.value.details["reason"] == "rate_limited"
    assert info.value.details["retry_after"] == 1


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("connect_denied", gv.ConnectDeniedError),
        ("invalid_client", gv.ConnectConfigError),
        ("provider_configuration_unavailable", gv.ConnectConfigError),
        ("token_exchange_failed", gv.ConnectFlowError),
    ],
)
async def test_poll_errors_are_typed(code: str, cls: type[Exception]) -> None:
    vault = FakeVault().on(POLL, PENDING, poll_error(code))
    async with make_app(vault) as app:
        with pytest.raises(cls) as info:
            await app.poll_connect_session("sess-1")
    assert type(info.value) is cls and info.value.details["error_code"] == code  # type: ignore[attr-defined]


async def test_poll_identity_sync_errors_are_backend_errors() -> None:
    vault = FakeVault().on(POLL, poll_error("service_unavailable"))
    async with make_app(vault) as app:
        with pytest.raises(gv.BackendError) as info:
            await app.poll_connect_session("sess-1")
    assert info.value.status_code == 503


async def test_poll_deadline_expiry_and_declines() -> None:
    declined = httpx.Response(200, json={"status": "pending", "declined_providers": [
        {"provider_id": "slack", "error_code": "connect_denied", "declined_at": "2030-01-01T00:00:00Z"},
        {"provider_id": "slack", "error_code": "connect_denied"},
        "junk",
    ]})  # fmt: skip
    events: list[dict[str, Any]] = []
    vault = FakeVault().on(POLL, declined, PENDING)
    async with make_app(vault) as app:
        with pytest.raises(gv.ConnectTimeoutError) as info:
            await app.poll_connect_session("s", timeout=300, on_event=events.append)
        assert sum(clock_of(app).sleeps) == pytest.approx(300)
    assert info.value.details == {
        "timeout": 300,
        "reason": "poll_deadline_elapsed",
        "declined_providers": ["slack"],
    }
    assert events == [{"type": "provider_declined", "provider_id": "slack",
                       "error_code": "connect_denied", "declined_at": "2030-01-01T00:00:00Z"}]  # fmt: skip
    expired = httpx.Response(200, json={"status": "expired"})
    vault = FakeVault().on(POLL, PENDING, expired)
    async with make_app(vault) as app:
        with pytest.raises(gv.ConnectTimeoutError, match="expired") as late:
            await app.poll_connect_session("s")
    assert late.value.details["reason"] == "session_expired"
    vault = FakeVault().on(POLL, expired)
    async with make_app(vault) as app:
        with pytest.raises(gv.ConnectFlowError) as early:
            await app.poll_connect_session("s")
    assert type(early.value) is gv.ConnectFlowError


async def test_poll_completed_without_grants_and_malformed_answers() -> None:
    failed = httpx.Response(200, json={"status": "completed", "grants": [], "failed_grants": [
        {"provider_id": "github", "reason": "activation_failed", "message": "no"}]})  # fmt: skip
    vault = FakeVault().on(POLL, failed)
    async with make_app(vault) as app:
        with pytest.raises(gv.ConnectFlowError) as info:
            await app.poll_connect_session("s")
    assert info.value.details["error_code"] == "grant_activation_failed"
    for bad in ({"status": "completed", "grants": [{"grant_id": 1}]}, {"nostatus": True},
                {"status": "weird"}):  # fmt: skip
        vault = FakeVault().on(POLL, httpx.Response(200, json=bad))
        async with make_app(vault) as app:
            with pytest.raises((gv.BackendError, gv.ConnectFlowError)):
                await app.poll_connect_session("s")


# --- end-user sign-in ----------------------------------------------------------------------

AUTH_SESSION = {
    "session_token": "auth-1",
    "auth_url": "http://127.0.0.1:8080/sdk/auth/start?s=auth-1",
    "expires_in": 600,
    "expires_at": "2030-01-01T00:00:00Z",
}
DONE = httpx.Response(
    200, json={"status": "completed", "user_token": "jwt-user", "user_info": {"sub": "u1"}}
)


async def test_authenticate_installs_the_token_for_later_calls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    vault = (
        FakeVault()
        .on("/sdk/auth/session", httpx.Response(201, json=AUTH_SESSION))
        .on("/sdk/auth/poll", httpx.Response(200, json={"status": "pending"}), DONE)
        .on("/sdk/token", httpx.Response(200, json=token_answer()))
    )
    async with make_app(vault) as app:
        app._core.open_url = lambda _url: False  # no browser: the URL is printed
        result = await app.authenticate(timeout=60)
        assert result.user_token == "jwt-user" and result.user_info == {"sub": "u1"}
        await app.request("GET", "https://api.example.com/me", provider="github")
    assert "Open this URL to sign in" in capsys.readouterr().out
    assert vault.bodies("/sdk/auth/session") == [{}]
    first_poll = vault.bodies("/sdk/auth/poll")[0]
    assert first_poll["session_token"] == "auth-1" and first_poll["wait_ms"] == 25_000
    assert vault.bodies("/sdk/token")[0]["user_token"] == "jwt-user"


async def test_auth_poll_retries_transient_failures_and_stops_on_permanent_ones() -> None:
    vault = FakeVault().on(
        "/sdk/auth/poll",
        httpx.Response(503, json={"error": "sealed"}),
        httpx.ConnectError("blip"),
        DONE,
    )
    async with make_app(vault) as app:
        result = await app.poll_auth_session("auth-1", poll_interval=1)
        assert result.user_token == "jwt-user"
    vault = FakeVault().on("/sdk/auth/poll", error(404, "not_found"))
    async with make_app(vault) as app:
        with pytest.raises(gv.GrantNotFoundError):
            await app.poll_auth_session("auth-1")
    vault = FakeVault().on("/sdk/auth/poll", httpx.Response(200, json={"status": "pending"}))
    with make_sync_app(vault) as sync_app:
        with pytest.raises(gv.ConnectTimeoutError) as info:
            sync_app.poll_auth_session("auth-1", timeout=30)
        assert info.value.details["reason"] == "poll_deadline_elapsed"
    for answer, match in (
        ({"status": "expired"}, "expired"),
        ({"status": "error", "error_message": "idp said no"}, "idp said no"),
        ({"status": "completed"}, "no user token"),
    ):
        vault = FakeVault().on("/sdk/auth/poll", httpx.Response(200, json=answer))
        async with make_app(vault) as app:
            with pytest.raises(gv.AlterSDKError, match=match):
                await app.poll_auth_session("auth-1")


async def test_auth_session_needs_201_and_a_well_formed_body() -> None:
    vault = FakeVault().on("/sdk/auth/session", httpx.Response(200, json=AUTH_SESSION))
    async with make_app(vault) as app:
        with pytest.raises(gv.BackendError, match="HTTP 200"):
            await app.create_auth_session()
    vault = FakeVault().on("/sdk/auth/session", httpx.Response(201, json={"auth_url": "x"}))
    async with make_app(vault) as app:
        with pytest.raises(gv.BackendError, match="AuthSession"):
            await app.create_auth_session()
    vault = FakeVault().on("/sdk/auth/session", error(400, "idp_not_configured"))
    async with make_app(vault) as app:
        with pytest.raises(gv.BackendError) as info:
            await app.create_auth_session()
    assert info.value.code == "idp_not_configured"


async def test_verify_user_token_never_raises() -> None:
    vault = FakeVault().on(
        "/sdk/auth/verify-token",
        httpx.Response(200, json={"sub": "user-1"}),
        error(401, "jwt_validation_error"),
        httpx.Response(200, json={"sub": ""}),
        httpx.ConnectError("down"),
    )
    async with make_app(vault, max_retries=0) as app:
        assert await app.verify_user_token("jwt") == "user-1"
        assert await app.verify_user_token("jwt") is None
        assert await app.verify_user_token("jwt") is None
        assert await app.verify_user_token("jwt") is None
    assert vault.bodies("/sdk/auth/verify-token")[0] == {"token": "jwt"}
