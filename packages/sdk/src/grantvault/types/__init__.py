"""The wire contract of the ``/sdk/*`` protocol: error codes and response models."""

from grantvault.types.errors import STATUS_BY_CODE, ErrorCode
from grantvault.types.wire import (
    AdditionalInjection,
    CreateGrantResult,
    ManagedSecretGrantItem,
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
    "ManagedSecretGrantItem",
    "PrincipalType",
    "RevokeGrantResult",
    "TokenResponse",
    "UnifiedGrantListResult",
]
