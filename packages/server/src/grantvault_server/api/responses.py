"""What the OpenAPI document says each route can answer besides its success.

Every error leaves through ``api.errors`` as one envelope; the models here describe it so that
``/openapi.json`` lists every status a route can send (the fuzzing test in
``tests/test_openapi_fuzz.py`` fails on any status or body the document does not describe).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Match

from grantvault.types.errors import STATUS_BY_CODE


class ErrorEnvelope(BaseModel):
    """Every error answer: a stable code, a message saying what to do, and code-specific
    fields beside them (``detail`` on 422, ``candidates`` on ``ambiguous_grant``, ...)."""

    model_config = ConfigDict(extra="allow", title="ErrorEnvelope")

    error: str = Field(description="A stable error code; see docs/protocol.md#error-codes.")
    message: str = Field(description="What went wrong and what to do about it.")


_WHY = {
    400: "A request the vault understood but refuses (see the code).",
    401: "The API key, signature, timestamp or nonce failed; or a user token did not verify.",
    403: "The grant or user may not be used (revoked, expired, disabled, policy).",
    404: "No such grant, secret or session in this app, or an unknown path.",
    405: "The path exists for other methods; `Allow` lists them.",
    409: "A conflict: ambiguous grant, refresh in progress, missing credential, ...",
    413: "The body is larger than GRANTVAULT_MAX_BODY_BYTES.",
    422: "The body failed validation (`invalid_request`), or a blocked destination.",
    429: "A rate limit was reached; retry after `Retry-After` seconds.",
    500: "The stored credential failed its integrity check, or an unexpected error.",
    501: "The public client has this call; this vault does not implement it yet.",
    503: "Storage, the audit chain, the identity provider or an OAuth provider is unavailable,"
    " or the server is sealed; retry after `Retry-After` seconds.",
}

#: Answers every signed ``/sdk/*`` route can give whatever it does: authentication (401),
#: wrong method (405), body size (413), validation (422), rate limit (429), storage (503),
#: and the catch-all 500.
SIGNED = (401, 405, 413, 422, 429, 500, 503)


def codes_for(status: int) -> list[str]:
    """The error codes sent with ``status`` (the contract in ``STATUS_BY_CODE``)."""
    return sorted(code.value for code, s in STATUS_BY_CODE.items() if s == status)


def errors(*statuses: int, base: tuple[int, ...] = SIGNED) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the envelope for each status, with the codes it carries."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*base, *statuses}):
        codes = codes_for(status)
        if status == 429 and not codes:
            codes = ["rate_limit_exceeded"]
        description = _WHY.get(status, "An error.")
        if codes:
            description += " Codes: " + ", ".join(f"`{c}`" for c in codes) + "."
        out[status] = {"model": ErrorEnvelope, "description": description}
    return out


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405: every method some route serves on this path.

    Starlette names only the methods of the first route whose path matched, and a path here
    can have one route per method (``api.unimplemented``), so each method is probed against
    every route (only on the 405 path, never on a served request).
    """
    allowed = []
    for method in _METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)
