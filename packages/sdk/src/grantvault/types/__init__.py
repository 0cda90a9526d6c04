"""The wire contract of the ``/sdk/*`` protocol: error codes and response models."""

from grantvault.types.errors import STATUS_BY_CODE, ErrorCode
from grantvault.types.wire import (
    AdditionalInjection,
    CreateGrantResult,
    GrantListItem,
    ManagedSecretGrantItem,
    OAuthGrantItem,
    PrincipalType,
    RevokeGrantResult,
    TokenResponse,
    UnifiedGrantListResult,
)

__all__ = [
    "STATUS_BY_CODE",
    "AdditionalInjection",
    "CreateGrantResult",
    "ErrorCode",
    "GrantListItem",
    "ManagedSecretGrantItem",
    "OAuthGrantItem",
    "PrincipalType",
    "RevokeGrantResult",
    "TokenResponse",
    "UnifiedGrantListResult",
]
