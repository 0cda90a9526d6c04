"""What the MCP and LangChain integrations share: a context bound to one provider, and the
wrapping of a tool function (hide the context parameter, set the audit context, turn a
missing grant into an answer that carries a fresh Connect URL)."""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from grantvault._client import App
from grantvault._context import audit_context
from grantvault.enums import HttpMethod
from grantvault.exceptions import (
    AmbiguousGrantError,
    GrantNotFoundError,
    NoDelegatedGrantError,
    ScopeReauthRequiredError,
)

log = logging.getLogger("grantvault")


class ProviderContext:
    """Injected into a tool: ``request()`` with the provider (and label) already chosen.

    Not built by hand: the ``tool`` decorators of ``grantvault.mcp`` and
    ``grantvault.langchain`` create one per call and hide the parameter from the schema.
    """

    __slots__ = ("_context", "_label", "_provider", "_vault")

    def __init__(
        self,
        vault: App,
        *,
        provider: str,
        label: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        self._vault = vault
        self._provider = provider
        self._label = label
        self._context = dict(context) if context else None

    @property
    def provider(self) -> str:
        """The provider id (or managed-secret slug) the tool is bound to."""
        return self._provider

    @property
    def label(self) -> str | None:
        """The sibling-grant label the tool is bound to, if any."""
        return self._label

    @property
    def vault(self) -> App:
        """The client behind this context."""
        return self._vault

    def __repr__(self) -> str:
        tool = (self._context or {}).get("tool", "?")
        return f"ProviderContext(provider={self._provider!r}, tool={tool!r})"

    async def request(
        self,
        method: HttpMethod | str,
        url: str,
        *,
        account: str | None = None,
        json: Any = None,
        body: bytes | None = None,
        extra_headers: dict[str, str] | None = None,
        query_params: dict[str, Any] | None = None,
        path_params: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> httpx.Response:
        """:meth:`App.request` with ``provider``, ``label`` and the audit context filled in."""
        return await self._vault.request(
            method,
            url,
            provider=self._provider,
            label=self._label,
            account=account,
            json=json,
            body=body,
            extra_headers=extra_headers,
            query_params=query_params,
            path_params=path_params,
            reason=reason,
            context=self._context,
        )


def split_context_parameter(
    fn: Callable[..., Any], *, required: bool
) -> tuple[str | None, inspect.Signature, dict[str, Any]]:
    """The name of ``fn``'s :class:`ProviderContext` parameter, and its signature and
    resolved annotations without it (what a framework may show in a tool schema)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to the raw strings
        hints = dict(getattr(fn, "__annotations__", {}))
    signature = inspect.signature(fn)
    name: str | None = None
    kept: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        annotation = hints.get(param.name, param.annotation)
        is_context = annotation is ProviderContext or (
            isinstance(annotation, str)
            and annotation.rsplit(".", 1)[-1] in {"ProviderContext", "AlterContext"}
        )
        if is_context:
            name = param.name
            continue
        kept.append(param.replace(annotation=annotation))
    if name is None and required:
        raise TypeError(
            f"{fn.__name__}() needs a parameter annotated ProviderContext, e.g. "
            f"`async def {fn.__name__}(ctx: ProviderContext, ...)`"
        )
    annotations = {k: v for k, v in hints.items() if k != name}
    return name, signature.replace(parameters=kept), annotations


async def run_tool(
    vault: App,
    fn: Callable[..., Any],
    *,
    provider: str,
    label: str | None,
    context_param: str | None,
    audit: dict[str, str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[str, Any]:
    """Call ``fn`` with the audit context set; returns ``("ok", result)``, or a recovery
    kind (``authorization_required``, ``scope_reauth_required``, ``ambiguous_grant``) with
    its details."""
    merged = {**(audit_context.get() or {}), **audit}
    if context_param is not None:
        kwargs[context_param] = ProviderContext(
            vault, provider=provider, label=label, context=merged
        )
    token = audit_context.set(merged)
    try:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return "ok", result
    except (GrantNotFoundError, NoDelegatedGrantError):
        log.info("no grant for %s in tool %s: creating a Connect session", provider, audit)
        try:
            session = await vault.create_connect_session(
                allowed_providers=[provider],
                requested_grant={"label": label} if label is not None else None,
            )
        except Exception:
            log.warning("could not create a Connect session for %s", provider, exc_info=True)
            return "authorization_required", None
        return "authorization_required", session.connect_url
    except ScopeReauthRequiredError as exc:
        return "scope_reauth_required", exc.missing_scopes
    except AmbiguousGrantError as exc:
        choices = (
            exc.account_identifiers
            or [c.label or c.grant_id for c in exc.candidates]
            or exc.grant_ids
        )
        return "ambiguous_grant", choices
    finally:
        audit_context.reset(token)
