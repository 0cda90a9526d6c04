"""The administrative operations: one implementation per CLI command, served twice.

Every administrative act (``apps.create``, ``keys.rotate``, ``policies.test`` ...) is one
:class:`Operation`: a pydantic model of its inputs and an async handler that returns exactly
the JSON object the CLI prints with ``--json``. The same registry is served

* by the admin API (``api.admin``): one route per operation under ``/admin/v1``, authenticated
  by an operator token or portal session and authorised by role, and
* by the CLI (``cli._invoke``): locally on the database (the operator on this machine acts as
  an owner, as before), or, with ``GRANTVAULT_SERVER`` and ``GRANTVAULT_TOKEN``, over HTTP
  to that route; the human-readable output is rendered from the same dictionary, so both
  modes print the same thing.

Handlers authorise themselves through :class:`OpContext` (``ctx.app(...)`` resolves an app the
principal may see and checks the permission on it; ``ctx.require(...)`` checks a vault-wide
one), so an app-scoped admin cannot tell another app's objects from unknown ones.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from grantvault_server.errors import NotFound
from grantvault_server.services import apps as app_service
from grantvault_server.services.apps import App
from grantvault_server.services.operators import Permission, Principal, authorize
from grantvault_server.services.vault import Vault


class Params(BaseModel):
    """Base of every operation's inputs: unknown fields are refused, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AppParams(Params):
    """Inputs of an operation on one app's objects."""

    app: str


@dataclass
class OpContext:
    """Who is acting and on which vault; ``actor`` is what the audit rows record."""

    vault: Vault
    principal: Principal
    actor: dict[str, Any]

    def require(self, permission: Permission) -> None:
        authorize(self.principal, permission, None)

    async def app(self, ident: str, permission: Permission) -> App:
        """The app named by name or id, if this principal may see it; else "not found"."""
        try:
            app = await app_service.get_app(self.vault, ident)
        except NotFound:
            raise NotFound("app", ident, hint="See `grantvault apps list`.") from None
        if not self.principal.can_see_app(app.id):
            raise NotFound("app", ident, hint="See `grantvault apps list`.")
        authorize(self.principal, permission, app.id)
        return app


Handler = Callable[[OpContext, Any], Awaitable[dict[str, Any]]]
P = TypeVar("P", bound=Params)


@dataclass(frozen=True)
class Operation:
    name: str
    method: str
    #: Route under ``/admin/v1``; ``{field}`` segments are filled from the params.
    path: str
    params: type[Params]
    handler: Handler
    permission: Permission
    summary: str

    @property
    def path_fields(self) -> tuple[str, ...]:
        return tuple(re.findall(r"{(\w+)}", self.path))

    def url(self, values: dict[str, Any]) -> str:
        """The route with its path fields filled in (percent-encoded)."""
        from urllib.parse import quote

        return re.sub(r"{(\w+)}", lambda m: quote(str(values[m.group(1)]), safe=""), self.path)


OPERATIONS: dict[str, Operation] = {}


def operation(
    name: str, method: str, path: str, *, permission: Permission, summary: str
) -> Callable[[Callable[[OpContext, P], Awaitable[dict[str, Any]]]], Any]:
    """Register a handler; its second parameter's annotation is the params model."""

    def register(handler: Callable[[OpContext, P], Awaitable[dict[str, Any]]]) -> Any:
        import inspect

        hints = inspect.get_annotations(handler, eval_str=True)
        params = hints["params"]
        if name in OPERATIONS:
            raise RuntimeError(f"operation {name} registered twice")
        OPERATIONS[name] = Operation(
            name,
            method,
            path,
            params,
            handler,
            permission,
            summary,
        )
        return handler

    return register
