"""Result and input models of the public surface (names and fields as in ``alter-sdk``).

Results parsed from the vault are lenient about extra fields (a newer vault may add some) but
strict about the fields a caller relies on; a malformed answer becomes a ``BackendError``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grantvault.types.wire import (
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
    "AgentPrincipal",
    "AuthResult",
    "AuthSession",
    "ConnectDelegation",
    "ConnectFailedGrant",
    "ConnectResult",
    "ConnectSession",
    "CreateGrantResult",
    "GrantInfo",
    "GrantListItem",
    "GrantPolicy",
    "GrantPolicyInput",
    "GroupPrincipal",
    "ManagedSecretGrantItem",
    "NonGroupPrincipalType",
    "OAuthGrantItem",
    "Principal",
    "PrincipalType",
    "RateLimitSnapshot",
    "RetryErrorInfo",
    "RetryInfo",
    "RevokeGrantResult",
    "SystemPrincipal",
    "TokenResponse",
    "UnifiedGrantListResult",
    "UserPrincipal",
]

NonGroupPrincipalType = Literal["user", "system", "agent"]


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ConnectSession(_Result):
    """A Connect session: send the user to ``connect_url``, poll with ``session_token``."""

    session_token: str = Field(min_length=1)
    connect_url: str = Field(min_length=1)
    expires_in: int = Field(ge=0)
    expires_at: str = Field(min_length=1)
    scope_constraint_warnings: list[str] = Field(default_factory=list)
    single_provider: bool = False
    direct: bool = False

    def __repr__(self) -> str:
        return f"ConnectSession(connect_url=<redacted>, expires_at={self.expires_at!r})"


class AuthSession(_Result):
    """An end-user sign-in session: send the user to ``auth_url``, poll with the token."""

    session_token: str = Field(min_length=1)
    auth_url: str = Field(min_length=1)
    expires_in: int
    expires_at: str = Field(min_length=1)

    def __repr__(self) -> str:
        return f"AuthSession(auth_url=<redacted>, expires_at={self.expires_at!r})"


class AuthResult(_Result):
    """A completed sign-in: the user's identity-provider token and what is known of them."""

    user_token: str = Field(min_length=1)
    user_info: dict[str, Any] = Field(default_factory=dict)

    @field_validator("user_info", mode="before")
    @classmethod
    def _dict_or_empty(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else {}

    def __repr__(self) -> str:
        return f"AuthResult(sub={self.user_info.get('sub', 'unknown')!r})"


class GrantPolicy(_Result):
    """The policy a grant carries: its hard expiry, who set it and when."""

    expires_at: str | None = None
    created_by: str | None = None
    created_at: str | None = None


class ConnectFailedGrant(_Result):
    """A provider of a Connect session that did not end up with a grant."""

    provider_id: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    message: str = Field(min_length=1)


class ConnectDelegation(_Result):
    """The delegation a Connect session made of the grant to an agent."""

    agent_id: str = Field(min_length=1)
    delegable: bool
    policy_refused: bool = False


class ConnectResult(_Result):
    """One grant produced by a Connect flow (metadata only: never a token)."""

    grant_id: str
    provider_id: str
    account_identifier: str | None = None
    scopes: list[str] = Field(default_factory=list)
    api_base_url: str | None = None
    operation: Literal["creation", "reauth"] = "creation"
    grant_policy: GrantPolicy | None = None
    failed_grants: list[ConnectFailedGrant] = Field(default_factory=list)
    delegation: ConnectDelegation | None = None


class GrantInfo(_Result):
    """Metadata of one grant (never its credential)."""

    grant_id: str
    provider_id: str
    scopes: list[str] = Field(default_factory=list)
    account_identifier: str | None = None
    account_display_name: str | None = None
    api_base_url: str | None = None
    status: str
    scope_mismatch: bool = False
    expires_at: str | None = None
    created_at: str
    last_used_at: str | None = None
    principal_type: PrincipalType
    label: str | None = None
    credential_id: str | None = None
    grant_policy: dict[str, Any] | None = None


class RetryErrorInfo(_Result):
    """One failed attempt of a token refresh the vault retried."""

    attempt: int = Field(ge=1)
    error: str
    error_type: str
    delay_s: float = Field(ge=0.0)
    permanent: bool = False


class RetryInfo(_Result):
    """How many attempts the vault needed to refresh the token behind a ``request()``."""

    total_attempts: int = Field(ge=1)
    successful_attempt: int = Field(ge=0)
    errors: tuple[RetryErrorInfo, ...] = ()

    @model_validator(mode="after")
    def _bounded(self) -> RetryInfo:
        if self.successful_attempt > self.total_attempts:
            raise ValueError("successful_attempt must be <= total_attempts")
        return self


class RateLimitSnapshot(_Result):
    """The rate-limit budget the vault advertised on its last metered answer."""

    limit: int = Field(ge=0)
    remaining: int = Field(ge=0)
    reset_at: datetime


class GrantPolicyInput(BaseModel):
    """A grant policy to set: hard expiry and/or TTL bounds (unknown keys are refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    expires_at: str | None = None
    max_ttl_seconds: int | None = Field(default=None, gt=0)
    default_ttl_seconds: int | None = Field(default=None, gt=0)

    @field_validator("expires_at")
    @classmethod
    def _parseable(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError("expires_at must be an ISO 8601 timestamp") from exc
        return value


class _Principal(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UserPrincipal(_Principal):
    """Grant to one end user, identified by their identity-provider token."""

    type: Literal["user"] = "user"
    user_token: str = Field(min_length=1, max_length=8192)
    label: str = Field(min_length=1, max_length=255)


class GroupPrincipal(_Principal):
    """Grant to an identity-provider group: every member, now and later."""

    type: Literal["group"] = "group"
    external_group_id: str = Field(min_length=1, max_length=255)
    idp_id: str = Field(min_length=1, max_length=255)
    label: str = Field(min_length=1, max_length=255)


class SystemPrincipal(_Principal):
    """Grant to the app itself (server-to-server use, no end user)."""

    type: Literal["system"] = "system"
    label: str | None = Field(default=None, max_length=255)


class AgentPrincipal(_Principal):
    """Grant to a managed agent (accepted by the type, refused by the vault on this route)."""

    type: Literal["agent"] = "agent"
    label: str | None = Field(default=None, max_length=255)


#: Who a managed-secret grant is for.
Principal = Annotated[
    UserPrincipal | GroupPrincipal | SystemPrincipal | AgentPrincipal,
    Field(discriminator="type"),
]
