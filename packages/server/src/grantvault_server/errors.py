"""The vault's error type: a stable code, an HTTP status and a message that says what to do.

Deep code raises :class:`VaultError`; one exception handler (``api.errors``) turns it into the
wire envelope ``{"error": code, "message": ..., **extra}``. Messages never contain secret
values: they name the field or the id, never the content.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from grantvault.types.errors import STATUS_BY_CODE, ErrorCode


class VaultError(Exception):
    """An error with a stable code; safe to show to the caller."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS_BY_CODE[code]
        #: Response headers the answer must carry (``Retry-After`` of a quota, budget headers).
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code.value, "message": self.message, **self.extra}


class NotFound(VaultError):
    """Something does not exist in the caller's app (or exists in another app: same answer)."""

    def __init__(
        self, what: str, ident: str, code: ErrorCode = ErrorCode.NOT_FOUND, *, hint: str = ""
    ) -> None:
        where = " in this app" if what != "app" else ""
        super().__init__(code, f"No {what} {ident!r}{where}.{' ' + hint if hint else ''}")


class InvalidInput(VaultError):
    """Input that can never succeed; the message names the field and the rule."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(ErrorCode.INVALID_REQUEST, message, **extra)


async def send_error_answer(
    send: Callable[[dict[str, Any]], Awaitable[None]],
    status: int,
    body: dict[str, Any],
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with the error envelope from plain ASGI middleware.

    The body-size guard, the admission gate and the rate limiter refuse a request before the
    application (and its exception handlers) runs; they share this one way of writing the
    envelope so the answer has the same shape as every other error.
    """
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
