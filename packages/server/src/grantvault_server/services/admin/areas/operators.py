"""``operators.*``: operator accounts and their personal tokens.

Owners manage every operator. Any operator may list, create and revoke their own tokens
(a token never carries more than its operator, see ``services.operators``). Passwords are
write-only: accepted here, never returned.
"""

from __future__ import annotations

from typing import Any

from pydantic import StrictBool

from grantvault_server.services import operators as operator_service
from grantvault_server.services.admin.durations import parse_duration
from grantvault_server.services.admin.registry import OpContext, Params, operation


class CreateOperator(Params):
    name: str
    role: str
    password: str | None = None
    apps: list[str] | None = None
    sso_subject: str | None = None


class OperatorRef(Params):
    operator: str


class UpdateOperator(OperatorRef):
    role: str | None = None
    apps: list[str] | None = None
    all_apps: StrictBool = False
    password: str | None = None
    disabled: StrictBool | None = None


class ListOperators(Params):
    pass


class CreateToken(OperatorRef):
    name: str
    role: str | None = None
    apps: list[str] | None = None
    expires_in: str | None = None


class ListTokens(Params):
    operator: str | None = None


class TokenRef(Params):
    token_id: str


def _self_or_owner(ctx: OpContext, operator: str) -> None:
    """Owners act on anyone; others only on themselves (their own tokens)."""
    me = ctx.principal.operator
    if operator not in {me.name, me.id}:
        ctx.require("owner")


@operation(
    "operators.create", "POST", "/operators", permission="owner", summary="Create an operator."
)
async def create_operator(ctx: OpContext, params: CreateOperator) -> dict[str, Any]:
    ctx.require("owner")
    if params.password is None and params.sso_subject is None:
        from grantvault_server.errors import InvalidInput

        raise InvalidInput("Give the operator a password or a single sign-on identity.")
    created = await operator_service.create_operator(
        ctx.vault,
        params.name,
        params.role,
        actor=ctx.actor,
        password=params.password,
        apps=params.apps,
        sso_subject=params.sso_subject,
    )
    return created.public()


@operation("operators.list", "GET", "/operators", permission="owner", summary="List operators.")
async def list_operators(ctx: OpContext, params: ListOperators) -> dict[str, Any]:  # noqa: ARG001
    ctx.require("owner")
    return {"operators": [o.public() for o in await operator_service.list_operators(ctx.vault)]}


@operation(
    "operators.show", "GET", "/operators/{operator}", permission="read", summary="Show an operator."
)
async def show_operator(ctx: OpContext, params: OperatorRef) -> dict[str, Any]:
    _self_or_owner(ctx, params.operator)
    return (await operator_service.get_operator(ctx.vault, params.operator)).public()


@operation(
    "operators.update",
    "PATCH",
    "/operators/{operator}",
    permission="owner",
    summary="Change an operator's role, apps, password or state.",
)
async def update_operator(ctx: OpContext, params: UpdateOperator) -> dict[str, Any]:
    ctx.require("owner")
    updated = await operator_service.update_operator(
        ctx.vault,
        params.operator,
        actor=ctx.actor,
        role=params.role,
        apps=params.apps,
        all_apps=params.all_apps,
        password=params.password,
        disabled=params.disabled,
    )
    return updated.public()


@operation(
    "operators.delete",
    "DELETE",
    "/operators/{operator}",
    permission="owner",
    summary="Delete an operator (their tokens and sessions die with them).",
)
async def delete_operator(ctx: OpContext, params: OperatorRef) -> dict[str, Any]:
    ctx.require("owner")
    target = await operator_service.get_operator(ctx.vault, params.operator)
    await operator_service.delete_operator(ctx.vault, target.id, actor=ctx.actor)
    return {"operator_id": target.id, "name": target.name, "deleted": True}


@operation(
    "operators.unlock",
    "POST",
    "/operators/{operator}/unlock",
    permission="owner",
    summary="Lift a sign-in lockout.",
)
async def unlock_operator(ctx: OpContext, params: OperatorRef) -> dict[str, Any]:
    ctx.require("owner")
    return (
        await operator_service.unlock_operator(ctx.vault, params.operator, actor=ctx.actor)
    ).public()


@operation(
    "operators.token.create",
    "POST",
    "/operators/{operator}/tokens",
    permission="read",
    summary="Create a personal API token (shown once).",
)
async def create_token(ctx: OpContext, params: CreateToken) -> dict[str, Any]:
    _self_or_owner(ctx, params.operator)
    expires = parse_duration(params.expires_in, "expires_in") if params.expires_in else None
    info, token = await operator_service.create_token(
        ctx.vault,
        params.operator,
        params.name,
        actor=ctx.actor,
        role=params.role,
        apps=params.apps,
        expires_in=expires,
    )
    return {"token": token, **info.public()}


@operation(
    "operators.token.list",
    "GET",
    "/operator-tokens",
    permission="read",
    summary="List personal tokens (prefixes only): an owner's all, anyone else's own.",
)
async def list_tokens(ctx: OpContext, params: ListTokens) -> dict[str, Any]:
    who = params.operator
    if who is not None:
        _self_or_owner(ctx, who)
    elif ctx.principal.role != "owner":
        who = ctx.principal.operator.id  # not an owner: only one's own tokens
    tokens = await operator_service.list_tokens(ctx.vault, who)
    return {"tokens": [t.public() for t in tokens]}


@operation(
    "operators.token.revoke",
    "POST",
    "/operator-tokens/{token_id}/revoke",
    permission="read",
    summary="Revoke a personal token at once.",
)
async def revoke_token(ctx: OpContext, params: TokenRef) -> dict[str, Any]:
    tokens = await operator_service.list_tokens(ctx.vault)
    target = next((t for t in tokens if t.id == params.token_id), None)
    if target is not None:
        _self_or_owner(ctx, target.operator_id)
    else:
        ctx.require("owner")
    return (
        await operator_service.revoke_token(ctx.vault, params.token_id, actor=ctx.actor)
    ).public()
