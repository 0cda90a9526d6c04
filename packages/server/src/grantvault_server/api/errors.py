"""The single place where errors become HTTP responses (the ``/sdk`` error envelope)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from grantvault.types.errors import ErrorCode
from grantvault_server.api.responses import allowed_methods
from grantvault_server.errors import VaultError
from grantvault_server.services.storage_faults import UnexpectedConflict, storage_unavailable

log = logging.getLogger(__name__)


def _response(
    request: Request, status: int, body: dict[str, Any], extra: dict[str, str] | None = None
) -> JSONResponse:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None and status >= 400:
        metrics.denials.labels(str(body.get("error"))).inc()
    headers = {"Cache-Control": "no-store", **(extra or {})}
    if status in {503}:
        # The error's own wait (a provider cool-down) when it has one, else a short default.
        wait = body.get("retry_after_seconds")
        headers["Retry-After"] = str(wait) if isinstance(wait, int) and wait > 0 else "5"
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    details: list[dict[str, Any]] = []
    for err in exc.errors()[:20]:
        loc = [str(p) for p in err.get("loc", ())]
        # Never echo the offending input: it may be a secret pasted in the wrong field.
        details.append({"loc": loc, "msg": err.get("msg", ""), "type": err.get("type", "")})
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(p for p in first["loc"] if p != "body") or "body"
    return f"Invalid request: {where}: {first['msg']}.", details


def install(app: FastAPI) -> None:
    @app.exception_handler(VaultError)
    async def _vault_error(request: Request, exc: VaultError) -> JSONResponse:
        return _response(request, exc.status, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = _validation_message(exc)
        # ``detail`` keeps FastAPI's shape so clients that probe 422 bodies keep working.
        return _response(
            request,
            422,
            {"error": ErrorCode.INVALID_REQUEST.value, "message": message, "detail": details},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            404: ErrorCode.NOT_FOUND,
            405: ErrorCode.METHOD_NOT_ALLOWED,
            413: ErrorCode.PAYLOAD_TOO_LARGE,
        }.get(exc.status_code, ErrorCode.INVALID_REQUEST)
        message = {
            404: "No such endpoint; see /openapi.json for the protocol.",
            405: "This endpoint does not accept that HTTP method.",
        }.get(exc.status_code, str(exc.detail))
        # FastAPI's "error parsing the body" is a 400; invalid_request is always sent as 422.
        status = 422 if exc.status_code == 400 else exc.status_code
        response = _response(request, status, {"error": code.value, "message": message})
        if exc.status_code == 405:  # RFC 9110 15.5.6: a 405 lists the methods that would work
            response.headers["Allow"] = allowed_methods(request)
        return response

    @app.exception_handler(UnexpectedConflict)
    async def _constraint(request: Request, exc: UnexpectedConflict) -> JSONResponse:
        # A constraint (or, on SQLite, a trigger) refused a write that no service expected to
        # conflict: the same fault PostgreSQL reports for a trigger exception, so the same
        # answer on both backends (storage.db.translate_error), never a backend-dependent 500.
        log.error(
            "the database refused a write",
            extra={"path": request.url.path, "error": type(exc.orig).__name__},
        )
        error = storage_unavailable()
        return _response(request, error.status, error.body())

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc, extra={"path": request.url.path})
        return _response(
            request,
            500,
            {
                "error": ErrorCode.INTERNAL_ERROR.value,
                "message": "The vault hit an unexpected error; it was logged. Retry or report it.",
            },
        )
