"""``secrets.*``: managed secrets (an app's API keys and key pairs) and their credentials.

Credential values are write-only: ``secrets.set-credential`` accepts them (``value`` for a
single-field secret, ``values`` for several fields) and no operation returns them; answers
and audit rows name fields and ids, never contents. The CLI names a secret by its id alone,
so the operations on one secret find it across apps and then treat a secret in an app the
operator may not see exactly like an unknown id.
"""

from __future__ import annotations

from typing import Any

from pydantic import StrictBool

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import InvalidInput, NotFound
from grantvault_server.services import secrets as secret_service
from grantvault_server.services.admin.registry import AppParams, OpContext, Params, operation
from grantvault_server.services.apps import App
from grantvault_server.services.operators import Permission
from grantvault_server.services.secrets import ManagedSecret


class ListTemplates(Params):
    pass


class CreateSecret(AppParams):
    #: A template slug (``secrets.templates``); it fixes the injection.
    template: str | None = None
    slug: str | None = None
    name: str | None = None
    #: A custom secret's injection document (auth, header, format, fields, extra ...).
    injection: dict[str, Any] | None = None
    allowed_hosts: list[str] | None = None


class ListSecrets(AppParams):
    pass


class SecretRef(Params):
    managed_secret_id: str


class SetCredential(SecretRef):
    #: The raw value of a secret with one required field (``token``). Write-only.
    value: str | None = None
    #: The fields of a multi-field secret (basic, sigv4, extra fields). Write-only. Typed
    #: loosely so a wrong type is refused by the service with a message that names the
    #: field, never its content.
    values: dict[str, Any] | None = None
    #: Replace this credential (when the secret holds several).
    credential_id: str | None = None
    #: Add another credential instead of replacing the one there is.
    add: StrictBool = False
    label: str | None = None


async def _secret(ctx: OpContext, ident: str, permission: Permission) -> tuple[App, ManagedSecret]:
    """The secret ``ident`` if this principal may see its app (else the answer an unknown id
    gets, so an app-scoped operator learns nothing about other apps), with ``permission``
    checked on that app."""
    app, secret = await secret_service.find_secret_any_app(ctx.vault, ident)
    if not ctx.principal.can_see_app(app.id):
        raise NotFound("managed secret", ident, ErrorCode.SECRET_NOT_FOUND)
    await ctx.app(app.id, permission)
    return app, secret


@operation(
    "secrets.templates",
    "GET",
    "/secret-templates",
    permission="read",
    summary="List the ready-made managed-secret templates.",
)
async def list_templates(ctx: OpContext, params: ListTemplates) -> dict[str, Any]:  # noqa: ARG001
    ctx.require("read")
    # The vault's own set: a remote CLI lists what that server will accept.
    return {"templates": [t.model_dump(mode="json") for t in ctx.vault.templates.values()]}


@operation(
    "secrets.create",
    "POST",
    "/apps/{app}/secrets",
    permission="write",
    summary="Create a managed secret from a template or a custom definition.",
)
async def create_secret(ctx: OpContext, params: CreateSecret) -> dict[str, Any]:
    app = await ctx.app(params.app, "write")
    secret = await secret_service.create_secret(
        ctx.vault,
        app,
        ctx.actor,
        template=params.template,
        slug=params.slug,
        name=params.name,
        injection=params.injection,
        allowed_hosts=params.allowed_hosts,
    )
    return secret.as_dict()


@operation(
    "secrets.list",
    "GET",
    "/apps/{app}/secrets",
    permission="read",
    summary="List an app's managed secrets (never their values).",
)
async def list_secrets(ctx: OpContext, params: ListSecrets) -> dict[str, Any]:
    app = await ctx.app(params.app, "read")
    items = await secret_service.list_secrets(ctx.vault, app)
    return {"secrets": [s.as_dict(ids) for s, ids in items]}


@operation(
    "secrets.show",
    "GET",
    "/secrets/{managed_secret_id}",
    permission="read",
    summary="Show a managed secret's definition (never its value).",
)
async def show_secret(ctx: OpContext, params: SecretRef) -> dict[str, Any]:
    _, secret = await _secret(ctx, params.managed_secret_id, "read")
    async with ctx.vault.db.read() as conn:
        ids = await secret_service.credential_ids(conn, secret.id)
    return {**secret.as_dict(ids), "injection": secret.injection.model_dump(mode="json")}


@operation(
    "secrets.delete",
    "DELETE",
    "/secrets/{managed_secret_id}",
    permission="write",
    summary="Delete a managed secret with its credentials and grants.",
)
async def delete_secret(ctx: OpContext, params: SecretRef) -> dict[str, Any]:
    # The CLI asks for --yes first; over the API the DELETE itself is the confirmation.
    app, secret = await _secret(ctx, params.managed_secret_id, "write")
    removed = await secret_service.delete_secret(ctx.vault, app, secret, ctx.actor)
    return {"managed_secret_id": secret.id, "deleted": True, "active_grants_removed": removed}


def _credential_values(secret: ManagedSecret, params: SetCredential) -> dict[str, Any]:
    """The fields to store: ``values`` as given, or the single ``value`` as the ``token``
    field when that is the one field the secret needs (a bare API key)."""
    if (params.value is None) == (params.values is None):
        raise InvalidInput(
            "Give the credential as `value` (one field) or `values` (a JSON object)."
        )
    if params.values is not None:
        return params.values
    names = [f.name for f in secret.injection.fields]
    required = [f for f in secret.injection.fields if f.required]
    if names == ["token"] or (len(required) == 1 and "token" in names):
        return {"token": params.value}
    raise InvalidInput(
        f"This secret has several fields ({', '.join(names)}); pipe a JSON object "
        "(over the API: send them as `values`)."
    )


@operation(
    "secrets.set-credential",
    "POST",
    "/secrets/{managed_secret_id}/credential",
    permission="write",
    summary="Store a managed secret's credential (write-only; replacing keeps grants valid).",
)
async def set_credential(ctx: OpContext, params: SetCredential) -> dict[str, Any]:
    app, secret = await _secret(ctx, params.managed_secret_id, "write")
    credential_id = await secret_service.set_credential(
        ctx.vault,
        app,
        secret,
        _credential_values(secret, params),
        ctx.actor,
        credential_id=params.credential_id,
        add=params.add,
        label=params.label,
    )
    return {"managed_secret_id": secret.id, "credential_id": credential_id}
