"""Response shapes of the ``/sdk/*`` protocol.

The vault uses these as response models (they are what ``/openapi.json`` documents). The SDK
parses the grant answers (create, list, revoke) with them; the ``/sdk/token`` answer it checks
field by field instead (``parse_token_answer``), because it injects those values into a request.
They are lenient (``extra="ignore"``) so that an older SDK keeps working against a newer vault.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PrincipalType = Literal["user", "group", "system", "agent"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AdditionalInjection(_Wire):
    """An extra place to put a credential value: a header or a query parameter."""

    target: Literal["header", "query_param"]
    key: str
    value_source: str = Field(description='"token" or "additional_credentials.<field>"')


class TokenResponse(_Wire):
    """Answer of ``POST /sdk/token``: the credential and how to inject it."""

    access_token: str
    token_type: str = "Bearer"
    expires_in: int | None = None
    expires_at: str | None = None
    token_expires_at: str | None = None
    grant_expires_at: str | None = None
    scopes: list[str] = Field(default_factory=list)
    grant_id: str
    provider_id: str
    token_generation: str | None = None
    scope_mismatch: bool = False
    injection_header: str = "Authorization"
    injection_format: str = "Bearer {token}"
    additional_credentials: dict[str, str] | None = None
    additional_injections: list[AdditionalInjection] | None = None


class CreateGrantResult(_Wire):
    """Answer of ``POST /sdk/managed-secrets/{id}/grants``: the new grant."""

    grant_id: str
    principal_type: PrincipalType
    label: str | None
    created_at: str
    credential_id: str | None = None


class RevokeGrantResult(_Wire):
    """Answer of ``POST /sdk/oauth/grants/{id}/revoke``."""

    success: bool
    message: str
    grant_id: str
    revoked_at: str


class OAuthGrantItem(_Wire):
    """An OAuth grant in a grant list (``grant_kind="oauth"``)."""

    grant_kind: Literal["oauth"] = "oauth"
    grant_id: str
    provider_id: str
    scopes: list[str] = Field(default_factory=list)
    account_identifier: str | None = None
    account_display_name: str | None = None
    api_base_url: str | None = None
    status: str
    scope_mismatch: bool = False
    needs_reconnect: bool = False
    expires_at: str | None = None
    grant_expires_at: str | None = None
    created_at: str
    last_used_at: str | None = None
    principal_type: PrincipalType
    access_via: Literal["ownership", "oauth_delegation"] = "ownership"
    delegated_at: str | None = None
    delegated_agent_ids: list[str] = Field(default_factory=list)
    label: str | None = None
    credential_id: str | None = None
    grant_policy: dict[str, object] | None = None
    parent_grant_id: str | None = None
    depth: int = 0
    delegable: bool = False
    scope_constraint: list[str] | None = None


class ManagedSecretGrantItem(_Wire):
    """A managed-secret grant in a grant list (``grant_kind="managed_secret"``)."""

    grant_kind: Literal["managed_secret"] = "managed_secret"
    grant_id: str
    managed_secret_id: str
    managed_secret_slug: str
    managed_secret_name: str
    agent_id: str | None = None
    label: str | None = None
    status: str
    account_identifier: str | None = None
    grant_policy: dict[str, object] | None = None
    expires_at: str | None = None
    grant_expires_at: str | None = None
    created_at: str
    last_used_at: str | None = None
    principal_type: PrincipalType
    access_via: Literal["ownership", "ms_delegation"] = "ownership"
    delegated_at: str | None = None
    parent_grant_id: str | None = None
    depth: int = 0
    delegable: bool = False
    scope_constraint: list[str] | None = None
    credential_id: str | None = None
    credential_kind: Literal["developer", "end_user"] | None = None
    credential_label: str | None = None


#: One item of a grant list, told apart by ``grant_kind``.
GrantListItem = Annotated[
    OAuthGrantItem | ManagedSecretGrantItem, Field(discriminator="grant_kind")
]


class UnifiedGrantListResult(_Wire):
    """Answer of ``POST /sdk/grants/list``: one page of OAuth and managed-secret grants."""

    grants: list[GrantListItem]
    total: int
    limit: int
    offset: int
    has_more: bool
