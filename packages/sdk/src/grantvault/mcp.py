"""MCP integration (FastMCP): tools that call one provider through the vault.

::

    from fastmcp import FastMCP
    from grantvault import App
    from grantvault.mcp import GrantvaultMCP, ProviderContext

    vault = App()
    gv = GrantvaultMCP(vault)
    mcp = FastMCP("repos")

    @mcp.tool
    @gv.tool("github")
    async def list_repos(ctx: ProviderContext, per_page: int = 5) -> list[str]:
        r = await ctx.request("GET", "https://api.github.com/user/repos",
                              query_params={"per_page": per_page})
        return [repo["name"] for repo in r.json()]

The ``ProviderContext`` parameter is injected and does not appear in the tool's schema. When
no grant exists yet the tool answers ``{"error": "authorization_required", "message",
"connect_url"}`` with a fresh Connect session for the provider, so the MCP client can show
the link; a scope drift answers ``{"error": "scope_reauth_required", ...}``.

Needs the ``mcp`` extra (``pip install 'grantvault[mcp]'``) for FastMCP itself; this module
only wraps functions, so it imports without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from grantvault._client import App
from grantvault._tools import ProviderContext, run_tool, split_context_parameter

__all__ = ["AlterContext", "AlterMCP", "GrantvaultMCP", "ProviderContext"]

F = TypeVar("F", bound=Callable[..., Any])

#: The name ``alter-sdk`` uses for the injected context.
AlterContext = ProviderContext


class GrantvaultMCP:
    """Turns functions into MCP tools bound to one provider of ``vault``."""

    def __init__(self, vault: App) -> None:
        self._vault = vault

    @property
    def vault(self) -> App:
        """The client the tools use."""
        return self._vault

    def tool(self, provider: str, *, label: str | None = None) -> Callable[[F], F]:
        """Decorator: inject a :class:`ProviderContext` for ``provider`` (apply it below
        FastMCP's ``@mcp.tool``)."""

        def decorate(fn: F) -> F:
            param, signature, annotations = split_context_parameter(fn, required=True)
            name = fn.__name__

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                outcome, value = await run_tool(
                    self._vault,
                    fn,
                    provider=provider,
                    label=label,
                    context_param=param,
                    audit={"tool": name, "framework": "mcp"},
                    args=args,
                    kwargs=kwargs,
                )
                if outcome == "ok":
                    return value
                if outcome == "authorization_required":
                    answer: dict[str, Any] = {
                        "error": "authorization_required",
                        "message": f"Please authorize access to {provider}, then retry.",
                    }
                    if value:
                        answer["connect_url"] = value
                    else:
                        answer["message"] = (
                            f"Authorization required for {provider}; a Connect link could not "
                            "be created, try again later."
                        )
                    return answer
                if outcome == "scope_reauth_required":
                    return {
                        "error": "scope_reauth_required",
                        "message": f"More permissions are needed for {provider}; reconnect it.",
                        "missing_scopes": value,
                    }
                return {
                    "error": "ambiguous_grant",
                    "message": f"Several {provider} grants match; say which one to use.",
                    "choices": value,
                }

            wrapper.__signature__ = signature  # type: ignore[attr-defined]
            wrapper.__annotations__ = annotations
            del wrapper.__wrapped__  # frameworks must see the signature without the context
            return wrapper  # type: ignore[return-value]

        return decorate


AlterMCP = GrantvaultMCP
