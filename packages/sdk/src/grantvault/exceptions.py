"""Every error the SDK raises, as one tree organised by what the caller should do.

The class names and constructor orders are those of the public ``alter-sdk`` client, so
``except`` clauses written for it keep working after changing the import::

    AlterSDKError (GrantvaultError)
    ├── AlterValueError                       bad input, rejected before any I/O: fix the call
    ├── MemoryIsolationError                  (reserved: agent memory partitioning)
    ├── BackendError                          the vault answered with an error
    │   ├── BlockedDestinationError           URL not allowed for this credential
    │   ├── ReAuthRequiredError               the end user must sign in / connect again
    │   │   ├── GrantExpiredError             the grant's TTL elapsed
    │   │   ├── GrantRevokedError             the grant was revoked
    │   │   ├── CredentialRevokedError        the underlying connection is dead
    │   │   └── GrantDeletedError             the grant is gone (410)
    │   ├── GrantNotFoundError                no such grant (wrong id or none for this user)
    │   │   └── AgentDelegationMissingError   the same, seen by an agent
    │   ├── AmbiguousGrantError               several grants match: pass account/label/grant_id
    │   ├── NoDelegatedGrantError             the agent holds no delegation for the provider
    │   ├── PolicyViolationError              a policy denied this use
    │   │   ├── StepUpRequiredError
    │   │   └── RedactDischargeFailedError
    │   ├── RestrictedGrantRequiresProxyError
    │   ├── GrantNotDelegableError
    │   ├── ServerFeatureUnsupportedError     the vault is older than this call needs
    │   ├── SiblingLabelConflictError
    │   ├── CredentialIdRequiredError         several credentials: pass credential_id
    │   ├── EndUserCredentialNotAssignableError
    │   ├── InsufficientScopeError            the API key lacks a scope
    │   ├── TokenRefreshInProgressError       transient: retry shortly
    │   ├── QuotaExceededError                a policy quota: wait retry_after
    │   ├── RateLimitError                    throttled: wait retry_after
    │   └── AgentError                        the API key / calling agent is not usable
    │       ├── InvalidKeyError, KeyRevokedError, KeyExpiredError, KeyRotationExpiredError,
    │       │   KeyInactiveError, KeyAppNotFoundError
    │       └── AgentInactiveError, AgentRevokedError, AgentNotFoundError, ... (agent lifecycle)
    ├── ConnectFlowError                      an OAuth Connect flow did not produce a grant
    │   ├── ConnectDeniedError                the user said no
    │   ├── ConnectConfigError                the session cannot start: configuration
    │   └── ConnectTimeoutError               nobody finished before the deadline
    ├── ProviderAPIError                      the provider answered >= 400 (request())
    │   ├── ScopeReauthRequiredError          the grant lacks scopes the provider wants
    │   └── ProviderUnauthorizedError         the provider rejected the credential (401)
    ├── NetworkError                          the vault or the provider could not be reached
    │   └── TimeoutError                      ... in time (shadows the builtin on purpose)
    └── ApprovalError                         (reserved: human-in-the-loop approvals)
        ├── ApprovalDeniedError, ApprovalExpiredError, ApprovalTimeoutError,
        └── ApprovalExecutionFailedError

``str(error)`` is only the message: ``details`` may carry identifiers or provider payloads
and is kept off log lines that format the exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "AgentCannotMintSubagentsError",
    "AgentConcurrentUpdateError",
    "AgentDelegationMissingError",
    "AgentError",
    "AgentInactiveError",
    "AgentKeyLimitError",
    "AgentNameExistsError",
    "AgentNotFoundError",
    "AgentRevokedError",
    "AlterSDKError",
    "AlterValueError",
    "AmbiguousGrantError",
    "ApprovalDeniedError",
    "ApprovalError",
    "ApprovalExecutionFailedError",
    "ApprovalExpiredError",
    "ApprovalTimeoutError",
    "BackendError",
    "BlockedDestinationError",
    "CallerAgentMismatchError",
    "CallerAgentResolutionError",
    "ConnectConfigError",
    "ConnectDeniedError",
    "ConnectFlowError",
    "ConnectTimeoutError",
    "CredentialChoice",
    "CredentialIdRequiredError",
    "CredentialRevokedError",
    "EndUserCredentialNotAssignableError",
    "GrantCandidate",
    "GrantDeletedError",
    "GrantExpiredError",
    "GrantNotDelegableError",
    "GrantNotFoundError",
    "GrantRevokedError",
    "GrantvaultError",
    "GrantvaultValueError",
    "IdempotencyKeyAgentInactiveError",
    "IdempotencyKeyAgentRevokedError",
    "IdempotencyKeyBodyMismatchError",
    "InsufficientScopeError",
    "InvalidKeyError",
    "KeyAlreadyRevokedError",
    "KeyAppNotFoundError",
    "KeyExpiredError",
    "KeyInactiveError",
    "KeyNotFoundError",
    "KeyRevokedError",
    "KeyRotationExpiredError",
    "LastActiveKeyError",
    "MeRequiresAgentKeyError",
    "MemoryIsolationError",
    "NetworkError",
    "NoDelegatedGrantError",
    "PolicyViolationError",
    "ProviderAPIError",
    "ProviderUnauthorizedError",
    "QuotaExceededError",
    "RateLimitError",
    "ReAuthRequiredError",
    "RedactDischargeFailedError",
    "RestrictedGrantRequiresProxyError",
    "ScopeReauthRequiredError",
    "ServerFeatureUnsupportedError",
    "SiblingLabelConflictError",
    "StepUpRequiredError",
    "TimeoutError",
    "TokenRefreshInProgressError",
]


@dataclass(frozen=True)
class GrantCandidate:
    """One grant matching an ambiguous request (see :class:`AmbiguousGrantError`)."""

    grant_id: str
    label: str | None = None
    account_identifier: str | None = None
    account_display_name: str | None = None


@dataclass(frozen=True)
class CredentialChoice:
    """One developer credential listed by :class:`CredentialIdRequiredError`."""

    credential_id: str
    label: str


class AlterSDKError(Exception):
    """Root of every SDK error. ``details`` holds structured context for recovery code."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details if isinstance(details, dict) else {}

    def __str__(self) -> str:
        return self.message


GrantvaultError = AlterSDKError


class AlterValueError(AlterSDKError):
    """The SDK refused caller input before sending anything: a bug in the calling code."""


GrantvaultValueError = AlterValueError


class MemoryIsolationError(AlterSDKError):
    """Agent memory partitioning could not verify an identity (``code`` says why)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}", details)
        self.code = code


class BackendError(AlterSDKError):
    """The vault answered with an error.

    ``status_code`` is the HTTP status, ``code`` the machine code of the error envelope
    (``details["error"]``) and ``request_id`` the vault's ``X-Request-ID`` when it sent one.
    """

    def __init__(
        self,
        message: str,
        details: dict[str, Any] | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, details)
        status = self.details.get("status_code")
        if status_code is None and isinstance(status, int) and not isinstance(status, bool):
            status_code = status
        self.status_code = status_code
        request_id = self.details.get("request_id")
        self.request_id: str | None = request_id if isinstance(request_id, str) else None

    @property
    def code(self) -> str | None:
        """The error code of the vault's answer (``invalid_key``, ``grant_revoked``...)."""
        value = self.details.get("error")
        return value if isinstance(value, str) else None


class BlockedDestinationError(BackendError):
    """The URL is outside the hosts this credential may be sent to; retrying cannot help."""


class ReAuthRequiredError(BackendError):
    """The end user must authorise again (sign in, or run Connect again)."""


class GrantExpiredError(ReAuthRequiredError):
    """The grant's time-to-live elapsed."""

    def __init__(
        self,
        message: str,
        details: dict[str, Any] | None = None,
        provider_id: str | None = None,
        agent_id: str | None = None,
        app_user_id: str | None = None,
    ) -> None:
        super().__init__(message, details)
        self.provider_id = provider_id
        self.agent_id = agent_id
        self.app_user_id = app_user_id


class GrantRevokedError(ReAuthRequiredError):
    """The grant was revoked by the user or an operator."""

    def __init__(
        self, message: str, grant_id: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details)
        self.grant_id = grant_id


class CredentialRevokedError(ReAuthRequiredError):
    """The connection behind the grant is dead (refresh token revoked or expired)."""

    def __init__(
        self,
        message: str,
        grant_id: str | None = None,
        details: dict[str, Any] | None = None,
        provider_id: str | None = None,
        app_user_id: str | None = None,
    ) -> None:
        super().__init__(message, details)
        self.grant_id = grant_id
        self.provider_id = provider_id
        self.app_user_id = app_user_id


class GrantDeletedError(ReAuthRequiredError):
    """The grant is permanently gone (HTTP 410); a new connection gets a new grant id."""


class GrantNotFoundError(BackendError):
    """No grant matches: a wrong or stale ``grant_id``, or none for this user and provider."""

    def __init__(
        self,
        message: str,
        details: dict[str, Any] | None = None,
        provider_id: str | None = None,
        agent_id: str | None = None,
        app_user_id: str | None = None,
    ) -> None:
        super().__init__(message, details)
        self.provider_id = provider_id
        self.agent_id = agent_id
        self.app_user_id = app_user_id


class AgentDelegationMissingError(GrantNotFoundError):
    """An agent asked for a grant that was never delegated to it."""


class AmbiguousGrantError(BackendError):
    """Several grants match; retry with ``account=``, ``label=`` or one of ``grant_ids``."""

    def __init__(
        self,
        message: str,
        provider_id: str | None = None,
        account_identifiers: list[str] | None = None,
        account_was_provided: bool = False,
        app_user_ids: list[str] | None = None,
        details: dict[str, Any] | None = None,
        grant_ids: list[str] | None = None,
        candidates: list[GrantCandidate] | None = None,
        candidates_truncated: bool = False,
    ) -> None:
        super().__init__(message, details)
        self.provider_id = provider_id
        self.account_identifiers = list(account_identifiers or [])
        self.account_was_provided = account_was_provided
        self.app_user_ids = list(app_user_ids or [])
        self.grant_ids = list(grant_ids or [])
        self.candidates = list(candidates or [])
        self.candidates_truncated = candidates_truncated


class NoDelegatedGrantError(BackendError):
    """The calling agent holds no delegated grant for this provider."""

    def __init__(
        self,
        message: str,
        provider_id: str | None = None,
        agent_id: str | None = None,
        details: dict[str, Any] | None = None,
        app_user_id: str | None = None,
    ) -> None:
        super().__init__(message, details)
        self.provider_id = provider_id
        self.agent_id = agent_id
        self.app_user_id = app_user_id


class PolicyViolationError(BackendError):
    """A policy denied this use of the grant (``policy_error`` names the rule's code)."""

    def __init__(
        self,
        message: str,
        policy_error: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details)
        self.policy_error = policy_error


class StepUpRequiredError(PolicyViolationError):
    """The user's session is older than the rule allows: sign in again and retry."""

    def __init__(
        self,
        message: str,
        max_session_age_seconds: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, policy_error="step_up_required", details=details)
        self.max_session_age_seconds = max_session_age_seconds


class RedactDischargeFailedError(PolicyViolationError):
    """A redaction rule could not be applied to the body, so the call was denied."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, policy_error="redact_discharge_failed", details=details)


class RestrictedGrantRequiresProxyError(BackendError):
    """This grant can only be used through the vault's proxy, not by retrieving a token."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)


class GrantNotDelegableError(BackendError):
    """Onward delegation of this grant is refused (``detail_reason`` says why)."""

    def __init__(
        self,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        detail_reason: str | None = None,
    ) -> None:
        super().__init__(message, details)
        self.detail_reason = detail_reason


class ServerFeatureUnsupportedError(BackendError):
    """The vault predates a feature this call relies on: upgrade the vault."""


class SiblingLabelConflictError(BackendError):
    """Another active grant on this credential already uses the label."""

    def __init__(
        self, message: str, label: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details)
        self.label = label


class CredentialIdRequiredError(BackendError):
    """The managed secret holds several credentials: pass one of ``credentials``."""

    def __init__(
        self,
        message: str,
        credentials: list[CredentialChoice] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details)
        self.credentials = list(credentials or [])


class EndUserCredentialNotAssignableError(BackendError):
    """That credential is an end user's own key; it is never assigned to anyone else."""


class InsufficientScopeError(BackendError):
    """The API key lacks a scope the route requires (``missing`` lists which)."""

    def __init__(
        self,
        message: str = "Insufficient scope",
        *,
        required: list[str] | None = None,
        granted: list[str] | None = None,
        missing: list[str] | None = None,
        scope_version: int | None = None,
        current_scope_version: int | None = None,
        scope_version_mismatch: bool = False,
        documentation_url: str | None = None,
        required_any_of: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details)
        self.required = list(required or [])
        self.granted = list(granted or [])
        self.missing = list(missing or [])
        self.scope_version = scope_version
        self.current_scope_version = current_scope_version
        self.scope_version_mismatch = scope_version_mismatch
        self.documentation_url = documentation_url
        self.required_any_of = required_any_of


class TokenRefreshInProgressError(BackendError):
    """Another request is refreshing this grant's token: retry after a short delay."""

    def __init__(
        self, message: str, grant_id: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details)
        self.grant_id = grant_id


class QuotaExceededError(BackendError):
    """A policy quota is used up: wait ``retry_after`` seconds (a denial, not a blip)."""

    def __init__(
        self, message: str, retry_after: int | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after


class RateLimitError(BackendError):
    """The vault (or something in front of it) throttled the call: wait ``retry_after``."""

    def __init__(
        self,
        message: str,
        retry_after: int | None = None,
        details: dict[str, Any] | None = None,
        scope: str | None = None,
        limit: int | None = None,
        window_seconds: int | None = None,
    ) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after
        self.scope = scope
        self.limit = limit
        self.window_seconds = window_seconds


class AgentError(BackendError):
    """The API key or the calling agent cannot be used; ``code`` is the vault's code."""

    code: str | None = "agent_error"

    def __init__(
        self, message: str = "", *, details: dict[str, Any] | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message or str(self.code), details)
        self.hint = hint


class InvalidKeyError(AgentError):
    """The vault knows no such API key (mistyped, deleted, or for another vault)."""

    code = "invalid_key"


class KeyRevokedError(AgentError):
    """The API key was revoked: create a new one."""

    code = "key_revoked"


class KeyExpiredError(AgentError):
    """The API key's expiry has passed."""

    code = "key_expired"


class KeyRotationExpiredError(AgentError):
    """The key was rotated and its overlap window has ended: use the successor."""

    code = "key_rotated_grace_expired"


class KeyInactiveError(AgentError):
    """The API key is not active."""

    code = "key_not_active"


class KeyAppNotFoundError(AgentError):
    """The key resolved but its app could not be loaded."""

    code = "app_not_found_for_key"


class AgentInactiveError(AgentError):
    """The calling agent is paused."""

    code = "agent_inactive"


class AgentRevokedError(AgentError):
    """The calling agent was revoked for good."""

    code = "agent_revoked"


class AgentNotFoundError(AgentError):
    """No active agent matches the id or name."""

    code = "agent_not_found"


class CallerAgentMismatchError(AgentError):
    """The asserted caller agent conflicts with the agent bound to the key."""

    code = "caller_agent_mismatch"


class CallerAgentResolutionError(AgentError):
    """The calling agent could not be resolved just now: retry with backoff."""

    code = "caller_agent_resolution_error"


class AgentNameExistsError(AgentError):
    """An active agent with that name already exists."""

    code = "agent_name_exists"


class AgentConcurrentUpdateError(AgentError):
    """The agent changed since it was read: fetch it again and retry."""

    code = "agent_concurrent_update"


class MeRequiresAgentKeyError(AgentError):
    """``me()`` needs an agent key."""

    code = "me_requires_agent_key"


class AgentCannotMintSubagentsError(AgentError):
    """Agent keys cannot manage agents."""

    code = "agent_cannot_mint_subagents"


class KeyAlreadyRevokedError(AgentError):
    """The key being changed is already revoked."""

    code = "key_revoked"


class KeyNotFoundError(AgentError):
    """No such key for this agent."""

    code = "key_not_found"


class LastActiveKeyError(AgentError):
    """Revoking this key would leave the agent without one (pass ``force=True``)."""

    code = "last_active_key"


class AgentKeyLimitError(AgentError):
    """The agent has as many active keys as it may."""

    code = "agent_key_limit_reached"


class IdempotencyKeyBodyMismatchError(AgentError):
    """An idempotency key was reused with a different body."""

    code = "idempotency_key_body_mismatch"


class IdempotencyKeyAgentRevokedError(AgentError):
    """The agent created under this idempotency key was revoked since."""

    code = "idempotency_key_agent_revoked"


class IdempotencyKeyAgentInactiveError(AgentError):
    """The agent created under this idempotency key is paused."""

    code = "idempotency_key_agent_inactive"


class ConnectFlowError(AlterSDKError):
    """A Connect (or sign-in) flow ended without a usable result."""


class ConnectDeniedError(ConnectFlowError):
    """The user declined the authorisation."""


class ConnectConfigError(ConnectFlowError):
    """The session cannot start because of configuration (``details["error"]`` says which)."""


class ConnectTimeoutError(ConnectFlowError):
    """Nobody completed the flow before the deadline (``details["reason"]`` says how)."""


class ProviderAPIError(AlterSDKError):
    """The provider answered with an error status to a ``request()`` call."""

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        response_body: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details)
        self.status_code = status_code
        self.response_body = response_body


class ScopeReauthRequiredError(ProviderAPIError):
    """The grant lacks scopes the provider requires; the user must connect again."""

    def __init__(
        self,
        message: str,
        grant_id: str | None = None,
        provider_id: str | None = None,
        status_code: int | None = None,
        response_body: str | None = None,
        missing_scopes: list[str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, status_code, response_body, details)
        self.grant_id = grant_id
        self.provider_id = provider_id
        self.missing_scopes = missing_scopes


class ProviderUnauthorizedError(ProviderAPIError):
    """The provider rejected the injected credential (HTTP 401)."""

    def __init__(
        self,
        message: str,
        grant_id: str | None = None,
        provider_id: str | None = None,
        status_code: int | None = None,
        response_body: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, status_code, response_body, details)
        self.grant_id = grant_id
        self.provider_id = provider_id


class NetworkError(AlterSDKError):
    """The vault or the provider could not be reached."""


class TimeoutError(NetworkError):
    """A call to the vault or the provider timed out (the name shadows the builtin)."""


class ApprovalError(AlterSDKError):
    """A human-in-the-loop approval did not let the call through."""

    def __init__(self, *, approval_id: str | None = None, message: str = "") -> None:
        super().__init__(message, {"approval_id": approval_id} if approval_id else {})
        self.approval_id = approval_id


class ApprovalDeniedError(ApprovalError):
    """The approver denied the call."""


class ApprovalExpiredError(ApprovalError):
    """Nobody decided before the approval window closed."""


class ApprovalTimeoutError(ApprovalError):
    """The SDK stopped waiting before anyone decided."""


class ApprovalExecutionFailedError(ApprovalError):
    """The call was approved but failed when the vault executed it."""
