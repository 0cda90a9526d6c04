"""The admin API (``/admin/v1``): every administrative operation, for operators.

One route per :class:`~grantvault_server.services.admin.registry.Operation`, built from the
registry so the API, the CLI (local and remote) and the OpenAPI document cannot drift apart:
path fields from the route template, the other inputs from the query string (``GET``,
``DELETE``) or the JSON body. Requests authenticate with ``Authorization: Bearer gvat_...``
(an operator's personal token); the answer is the operation's dictionary, exactly what
``grantvault ... --json`` prints. Errors use the ``/sdk`` envelope and codes. A refusal by
role or app scope is audited (``admin.refused``) before the 403 leaves.
"""

from __future__ import annotations

import inspect
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from grantvault.types.errors import ErrorCode
from grantvault_server.api.deps import get_vault
from grantvault_server.api.responses import errors
from grantvault_server.errors import VaultError
from grantvault_server.services import operators as operator_service
from grantvault_server.services.admin.catalog import load_all
from grantvault_server.services.admin.refusals import audit_refusal
from grantvault_server.services.admin.registry import OpContext, Operation
from grantvault_server.services.operators import Principal
from grantvault_server.services.vault import Vault

PREFIX = "/admin/v1"
TAG = "admin"
#: What every admin route can answer besides its success.
ADMIN = (400, 401, 403, 404, 405, 409, 413, 422, 429, 500, 503)


async def authenticate_operator(request: Request) -> Principal:
    """The operator behind ``Authorization: Bearer gvat_...`` (checked on every request)."""
    vault: Vault = await get_vault(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise VaultError(
            ErrorCode.INVALID_TOKEN,
            "Send an operator token as 'Authorization: Bearer gvat_...'; create one with "
            "`grantvault operators token create`.",
        )
    return await operator_service.authenticate_token(vault, token.strip())


PrincipalDep = Annotated[Principal, Depends(authenticate_operator)]


def _input_model(op: Operation) -> type[BaseModel] | None:
    """The operation's params without its path fields (what the query or body carries)."""
    fields = {
        name: (info.annotation, info)
        for name, info in op.params.model_fields.items()
        if name not in op.path_fields
    }
    if not fields:
        return None
    # A JSON body is strict (true is not 1, "5" is not 5), as every /sdk body; the query
    # string is text, so its numbers and booleans are parsed from their spelling.
    config = ConfigDict(**op.params.model_config, strict=op.method not in {"GET", "DELETE"})
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        f"{op.params.__name__}Input",
        __config__=config,
        **fields,
    )
    return model


def _endpoint(op: Operation) -> Any:
    """A FastAPI endpoint for ``op`` with a real signature, so the OpenAPI document shows
    its path, query and body fields."""
    model = _input_model(op)
    uses_query = op.method in {"GET", "DELETE"}

    async def endpoint(request: Request, principal: Principal, **kwargs: Any) -> Response:
        vault: Vault = await get_vault(request)
        values: dict[str, Any] = {k: kwargs[k] for k in op.path_fields}
        given = kwargs.get("inputs")
        if isinstance(given, BaseModel):
            values.update(given.model_dump(exclude_unset=True))
        try:
            params = op.params.model_validate(values)
        except ValidationError as exc:
            raise RequestValidationError(
                exc.errors(include_url=False, include_input=False)
            ) from None
        ctx = OpContext(vault=vault, principal=principal, actor=principal.actor)
        try:
            result = await op.handler(ctx, params)
        except VaultError as exc:
            if exc.code is ErrorCode.FORBIDDEN:
                await audit_refusal(vault, principal, op.name, values, exc)
            raise
        # Serialised once, with the CLI's rule for anything not JSON (``default=str``, as
        # ``cli._common.emit``), so the remote and local --json outputs stay identical.
        body = json.dumps(result, default=str, separators=(",", ":"), ensure_ascii=False)
        return Response(body.encode(), media_type="application/json")

    parameters = [
        inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request),
        inspect.Parameter("principal", inspect.Parameter.KEYWORD_ONLY, annotation=PrincipalDep),
    ]
    parameters += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str)
        for name in op.path_fields
    ]
    if model is not None:
        annotation: Any = Annotated[model, Query()] if uses_query else model
        parameters.append(
            inspect.Parameter("inputs", inspect.Parameter.KEYWORD_ONLY, annotation=annotation)
        )
    endpoint.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    endpoint.__name__ = op.name.replace(".", "_")
    return endpoint


def build_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=[TAG])
    for op in sorted(load_all().values(), key=lambda o: o.name):
        router.add_api_route(
            op.path,
            _endpoint(op),
            methods=[op.method],
            name=op.name,
            summary=op.summary,
            description=f"`grantvault {op.name.replace('.', ' ')}`. Needs the "
            f"{'owner' if op.permission == 'owner' else op.permission} permission.",
            responses=errors(base=ADMIN),
        )
    return router
