"""Request bodies of the ``/sdk/*`` routes: strict (unknown keys are rejected with 422).

Numbers and flags are strict too (``StrictInt``, ``StrictBool``): pydantic's lax mode would
read ``true`` as the integer 1 (``{"max_ttl_seconds": true}`` made a grant that lived one
second) and ``0``/``"yes"`` as booleans. A JSON boolean is never a number here, nor a number
a boolean. ``tests/test_identity_hardening.py`` walks every request model of every route.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)

HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
ShortText = Annotated[str, StringConstraints(max_length=512)]
#: Ten years: longer lifetimes are a mistake, and unbounded ones overflow date arithmetic.
MAX_TTL_SECONDS = 315_360_000


def _reject_nul(value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("text must not contain NUL characters")
    elif isinstance(value, dict):
        for k, v in value.items():
            _reject_nul(k)
            _reject_nul(v)
    elif isinstance(value, list):
        for v in value:
            _reject_nul(v)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        _reject_nul(data)
        return data


class RequestTarget(_Strict):
    method: HttpMethod
    url: Annotated[str, StringConstraints(min_length=1, max_length=65_536)]


class TokenBody(_Strict):
    grant_id: UUID | None = None
    provider_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    reason: ShortText | None = None
    request: RequestTarget
    user_token: Annotated[str, StringConstraints(max_length=16_384)] | None = None
    app_user_id: Annotated[str, StringConstraints(max_length=255)] | None = None
    account: Annotated[str, StringConstraints(max_length=255)] | None = None
    label: Annotated[str, StringConstraints(max_length=255)] | None = None


class GrantPolicyBody(_Strict):
    expires_at: AwareDatetime | None = Field(
        default=None, description="ISO 8601 with a UTC offset, e.g. 2027-01-31T00:00:00Z."
    )
    max_ttl_seconds: StrictInt | None = Field(default=None, gt=0, le=MAX_TTL_SECONDS)
    default_ttl_seconds: StrictInt | None = Field(default=None, gt=0, le=MAX_TTL_SECONDS)


class SystemPrincipalBody(_Strict):
    type: Literal["system"]
    label: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None


class UserPrincipalBody(_Strict):
    type: Literal["user"]
    user_token: Annotated[str, StringConstraints(min_length=1, max_length=8192)]
    label: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None


class GroupPrincipalBody(_Strict):
    type: Literal["group"]
    external_group_id: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    idp_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    label: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None


class AgentPrincipalBody(_Strict):
    type: Literal["agent"]
    agent_id: str | None = None
    label: str | None = None


Principal = Annotated[
    SystemPrincipalBody | UserPrincipalBody | GroupPrincipalBody | AgentPrincipalBody,
    Field(discriminator="type"),
]


class CreateGrantBody(_Strict):
    principal: Principal
    grant_policy: GrantPolicyBody | None = None
    credential_id: UUID | None = None


class ListGrantsBody(_Strict):
    limit: StrictInt = Field(default=100, ge=1, le=1000)
    offset: StrictInt = Field(default=0, ge=0, le=1_000_000)
    provider_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    status: Literal["active", "revoked", "expired"] | None = None
    account: Annotated[str, StringConstraints(max_length=255)] | None = None
    label: Annotated[str, StringConstraints(max_length=255)] | None = None
    user_token: Annotated[str, StringConstraints(max_length=16_384)] | None = None


class RevokeBody(_Strict):
    reason: Annotated[str, StringConstraints(max_length=512)] | None = None
    user_token: Annotated[str, StringConstraints(max_length=16_384)] | None = None


class ApiCallAuditBody(BaseModel):
    """The SDK's post-call row. Lenient on extra keys (newer SDKs may add some), bounded in size."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        _reject_nul(data)
        return data

    grant_id: UUID
    provider_id: Annotated[str, StringConstraints(max_length=255)] | None = None
    token_generation: UUID | None = None
    method: Annotated[str, StringConstraints(max_length=16)]
    url: Annotated[str, StringConstraints(max_length=65_536)]
    request_headers: dict[str, Any] | None = None
    request_body: Any = None
    response_status: StrictInt = Field(default=0, ge=0, le=999)
    response_headers: dict[str, Any] | None = None
    response_body: Any = None
    latency_ms: StrictInt = Field(default=0, ge=0, le=86_400_000)
    reason: ShortText | None = None
    context: dict[str, Any] | None = None


ProviderId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ConnectGrantPolicyBody(_Strict):
    """Connect sessions accept only the two TTL bounds (the user picks within them)."""

    max_ttl_seconds: StrictInt | None = Field(default=None, gt=0, le=MAX_TTL_SECONDS)
    default_ttl_seconds: StrictInt | None = Field(default=None, gt=0, le=MAX_TTL_SECONDS)


class ConnectMetadataBody(_Strict):
    ip_address: Annotated[str, StringConstraints(max_length=64)] | None = None
    user_agent: Annotated[str, StringConstraints(max_length=512)] | None = None


class ConnectSessionBody(_Strict):
    allowed_providers: Annotated[list[ProviderId], Field(min_length=1, max_length=50)] | None = None
    return_url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    allowed_origin: Annotated[str, StringConstraints(max_length=512)] | None = None
    metadata: ConnectMetadataBody | None = None
    grant_policy: ConnectGrantPolicyBody | None = None
    required_scopes: (
        dict[ProviderId, list[Annotated[str, StringConstraints(min_length=1, max_length=512)]]]
        | None
    ) = None
    switch_account: StrictBool = False
    repair_grant_id: UUID | None = None
    direct: StrictBool = False
    allow_user_policy_rules: StrictBool = True
    user_token: Annotated[str, StringConstraints(max_length=16_384)] | None = None
    # Accepted so that clients sending them get a clear answer rather than a 422.
    agent: Annotated[str, StringConstraints(max_length=255)] | None = None
    requested_grant: dict[str, Any] | None = None
    delegable: StrictBool | None = None
    scope_constraint: list[str] | None = None


class ConnectPollBody(_Strict):
    session_token: Annotated[str, StringConstraints(min_length=1, max_length=200)]
