"""The vault's error envelope, turned into the exception tree (no I/O here).

An error answer is ``{"error": <code>, "message": <text>, ...}``, possibly wrapped as
FastAPI's ``{"detail": {...}}``. The exception class is chosen from the HTTP status and the
code, exactly as the public ``alter-sdk`` client chooses it, so that a vault emitting the
documented pairs produces the documented classes. ``details`` is the whole body (a nested
``details`` object merged in, top-level keys winning) plus ``status_code`` and, when the vault
sent one, ``request_id``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from grantvault import exceptions as ex
from grantvault._constants import MAX_QUOTA_RETRY_AFTER, MAX_RATE_LIMIT_RETRY_AFTER
from grantvault._retry import coerce_seconds, parse_retry_after

NON_JSON_RATE_LIMIT_MESSAGE = (
    "Rate limited by an intermediary (HTTP 429 with a non-JSON body); "
    "retry after the indicated delay."
)

# 401 codes that say the API key (or the agent behind it) cannot be used.
_KEY_ERRORS: dict[str, type[ex.AgentError]] = {
    "invalid_key": ex.InvalidKeyError,
    "key_revoked": ex.KeyRevokedError,
    "key_expired": ex.KeyExpiredError,
    "key_rotated_grace_expired": ex.KeyRotationExpiredError,
    "key_not_active": ex.KeyInactiveError,
    "agent_inactive": ex.AgentInactiveError,
    "agent_revoked": ex.AgentRevokedError,
}
# 409 codes of agent and key management.
_AGENT_CONFLICTS: dict[str, type[ex.AgentError]] = {
    "agent_name_exists": ex.AgentNameExistsError,
    "agent_concurrent_update": ex.AgentConcurrentUpdateError,
    "key_revoked": ex.KeyAlreadyRevokedError,
    "last_active_key": ex.LastActiveKeyError,
    "agent_key_limit_reached": ex.AgentKeyLimitError,
    "idempotency_key_body_mismatch": ex.IdempotencyKeyBodyMismatchError,
    "idempotency_key_agent_revoked": ex.IdempotencyKeyAgentRevokedError,
    "idempotency_key_agent_inactive": ex.IdempotencyKeyAgentInactiveError,
}
# Codes that mean "this Connect / managed-secret session cannot start", any status.
_CONNECT_CONFIG_CODES = frozenset(
    {
        "managed_oauth_scope_approval_required",
        "idp_signin_not_configured",
        "no_eligible_grants",
        "binding_hosts_required",
        "provider_contract_repair_required",
        "secret_template_mismatch",
    }
)
_PROXY_ONLY_CODES = frozenset(
    {
        "restricted_grant_requires_proxy",
        "delegated_grant_requires_proxy",
        "hitl_grant_requires_proxy",
        "user_limits_require_proxy",
    }
)


def parse_envelope(status: int, content: bytes) -> dict[str, Any]:
    """The error body as a dict with ``status_code`` (a summary for non-JSON bodies)."""
    try:
        data = json.loads(content) if content else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        kind = "non-JSON" if data is None else "malformed"
        return {
            "message": f"The vault returned a {kind} error (HTTP {status}).",
            "status_code": status,
        }
    detail = data.get("detail")
    body: dict[str, Any] = dict(detail) if isinstance(detail, dict) else dict(data)
    nested = body.get("details")
    if isinstance(nested, dict):
        body = {**nested, **body}
    body["status_code"] = status
    return body


def _is_json(content: bytes) -> bool:
    try:
        json.loads(content)
    except ValueError:
        return False
    return True


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _strs(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _message(body: Mapping[str, Any], fallback: str) -> str:
    return _str(body.get("message")) or fallback


def _ids(body: Mapping[str, Any]) -> dict[str, str | None]:
    return {
        "provider_id": _str(body.get("provider_id")),
        "agent_id": _str(body.get("agent_id")),
        "app_user_id": _str(body.get("app_user_id")),
    }


def _forbidden(body: dict[str, Any]) -> ex.AlterSDKError:
    code = body.get("error")
    if code == "insufficient_scope":
        version = body.get("scope_version")
        current = body.get("current_scope_version")
        return ex.InsufficientScopeError(
            _message(body, "Insufficient scope"),
            required=_strs(body.get("required")),
            granted=_strs(body.get("granted")),
            missing=_strs(body.get("missing")),
            scope_version=version if type(version) is int else None,
            current_scope_version=current if type(current) is int else None,
            scope_version_mismatch=body.get("scope_version_mismatch") is True,
            documentation_url=_str(body.get("documentation_url")),
            required_any_of=body.get("required_any_of") is True,
            details=body,
        )
    if code == "grant_expired":
        return ex.GrantExpiredError(_message(body, "The grant has expired."), body, **_ids(body))
    if code == "grant_revoked":
        return _revoked(body)
    if code == "credential_revoked":
        return _credential_revoked(body)
    if code == "scope_mismatch":
        return ex.ScopeReauthRequiredError(
            _message(body, "The grant is missing required scopes."),
            grant_id=_str(body.get("grant_id")),
            provider_id=_str(body.get("provider_id")),
            status_code=403,
            details={**body, "source": "backend_flag"},
        )
    if code == "restricted_grant_requires_proxy":
        return ex.RestrictedGrantRequiresProxyError(
            _message(body, "This grant can only be used through the proxy."), body
        )
    if code == "grant_not_delegable":
        return ex.GrantNotDelegableError(
            _message(body, "This grant is not delegable."),
            body,
            detail_reason=_str(body.get("detail_reason")),
        )
    if code == "step_up_required":
        age = body.get("max_session_age_seconds")
        return ex.StepUpRequiredError(
            _message(body, "This request needs a fresh sign-in."),
            max_session_age_seconds=age if type(age) is int else None,
            details=body,
        )
    if code == "redact_discharge_failed":
        return ex.RedactDischargeFailedError(
            _message(body, "A redaction rule could not be applied; the call was denied."), body
        )
    return ex.PolicyViolationError(
        _message(body, "Access denied by policy."), policy_error=_str(code), details=body
    )


def _conflict(body: dict[str, Any]) -> ex.AlterSDKError:
    code = body.get("error")
    if code == "token_refresh_in_progress":
        return ex.TokenRefreshInProgressError(
            _message(body, "A token refresh is in progress; retry shortly."),
            grant_id=_str(body.get("grant_id")),
            details=body,
        )
    if code == "ambiguous_grant":
        candidates = [
            ex.GrantCandidate(
                grant_id=c["grant_id"],
                label=_str(c.get("label")),
                account_identifier=_str(c.get("account_identifier")),
                account_display_name=_str(c.get("account_display_name")),
            )
            for c in body.get("candidates") or []
            if isinstance(c, dict) and isinstance(c.get("grant_id"), str)
        ]
        return ex.AmbiguousGrantError(
            _message(body, "Several grants match; pass account, label or grant_id."),
            provider_id=_str(body.get("provider_id")),
            account_identifiers=_strs(body.get("account_identifiers")),
            account_was_provided=body.get("account_was_provided") is True,
            app_user_ids=_strs(body.get("app_user_ids")),
            details=body,
            grant_ids=_strs(body.get("grant_ids")),
            candidates=candidates,
            candidates_truncated=body.get("candidates_truncated") is True,
        )
    if code == "sibling_label_conflict":
        return ex.SiblingLabelConflictError(
            _message(body, "An active grant on this credential already has that label."),
            label=_str(body.get("label")),
            details=body,
        )
    if code == "credential_id_required":
        raw = body.get("credentials")
        choices = [
            ex.CredentialChoice(credential_id=c["id"], label=c["label"])
            for c in (raw if isinstance(raw, list) else [])
            if isinstance(c, dict)
            and isinstance(c.get("id"), str)
            and isinstance(c.get("label"), str)
        ]
        return ex.CredentialIdRequiredError(
            _message(body, "This secret holds several credentials; pass credential_id."),
            credentials=choices,
            details=body,
        )
    if code == "end_user_credential_not_assignable":
        return ex.EndUserCredentialNotAssignableError(
            _message(body, "That credential is an end user's own key."), body
        )
    if code == "no_delegated_grant":
        return _no_delegated_grant(body)
    if isinstance(code, str) and code in _AGENT_CONFLICTS:
        return _AGENT_CONFLICTS[code](
            _message(body, code), details=body, hint=_str(body.get("hint"))
        )
    return ex.BackendError(_message(body, "Conflict (HTTP 409)."), body)


def _no_delegated_grant(body: dict[str, Any]) -> ex.NoDelegatedGrantError:
    ids = _ids(body)
    return ex.NoDelegatedGrantError(
        _message(body, "The agent holds no grant for this provider."),
        provider_id=ids["provider_id"],
        agent_id=ids["agent_id"],
        details=body,
        app_user_id=ids["app_user_id"],
    )


def _not_found(body: dict[str, Any]) -> ex.AlterSDKError:
    code = body.get("error")
    if code == "no_delegated_grant":
        return _no_delegated_grant(body)
    if code in {"caller_agent_unresolved", "agent_not_found"}:
        return ex.AgentNotFoundError(_message(body, "No such active agent."), details=body)
    if code == "key_not_found":
        return ex.KeyNotFoundError(_message(body, "No such key."), details=body)
    if code == "secret_not_found":
        return ex.ConnectConfigError(_message(body, "No such managed secret in this app."), body)
    return ex.GrantNotFoundError(_message(body, "Grant not found."), body, **_ids(body))


def _bad_request(body: dict[str, Any], status: int) -> ex.AlterSDKError:
    code = body.get("error")
    if code == "caller_agent_mismatch":
        return ex.CallerAgentMismatchError(
            _message(body, "The caller agent does not match the API key."), details=body
        )
    if code == "grant_revoked":
        return _revoked(body)
    if code == "credential_revoked":
        return _credential_revoked(body)
    if code in _PROXY_ONLY_CODES:
        return ex.RestrictedGrantRequiresProxyError(
            _message(body, "This grant can only be used through the proxy."), body
        )
    return ex.BackendError(_message(body, f"The vault refused the request (HTTP {status})."), body)


def _revoked(body: dict[str, Any]) -> ex.GrantRevokedError:
    return ex.GrantRevokedError(
        _message(body, "The grant was revoked."), grant_id=_str(body.get("grant_id")), details=body
    )


def _credential_revoked(body: dict[str, Any]) -> ex.CredentialRevokedError:
    return ex.CredentialRevokedError(
        _message(body, "The connection behind this grant was revoked."),
        grant_id=_str(body.get("grant_id")),
        details=body,
        provider_id=_str(body.get("provider_id")),
        app_user_id=_str(body.get("app_user_id")),
    )


def _unauthorized(body: dict[str, Any]) -> ex.AlterSDKError:
    code = body.get("error")
    if code == "jwt_validation_error":
        return ex.ReAuthRequiredError(_message(body, "The user token was rejected."), body)
    if isinstance(code, str) and code in _KEY_ERRORS:
        return _KEY_ERRORS[code](_message(body, code), details=body, hint=_str(body.get("hint")))
    return ex.BackendError(_message(body, "Unauthorized: check the API key."), body)


def _too_many(body: dict[str, Any], headers: Mapping[str, str]) -> ex.AlterSDKError:
    code = body.get("error")
    header = headers.get("retry-after")
    if code == "quota_exceeded":
        retry = parse_retry_after(header, cap=MAX_QUOTA_RETRY_AFTER)
        if retry is None:
            retry = coerce_seconds(body.get("retry_after"), cap=MAX_QUOTA_RETRY_AFTER)
        return ex.QuotaExceededError(
            _message(body, "A request quota is used up."), retry_after=retry, details=body
        )
    if code == "rate_limit_exceeded":
        retry = parse_retry_after(header, cap=MAX_RATE_LIMIT_RETRY_AFTER)
        if retry is None:
            retry = coerce_seconds(body.get("retry_after"), cap=MAX_RATE_LIMIT_RETRY_AFTER)
        return ex.RateLimitError(
            _message(body, "Rate limit exceeded; retry after the window resets."),
            retry_after=retry,
            details=body,
            scope=_str(body.get("scope")),
            limit=coerce_seconds(body.get("limit"), cap=2**31),
            window_seconds=coerce_seconds(body.get("window_seconds"), cap=2**31),
        )
    return ex.BackendError(_message(body, "Too many requests (HTTP 429)."), body)


def _unavailable(body: dict[str, Any], headers: Mapping[str, str], status: int) -> ex.AlterSDKError:
    retry = parse_retry_after(headers.get("retry-after"), cap=MAX_RATE_LIMIT_RETRY_AFTER)
    if retry is not None:
        body["retry_after_seconds"] = retry
    code = body.get("error")
    if code == "caller_agent_resolution_error":
        return ex.CallerAgentResolutionError(
            _message(body, "The calling agent could not be resolved; retry."), details=body
        )
    if code == "app_not_found_for_key":
        return ex.KeyAppNotFoundError(_message(body, "The key's app was not found."), details=body)
    return ex.BackendError(_message(body, f"The vault is unavailable (HTTP {status})."), body)


_BY_STATUS: dict[int, Callable[[dict[str, Any]], ex.AlterSDKError]] = {
    403: _forbidden,
    409: _conflict,
    404: _not_found,
    410: lambda body: ex.GrantDeletedError(_message(body, "The grant was deleted."), body),
}


def error_from_response(
    status: int, headers: Mapping[str, str], content: bytes
) -> ex.AlterSDKError:
    """The exception for a vault answer with ``status`` >= 400 (returned, not raised)."""
    if status == 429 and not _is_json(content):
        return ex.RateLimitError(
            NON_JSON_RATE_LIMIT_MESSAGE,
            retry_after=parse_retry_after(
                headers.get("retry-after"), cap=MAX_RATE_LIMIT_RETRY_AFTER
            ),
            details={"status_code": 429},
        )
    body = parse_envelope(status, content)
    request_id = headers.get("x-request-id")
    if request_id:
        body.setdefault("request_id", request_id)
    code = body.get("error")
    if code == "blocked_destination":
        return ex.BlockedDestinationError(
            _message(body, "The destination is not allowed for this credential."), body
        )
    if code in _CONNECT_CONFIG_CODES:
        return ex.ConnectConfigError(_message(body, "The session cannot start."), body)
    handler = _BY_STATUS.get(status)
    if handler is not None:
        return handler(body)
    if status in {400, 502}:
        return _bad_request(body, status)
    if status == 401:
        return _unauthorized(body)
    if status == 429:
        return _too_many(body, headers)
    if status in {500, 503}:
        return _unavailable(body, headers, status)
    return ex.BackendError(
        _message(body, f"Unexpected answer from the vault (HTTP {status})."), body
    )
