"""Grantvault's Python SDK: call provider APIs with credentials the app never sees.

::

    from grantvault import App, HttpMethod

    async with App(api_key=..., base_url="http://127.0.0.1:8080") as vault:
        response = await vault.request(HttpMethod.GET, "https://api.example.com/v1/me",
                                       grant_id="...")

The calls, parameters, results and exception classes are those of the public ``alter-sdk``
client, so code written for it ports by changing the import. ``SyncApp`` offers the same
methods without ``await``. Integrations: ``grantvault.fastapi``, ``grantvault.mcp`` and
``grantvault.langchain`` (each an extra: ``pip install 'grantvault[fastapi]'``...).
"""

from grantvault._client import App, SyncApp
from grantvault._context import audit_scope
from grantvault._key_format import is_valid_key
from grantvault._signing import derive_signing_key, sign_request
from grantvault._version import __version__
from grantvault.enums import CallerType, HttpMethod, Provider
from grantvault.exceptions import (
    AgentCannotMintSubagentsError,
    AgentConcurrentUpdateError,
    AgentDelegationMissingError,
    AgentError,
    AgentInactiveError,
    AgentKeyLimitError,
    AgentNameExistsError,
    AgentNotFoundError,
    AgentRevokedError,
    AlterSDKError,
    AlterValueError,
    AmbiguousGrantError,
    ApprovalDeniedError,
    ApprovalError,
    ApprovalExecutionFailedError,
    ApprovalExpiredError,
    ApprovalTimeoutError,
    BackendError,
    BlockedDestinationError,
    CallerAgentMismatchError,
    CallerAgentResolutionError,
    ConnectConfigError,
    ConnectDeniedError,
    ConnectFlowError,
    ConnectTimeoutError,
    CredentialIdRequiredError,
    CredentialRevokedError,
    EndUserCredentialNotAssignableError,
    GrantDeletedError,
    GrantExpiredError,
    GrantNotDelegableError,
    GrantNotFoundError,
    GrantRevokedError,
    GrantvaultError,
    GrantvaultValueError,
    IdempotencyKeyAgentInactiveError,
    IdempotencyKeyAgentRevokedError,
    IdempotencyKeyBodyMismatchError,
    InsufficientScopeError,
    InvalidKeyError,
    KeyAlreadyRevokedError,
    KeyAppNotFoundError,
    KeyExpiredError,
    KeyInactiveError,
    KeyNotFoundError,
    KeyRevokedError,
    KeyRotationExpiredError,
    LastActiveKeyError,
    MemoryIsolationError,
    MeRequiresAgentKeyError,
    NetworkError,
    NoDelegatedGrantError,
    PolicyViolationError,
    ProviderAPIError,
    ProviderUnauthorizedError,
    QuotaExceededError,
    RateLimitError,
    ReAuthRequiredError,
    RedactDischargeFailedError,
    RestrictedGrantRequiresProxyError,
    ScopeReauthRequiredError,
    ServerFeatureUnsupportedError,
    SiblingLabelConflictError,
    StepUpRequiredError,
    TimeoutError,
    TokenRefreshInProgressError,
)
from grantvault.models import (
    AgentPrincipal,
    AuthResult,
    AuthSession,
    ConnectDelegation,
    ConnectFailedGrant,
    ConnectResult,
    ConnectSession,
    CreateGrantResult,
    GrantInfo,
    GrantListItem,
    GrantPolicy,
    GrantPolicyInput,
    GroupPrincipal,
    ManagedSecretGrantItem,
    NonGroupPrincipalType,
    OAuthGrantItem,
    Principal,
    PrincipalType,
    RateLimitSnapshot,
    RetryErrorInfo,
    RetryInfo,
    RevokeGrantResult,
    SystemPrincipal,
    TokenResponse,
    UnifiedGrantListResult,
    UserPrincipal,
)
from grantvault.types import ErrorCode

__all__ = [
    "AgentCannotMintSubagentsError",
    "AgentConcurrentUpdateError",
    "AgentDelegationMissingError",
    "AgentError",
    "AgentInactiveError",
    "AgentKeyLimitError",
    "AgentNameExistsError",
    "AgentNotFoundError",
    "AgentPrincipal",
    "AgentRevokedError",
    "AlterSDKError",
    "AlterValueError",
    "AmbiguousGrantError",
    "App",
    "ApprovalDeniedError",
    "ApprovalError",
    "ApprovalExecutionFailedError",
    "ApprovalExpiredError",
    "ApprovalTimeoutError",
    "AuthResult",
    "AuthSession",
    "BackendError",
    "BlockedDestinationError",
    "CallerAgentMismatchError",
    "CallerAgentResolutionError",
    "CallerType",
    "ConnectConfigError",
    "ConnectDelegation",
    "ConnectDeniedError",
    "ConnectFailedGrant",
    "ConnectFlowError",
    "ConnectResult",
    "ConnectSession",
    "ConnectTimeoutError",
    "CreateGrantResult",
    "CredentialIdRequiredError",
    "CredentialRevokedError",
    "EndUserCredentialNotAssignableError",
    "ErrorCode",
    "GrantDeletedError",
    "GrantExpiredError",
    "GrantInfo",
    "GrantListItem",
    "GrantNotDelegableError",
    "GrantNotFoundError",
    "GrantPolicy",
    "GrantPolicyInput",
    "GrantRevokedError",
    "GrantvaultError",
    "GrantvaultValueError",
    "GroupPrincipal",
    "HttpMethod",
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
    "ManagedSecretGrantItem",
    "MeRequiresAgentKeyError",
    "MemoryIsolationError",
    "NetworkError",
    "NoDelegatedGrantError",
    "NonGroupPrincipalType",
    "OAuthGrantItem",
    "PolicyViolationError",
    "Principal",
    "PrincipalType",
    "Provider",
    "ProviderAPIError",
    "ProviderUnauthorizedError",
    "QuotaExceededError",
    "RateLimitError",
    "RateLimitSnapshot",
    "ReAuthRequiredError",
    "RedactDischargeFailedError",
    "RestrictedGrantRequiresProxyError",
    "RetryErrorInfo",
    "RetryInfo",
    "RevokeGrantResult",
    "ScopeReauthRequiredError",
    "ServerFeatureUnsupportedError",
    "SiblingLabelConflictError",
    "StepUpRequiredError",
    "SyncApp",
    "SystemPrincipal",
    "TimeoutError",
    "TokenRefreshInProgressError",
    "TokenResponse",
    "UnifiedGrantListResult",
    "UserPrincipal",
    "__version__",
    "audit_scope",
    "derive_signing_key",
    "is_valid_key",
    "sign_request",
]

_MOVED = {
    "AlterVault": (
        "AlterVault was removed from the alter-sdk API; grantvault follows it. Use App "
        "(from grantvault import App) for app keys; for code that acted as an agent via "
        "caller=<agent_id>, pass the same caller= and caller_type=CallerType.AGENT to App."
    ),
    "AlterApp": "AlterApp was renamed to App: use `from grantvault import App`.",
    "AlterAgent": (
        "AlterAgent was renamed to Agent in alter-sdk; grantvault has no Agent class yet. "
        "Use App(caller=..., caller_type=CallerType.AGENT)."
    ),
    "Agent": (
        "grantvault has no Agent class yet (agent keys come with managed agents). "
        "Use App(caller=..., caller_type=CallerType.AGENT)."
    ),
}


def __getattr__(name: str) -> object:
    """Explain names of older alter-sdk releases instead of a bare AttributeError."""
    if name in _MOVED:
        raise ImportError(_MOVED[name])
    raise AttributeError(f"module 'grantvault' has no attribute {name!r}")
