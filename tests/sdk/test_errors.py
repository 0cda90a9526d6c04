"""The error envelope (wire-protocol §2.5) into the exception tree (§1.13)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

import grantvault as gv
from grantvault import exceptions as ex
from grantvault._errors import error_from_response
from tests.sdk.fakes import FakeVault, error, make_app, make_sync_app

CASES: list[tuple[int, str, type[ex.AlterSDKError]]] = [
    (400, "grant_revoked", ex.GrantRevokedError),
    (502, "credential_revoked", ex.CredentialRevokedError),
    (400, "restricted_grant_requires_proxy", ex.RestrictedGrantRequiresProxyError),
    (400, "delegated_grant_requires_proxy", ex.RestrictedGrantRequiresProxyError),
    (400, "hitl_grant_requires_proxy", ex.RestrictedGrantRequiresProxyError),
    (400, "user_limits_require_proxy", ex.RestrictedGrantRequiresProxyError),
    (400, "caller_agent_mismatch", ex.CallerAgentMismatchError),
    (400, "idp_not_configured", ex.BackendError),
    (401, "jwt_validation_error", ex.ReAuthRequiredError),
    (401, "invalid_key", ex.InvalidKeyError),
    (401, "key_revoked", ex.KeyRevokedError),
    (401, "key_expired", ex.KeyExpiredError),
    (401, "key_rotated_grace_expired", ex.KeyRotationExpiredError),
    (401, "key_not_active", ex.KeyInactiveError),
    (401, "agent_inactive", ex.AgentInactiveError),
    (401, "agent_revoked", ex.AgentRevokedError),
    (401, "invalid_signature", ex.BackendError),
    (403, "grant_expired", ex.GrantExpiredError),
    (403, "grant_revoked", ex.GrantRevokedError),
    (403, "credential_revoked", ex.CredentialRevokedError),
    (403, "insufficient_scope", ex.InsufficientScopeError),
    (403, "restricted_grant_requires_proxy", ex.RestrictedGrantRequiresProxyError),
    (403, "grant_not_delegable", ex.GrantNotDelegableError),
    (403, "scope_mismatch", ex.ScopeReauthRequiredError),
    (403, "step_up_required", ex.StepUpRequiredError),
    (403, "redact_discharge_failed", ex.RedactDischargeFailedError),
    (403, "policy_violation", ex.PolicyViolationError),
    (404, "grant_not_found", ex.GrantNotFoundError),
    (404, "no_delegated_grant", ex.NoDelegatedGrantError),
    (404, "agent_not_found", ex.AgentNotFoundError),
    (404, "caller_agent_unresolved", ex.AgentNotFoundError),
    (404, "key_not_found", ex.KeyNotFoundError),
    (404, "secret_not_found", ex.ConnectConfigError),
    (409, "ambiguous_grant", ex.AmbiguousGrantError),
    (409, "no_delegated_grant", ex.NoDelegatedGrantError),
    (409, "token_refresh_in_progress", ex.TokenRefreshInProgressError),
    (409, "sibling_label_conflict", ex.SiblingLabelConflictError),
    (409, "credential_id_required", ex.CredentialIdRequiredError),
    (409, "end_user_credential_not_assignable", ex.EndUserCredentialNotAssignableError),
    (409, "managed_oauth_scope_approval_required", ex.ConnectConfigError),
    (409, "idp_signin_not_configured", ex.ConnectConfigError),
    (409, "no_eligible_grants", ex.ConnectConfigError),
    (409, "binding_hosts_required", ex.ConnectConfigError),
    (409, "provider_contract_repair_required", ex.ConnectConfigError),
    (409, "agent_name_exists", ex.AgentNameExistsError),
    (409, "agent_concurrent_update", ex.AgentConcurrentUpdateError),
    (409, "key_revoked", ex.KeyAlreadyRevokedError),
    (409, "last_active_key", ex.LastActiveKeyError),
    (409, "agent_key_limit_reached", ex.AgentKeyLimitError),
    (409, "idempotency_key_body_mismatch", ex.IdempotencyKeyBodyMismatchError),
    (409, "idempotency_key_agent_revoked", ex.IdempotencyKeyAgentRevokedError),
    (409, "idempotency_key_agent_inactive", ex.IdempotencyKeyAgentInactiveError),
    (409, "credential_not_set", ex.BackendError),
    (410, "grant_deleted", ex.GrantDeletedError),
    (422, "blocked_destination", ex.BlockedDestinationError),
    (403, "blocked_destination", ex.BlockedDestinationError),
    (422, "secret_template_mismatch", ex.ConnectConfigError),
    (422, "invalid_request", ex.BackendError),
    (429, "quota_exceeded", ex.QuotaExceededError),
    (429, "rate_limit_exceeded", ex.RateLimitError),
    (429, "too_many_pending_approvals", ex.BackendError),
    (500, "caller_agent_resolution_error", ex.CallerAgentResolutionError),
    (503, "app_not_found_for_key", ex.KeyAppNotFoundError),
    (503, "sealed", ex.BackendError),
    (500, "internal_error", ex.BackendError),
]


@pytest.mark.parametrize(("status", "code", "cls"), CASES, ids=[f"{s}-{c}" for s, c, _ in CASES])
def test_every_pair_maps_to_its_class(status: int, code: str, cls: type[Exception]) -> None:
    body = json.dumps({"error": code, "message": f"msg for {code}"}).encode()
    err = error_from_response(status, httpx.Headers({"x-request-id": "req-1"}), body)
    assert type(err) is cls
    assert err.message == f"msg for {code}"
    assert str(err) == f"msg for {code}"
    if isinstance(err, ex.BackendError):
        assert err.status_code == status
        assert err.request_id == "req-1"
        assert err.code == code or isinstance(err, ex.AgentError)
    assert err.details["error"] == code


def test_fields_are_carried_onto_the_exception() -> None:
    def make(status: int, **body: Any) -> ex.AlterSDKError:
        return error_from_response(status, {}, json.dumps(body).encode())

    ambiguous = make(
        409,
        error="ambiguous_grant",
        provider_id="github",
        account_identifiers=["a@x", 3],
        grant_ids=["g1", "g2"],
        candidates=[{"grant_id": "g1", "label": "work"}, {"label": "no id"}, "junk"],
        candidates_truncated=True,
    )
    assert isinstance(ambiguous, ex.AmbiguousGrantError)
    assert ambiguous.account_identifiers == ["a@x"] and ambiguous.grant_ids == ["g1", "g2"]
    assert ambiguous.candidates == [ex.GrantCandidate("g1", label="work")]
    assert ambiguous.candidates_truncated and ambiguous.provider_id == "github"

    several = make(
        409,
        error="credential_id_required",
        details={"credentials": [{"id": "c1", "label": "prod"}, {"id": 2}]},
    )
    assert isinstance(several, ex.CredentialIdRequiredError)
    assert several.credentials == [ex.CredentialChoice("c1", "prod")]

    scope = make(
        403,
        error="insufficient_scope",
        required=["grants:read"],
        missing=["grants:read"],
        scope_version=2,
        current_scope_version=True,
    )
    assert isinstance(scope, ex.InsufficientScopeError)
    assert scope.missing == ["grants:read"] and scope.scope_version == 2
    assert scope.current_scope_version is None

    expired = make(403, error="grant_expired", provider_id="slack", agent_id=7)
    assert isinstance(expired, ex.GrantExpiredError)
    assert expired.provider_id == "slack" and expired.agent_id is None

    policy = make(403, error="outside_business_hours", details={"window": "9-17"})
    assert isinstance(policy, ex.PolicyViolationError)
    assert policy.policy_error == "outside_business_hours" and policy.details["window"] == "9-17"

    step_up = make(403, error="step_up_required", max_session_age_seconds=300)
    assert isinstance(step_up, ex.StepUpRequiredError) and step_up.max_session_age_seconds == 300


def test_wrapped_non_json_and_empty_bodies() -> None:
    wrapped = error_from_response(
        409, {}, json.dumps({"detail": {"error": "token_refresh_in_progress"}}).encode()
    )
    assert isinstance(wrapped, ex.TokenRefreshInProgressError)
    assert wrapped.message  # falls back to a default message
    html = error_from_response(502, {}, b"<html>bad gateway</html>")
    assert type(html) is ex.BackendError and html.status_code == 502
    assert "non-JSON" in html.message and "html" not in json.dumps(html.details)
    not_found = error_from_response(404, {}, b"")
    assert type(not_found) is ex.GrantNotFoundError


def test_retry_after_from_header_then_body_and_clamped() -> None:
    limited = error_from_response(
        429, {"retry-after": "7"}, json.dumps({"error": "rate_limit_exceeded", "retry_after": 99,
                                              "scope": "api_key", "limit": 60}).encode()
    )  # fmt: skip
    assert isinstance(limited, ex.RateLimitError)
    assert (limited.retry_after, limited.scope, limited.limit) == (7, "api_key", 60)
    from_body = error_from_response(429, {}, b'{"error":"rate_limit_exceeded","retry_after":12.0}')
    assert isinstance(from_body, ex.RateLimitError) and from_body.retry_after == 12
    huge = error_from_response(429, {"retry-after": "9" * 5000}, b'{"error":"rate_limit_exceeded"}')
    assert isinstance(huge, ex.RateLimitError) and huge.retry_after == 3600
    quota = error_from_response(429, {"retry-after": "2592000"}, b'{"error":"quota_exceeded"}')
    assert isinstance(quota, ex.QuotaExceededError) and quota.retry_after == 2592000
    proxy = error_from_response(429, {"retry-after": "3"}, b"<html>slow down</html>")
    assert isinstance(proxy, ex.RateLimitError)
    assert proxy.retry_after == 3 and proxy.details == {"status_code": 429}
    unavailable = error_from_response(503, {"retry-after": "5"}, b'{"error":"sealed"}')
    assert unavailable.details["retry_after_seconds"] == 5


async def test_errors_surface_from_the_async_and_sync_clients() -> None:
    vault = FakeVault().on("/sdk/grants/list", error(401, "key_revoked", hint="make a new key"))
    async with make_app(vault) as app:
        with pytest.raises(gv.KeyRevokedError) as info:
            await app.list_grants()
    assert info.value.hint == "make a new key" and info.value.code == "key_revoked"
    with make_sync_app(vault) as sync_app, pytest.raises(gv.AgentError):
        sync_app.list_grants()


def test_exception_tree_matches_the_documented_hierarchy() -> None:
    assert issubclass(ex.GrantDeletedError, ex.ReAuthRequiredError)
    assert issubclass(ex.ReAuthRequiredError, ex.BackendError)
    assert issubclass(ex.AgentDelegationMissingError, ex.GrantNotFoundError)
    assert issubclass(ex.InvalidKeyError, ex.AgentError)
    assert issubclass(ex.ConnectTimeoutError, ex.ConnectFlowError)
    assert issubclass(ex.ScopeReauthRequiredError, ex.ProviderAPIError)
    assert issubclass(ex.TimeoutError, ex.NetworkError)
    assert not issubclass(ex.ConnectFlowError, ex.BackendError)
    assert gv.GrantvaultError is gv.AlterSDKError
    for name in ex.__all__:
        cls = getattr(ex, name)
        if isinstance(cls, type) and issubclass(cls, Exception):
            assert issubclass(cls, ex.AlterSDKError), name
