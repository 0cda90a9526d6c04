"""The ``/sdk/*`` routes spoken by the ``grantvault`` SDK and the public ``alter-sdk`` client.

Every route here depends on :func:`api.deps.authenticate` (key, signature, nonce) and works
inside the caller's app only: ids of another app answer exactly like unknown ids.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    model_validator,
)

from grantvault.types.errors import ErrorCode
from grantvault.types.wire import (
    CreateGrantResult,
    RevokeGrantResult,
    TokenResponse,
    UnifiedGrantListResult,
)
from grantvault_server.api.deps import CallerDep, VaultDep, authenticate_deferred_nonce
from grantvault_server.api.responses import errors
from grantvault_server.api.schemas import (
    ApiCallAuditBody,
    ConnectPollBody,
    ConnectSessionBody,
    CreateGrantBody,
    GroupPrincipalBody,
    ListGrantsBody,
    RevokeBody,
    SystemPrincipalBody,
    TokenBody,
    UserPrincipalBody,
    _reject_nul,
)
from grantvault_server.errors import InvalidInput, VaultError
from grantvault_server.providers.oauth_catalog import catalog_item, load_oauth_catalog
from grantvault_server.services import audit_log, connect, grants as grant_service, tokens
from grantvault_server.services.identity.service import active_idp_id, resolve_user
from grantvault_server.services.secrets import get_secret

router = APIRouter(prefix="/sdk", tags=["sdk"])

#: Ids and slugs in paths: anything else cannot exist, so it is "not found" without a query.
_ID = re.compile(r"^[a-z0-9-]{1,64}$")


def _body_schema(model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAPI request body for a route that validates its body itself, plus the schemas it uses."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components = {**schema.pop("$defs", {}), model.__name__: schema}
    body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        },
    }
    return body, components


_TOKEN_BODY, TOKEN_SCHEMAS = _body_schema(TokenBody)


# The hottest route takes the raw request: authentication is the first statement (same stack
# as every /sdk route) and the body is validated with the same model, but FastAPI's
# dependency solver is skipped; on this route it cost ~20% of a retrieval (decision 0006).
@router.post(
    "/token",
    response_model=TokenResponse,
    response_model_exclude_none=True,
    openapi_extra={"requestBody": _TOKEN_BODY},
    responses=errors(400, 403, 404, 409),
)
async def post_token(request: Request) -> Response:
    """Resolve a grant and return its credential with injection instructions."""
    vault = request.app.state.vault
    caller = await authenticate_deferred_nonce(request, vault)
    try:
        body = TokenBody.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None
    if (body.grant_id is None) == (body.provider_id is None):
        raise InvalidInput("Send exactly one of grant_id and provider_id.")
    try:
        result = await tokens.retrieve(
            vault,
            caller.app,
            caller.actor,
            tokens.TokenRequest(
                method=body.request.method,
                url=body.request.url,
                grant_id=str(body.grant_id) if body.grant_id else None,
                provider_id=body.provider_id,
                label=body.label,
                account=body.account,
                reason=body.reason,
                user_token=body.user_token,
                caller_ip=client[0] if (client := request.scope.get("client")) else None,
            ),
            nonce=tokens.PendingNonce(caller.key.id, caller.nonce, caller.key.last_used_at),
        )
    except VaultError:
        request.app.state.metrics.retrievals.labels("denied").inc()
        raise
    request.app.state.metrics.retrievals.labels("success").inc()
    # Returned as a Response: the service builds exactly the wire shape (see TokenResponse),
    # so FastAPI's second validation pass would only cost time on the hottest route.
    return JSONResponse({k: v for k, v in result.items() if v is not None})


@router.post(
    "/managed-secrets/{managed_secret_id}/grants",
    response_model=CreateGrantResult,
    responses=errors(400, 403, 404, 409),
)
async def post_managed_secret_grant(
    managed_secret_id: str, body: CreateGrantBody, caller: CallerDep, vault: VaultDep
) -> dict[str, Any]:
    """Grant a principal the use of a managed secret."""
    if not _ID.fullmatch(managed_secret_id):
        raise VaultError(ErrorCode.SECRET_NOT_FOUND, "No managed secret with that id in this app.")
    secret = await get_secret(vault, caller.app, managed_secret_id)
    principal = body.principal
    if isinstance(principal, SystemPrincipalBody):
        principal_type, principal_id, idp_id = "system", None, None
    elif isinstance(principal, GroupPrincipalBody):
        principal_type, principal_id, idp_id = (
            "group",
            principal.external_group_id,
            principal.idp_id or await active_idp_id(vault, caller.app.id),
        )
    elif isinstance(principal, UserPrincipalBody):
        identity = await resolve_user(vault, caller.app.id, principal.user_token)
        principal_type, principal_id, idp_id = "user", identity.subject, identity.idp_id
    else:
        raise VaultError(
            ErrorCode.UNSUPPORTED_PRINCIPAL,
            "Agent principals are not supported by this vault yet; grant to the system or a group.",
        )
    policy = body.grant_policy or None
    return await grant_service.create_grant(
        vault,
        caller.app,
        secret,
        caller.actor,
        principal_type=principal_type,
        principal_id=principal_id,
        idp_id=idp_id,
        label=principal.label,
        policy=grant_service.GrantPolicy(
            expires_at=policy.expires_at,
            max_ttl_seconds=policy.max_ttl_seconds,
            default_ttl_seconds=policy.default_ttl_seconds,
        )
        if policy
        else None,
        credential_id=str(body.credential_id) if body.credential_id else None,
    )


@router.post("/grants/list", response_model=UnifiedGrantListResult, responses=errors(400, 403))
async def post_grants_list(
    body: ListGrantsBody, caller: CallerDep, vault: VaultDep
) -> dict[str, Any]:
    """List the app's grants (managed-secret grants; OAuth grants arrive with OAuth Connect)."""
    identity = (
        await resolve_user(vault, caller.app.id, body.user_token) if body.user_token else None
    )
    return await grant_service.list_grants(
        vault,
        caller.app,
        identity=identity,
        provider=body.provider_id,
        status=body.status,
        label=body.label,
        account=body.account,
        limit=body.limit,
        offset=body.offset,
    )


@router.post(
    "/oauth/grants/{grant_id}/revoke",
    response_model=RevokeGrantResult,
    responses=errors(400, 403, 404),
)
async def post_revoke_grant(
    grant_id: str, body: RevokeBody, caller: CallerDep, vault: VaultDep
) -> dict[str, Any]:
    """Revoke a grant; the next retrieval with it answers ``grant_revoked``."""
    if not _ID.fullmatch(grant_id):
        raise VaultError(ErrorCode.GRANT_NOT_FOUND, "No grant with that id in this app.")
    identity = (
        await resolve_user(vault, caller.app.id, body.user_token) if body.user_token else None
    )
    return await grant_service.revoke_grant(
        vault, caller.app, grant_id, caller.actor, reason=body.reason, identity=identity
    )


@router.post("/oauth/audit/api-call", status_code=202, responses=errors(404))
async def post_api_call_audit(
    body: ApiCallAuditBody, caller: CallerDep, vault: VaultDep
) -> dict[str, Any]:
    """Store the SDK's record of a provider call (credentials stripped again here)."""
    await audit_log.record_api_call(vault, caller.app, caller.actor, body.model_dump(mode="json"))
    return {"accepted": True}


@router.get("/oauth/provider-catalog", responses=errors())
async def get_provider_catalog(caller: CallerDep) -> dict[str, Any]:  # noqa: ARG001
    """Every OAuth provider this vault knows, with scopes described in plain words."""
    return {"providers": {pid: catalog_item(spec) for pid, spec in load_oauth_catalog().items()}}


@router.post("/oauth/connect/session", responses=errors(400, 403, 404))
async def post_connect_session(
    body: ConnectSessionBody, caller: CallerDep, vault: VaultDep
) -> dict[str, Any]:
    """Start a Connect session: the end user finishes it at ``connect_url``."""
    if body.agent is not None or body.delegable or body.scope_constraint:
        raise VaultError(
            ErrorCode.UNSUPPORTED_PRINCIPAL,
            "Delegating a connection to an agent is not supported by this vault yet; omit "
            "agent, delegable and scope_constraint.",
        )
    if body.requested_grant is not None:
        raise InvalidInput("requested_grant (labels and restrictions) is not supported yet.")
    principal = await connect_principal(vault, caller, body.user_token)
    return await connect.create_session(
        vault,
        caller.app,
        caller.actor,
        connect.SessionRequest(
            allowed_providers=body.allowed_providers,
            return_url=body.return_url,
            allowed_origin=body.allowed_origin,
            metadata=body.metadata.model_dump(exclude_none=True) if body.metadata else None,
            max_ttl_seconds=body.grant_policy.max_ttl_seconds if body.grant_policy else None,
            default_ttl_seconds=body.grant_policy.default_ttl_seconds
            if body.grant_policy
            else None,
            required_scopes=body.required_scopes,
            switch_account=body.switch_account,
            repair_grant_id=str(body.repair_grant_id) if body.repair_grant_id else None,
            direct=body.direct,
        ),
        principal,
    )


async def connect_principal(vault: Any, caller: Any, user_token: str | None) -> connect.Principal:
    """The owner of grants made by a session: the end user of ``user_token``, else the app."""
    if user_token is None:
        return connect.Principal()
    identity = await resolve_user(vault, caller.app.id, user_token)
    return connect.Principal("user", identity.subject, identity.idp_id)


@router.post("/oauth/connect/session/poll", responses=errors(404))
async def post_connect_poll(
    body: ConnectPollBody, caller: CallerDep, vault: VaultDep
) -> dict[str, Any]:
    """The session's state: pending, completed (with grants), error or expired."""
    return await connect.poll_session(vault, caller.app, body.session_token)


class ScopeMismatchBody(BaseModel):
    """What ``alter-sdk`` sends after a provider's ``403 insufficient_scope``.

    Unknown keys are ignored, not refused: the client sends this in the background and
    swallows any error, so a field a newer client adds must not make the report vanish.
    Bounds are the client's own clamps (50 scopes of 256 characters, 4,096 and 2,048
    characters for the header and URL).
    """

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        _reject_nul(data)
        return data

    provider_status_code: Annotated[StrictInt, Field(ge=100, le=599)]
    provider_error_code: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    missing_scopes: (
        Annotated[list[Annotated[str, StringConstraints(max_length=256)]], Field(max_length=50)]
        | None
    ) = None
    raw_www_authenticate: Annotated[str, StringConstraints(max_length=4096)] | None = None
    api_endpoint: Annotated[str, StringConstraints(max_length=2048)] = ""
    detection_source: Annotated[str, StringConstraints(max_length=64)] | None = None
    sdk_correlation_id: Annotated[str, StringConstraints(max_length=128)] | None = None


@router.post(
    "/grants/{grant_id}/report-scope-mismatch",
    status_code=204,
    response_class=Response,
    responses=errors(404),
)
async def post_report_scope_mismatch(
    grant_id: str, body: ScopeMismatchBody, caller: CallerDep, vault: VaultDep
) -> Response:
    """Flag a grant whose provider refused a call for a missing scope (``alter-sdk`` sends
    this in the background); the flag shows as ``scope_mismatch`` in grant lists."""
    if not _ID.fullmatch(grant_id):
        raise VaultError(ErrorCode.GRANT_NOT_FOUND, "No grant with that id in this app.")
    await grant_service.report_scope_mismatch(
        vault,
        caller.app,
        grant_id,
        caller.actor,
        grant_service.ScopeMismatchReport(
            provider_status_code=body.provider_status_code,
            provider_error_code=body.provider_error_code,
            missing_scopes=body.missing_scopes,
            api_endpoint=body.api_endpoint,
            correlation_id=body.sdk_correlation_id,
        ),
    )
    return Response(status_code=204)
