"""End-user identity JSON routes: ``/sdk/auth/*`` (signed by the app) and the IdP's
deprovisioning webhook.

Two audiences, two authentications:

* ``POST /sdk/auth/session|poll|verify-token``: the app, HMAC-signed (``api.deps``);
* ``POST /webhooks/idp/{app_id}``: the IdP, with a Standard Webhooks signature.

The sign-in pages the user's browser visits (``GET /sdk/auth/start|callback|result``) are
in :mod:`grantvault_server.web.signin`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from grantvault_server.api.deps import CallerDep, VaultDep
from grantvault_server.api.responses import errors
from grantvault_server.services import signin
from grantvault_server.services.identity import webhooks
from grantvault_server.services.identity.service import resolve_user

router = APIRouter(tags=["identity"])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthSessionBody(_Strict):
    """``authenticate()`` sends exactly ``{}``."""


class AuthPollBody(_Strict):
    session_token: Annotated[str, Field(min_length=1, max_length=256)]
    #: Long-poll budget; values above 30 000 are treated as 30 000.
    wait_ms: Annotated[StrictInt, Field(ge=0)] | None = None


class VerifyTokenBody(_Strict):
    # Longer than any accepted token, so an oversized one gets the verifier's 401.
    token: Annotated[str, Field(min_length=1, max_length=65_536)]


@router.post("/sdk/auth/session", status_code=201, responses=errors(400, 409))
async def post_auth_session(
    _body: AuthSessionBody, caller: CallerDep, vault: VaultDep
) -> dict[str, Any]:
    """Start a brokered end-user sign-in; ``auth_url`` goes to the user's browser."""
    return await signin.create_session(vault, caller.app)


@router.post("/sdk/auth/poll", responses=errors(404))
async def post_auth_poll(body: AuthPollBody, caller: CallerDep, vault: VaultDep) -> dict[str, Any]:
    """The sign-in's status, waiting up to ``wait_ms`` (30 s at most) while pending."""
    return await signin.poll(vault, caller.app, body.session_token, body.wait_ms)


@router.post("/sdk/auth/verify-token", responses=errors(400, 403))
async def post_verify_token(
    body: VerifyTokenBody, caller: CallerDep, vault: VaultDep
) -> dict[str, Any]:
    """The verified user id (``sub``) of an end user's JWT, or 401 ``jwt_validation_error``."""
    identity = await resolve_user(vault, caller.app.id, body.token, actor=caller.actor)
    return {"sub": identity.subject}


@router.post("/webhooks/idp/{app_id}", responses=errors(400, 403, 404, 409))
async def post_idp_webhook(app_id: str, request: Request, vault: VaultDep) -> JSONResponse:
    """Deprovisioning events from the app's IdP (signed; see ``services.identity.webhooks``)."""
    body = await request.body()
    result = await webhooks.receive(vault, app_id, request.headers, body)
    return JSONResponse(result)
