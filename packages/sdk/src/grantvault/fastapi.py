"""FastAPI integration: the request's ``Authorization: Bearer`` token is the end user's token
for every vault call made while handling that request.

::

    from fastapi import Depends, FastAPI
    from grantvault import App
    from grantvault.fastapi import GrantvaultFastAPI

    vault = GrantvaultFastAPI(base_url="http://127.0.0.1:8080")   # key from GRANTVAULT_API_KEY
    api = FastAPI()

    @api.get("/repos")
    async def repos(client: App = Depends(vault)):
        r = await client.request("GET", "https://api.github.com/user/repos", provider="github")
        return r.json()

``Depends(vault)`` requires the header (401 otherwise); ``Depends(vault.optional)`` allows
requests without one, which then carry no user token. The token lives in a ``ContextVar``:
each request (each task) sees only its own, so concurrent requests never mix users.

Needs the ``fastapi`` extra (``pip install 'grantvault[fastapi]'``). The dependency is built
on Starlette's ``Request``, which FastAPI passes to dependencies natively.
"""

from __future__ import annotations

from typing import Any

try:
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "grantvault.fastapi needs FastAPI: pip install 'grantvault[fastapi]'"
    ) from exc

from grantvault._client import App
from grantvault._context import request_user_token
from grantvault.exceptions import AlterSDKError

__all__ = ["AlterFastAPI", "GrantvaultFastAPI", "current_user_token"]


def current_user_token() -> str | None:
    """The end-user token of the request being handled (``None`` outside one)."""
    return request_user_token.get()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class GrantvaultFastAPI:
    """A FastAPI dependency that yields an :class:`App` bound to the caller's bearer token.

    Takes :class:`App`'s arguments (``api_key``, ``base_url``, ``caller``...), except
    ``user_token_getter``: the getter is the request's token.
    """

    def __init__(self, api_key: str | None = None, **kwargs: Any) -> None:
        if "user_token_getter" in kwargs:
            raise AlterSDKError(
                "Do not pass user_token_getter to GrantvaultFastAPI: the request's bearer "
                "token is the user token."
            )
        self._app = App(api_key, user_token_getter=request_user_token.get, **kwargs)

    @property
    def app(self) -> App:
        """The shared client (one per process; its HTTP pools are reused)."""
        return self._app

    @property
    def vault(self) -> App:
        """The shared client (alias of :attr:`app`)."""
        return self._app

    async def __call__(self, request: Request) -> App:
        """Dependency for routes that need a signed-in user: 401 without a bearer token."""
        token = _bearer(request)
        if token is None:
            raise HTTPException(
                status_code=401,
                detail="Not authenticated",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request_user_token.set(token)
        return self._app

    async def optional(self, request: Request) -> App:
        """Dependency for routes that also serve requests without a user."""
        request_user_token.set(_bearer(request))
        return self._app

    def set_user_token(self, token: str | None) -> None:
        """Set the user token of the current task by hand (non-HTTP entry points)."""
        request_user_token.set(token)

    async def close(self) -> None:
        """Close the shared client (from the app's lifespan shutdown)."""
        await self._app.close()


AlterFastAPI = GrantvaultFastAPI
