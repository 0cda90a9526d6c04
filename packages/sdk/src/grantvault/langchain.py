"""LangChain integration: a real ``StructuredTool`` that calls one provider through the vault.

::

    from grantvault import App
    from grantvault.langchain import ProviderContext, vault_tool

    vault = App()

    @vault_tool(vault, "github")
    async def list_repos(ctx: ProviderContext, per_page: int = 5) -> str:
        \"\"\"List the user's repositories.\"\"\"
        r = await ctx.request("GET", "https://api.github.com/user/repos",
                              query_params={"per_page": per_page})
        return ", ".join(repo["name"] for repo in r.json())

    await list_repos.ainvoke({"per_page": 3}, config={"configurable": {"thread_id": "t-1"}})

The tool's audit context carries ``tool``, ``framework="langchain"`` and LangChain's
``run_id`` (the tool run's id, or one given in the config) and ``thread_id``. The
``ProviderContext`` parameter is optional and hidden from the schema; a function without it
can call ``vault.request(...)`` itself and still gets the audit context. A missing grant
returns a message with a fresh Connect URL (the model can show it to the user).

Needs the ``langchain`` extra (``pip install 'grantvault[langchain]'``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

try:
    from langchain_core.callbacks import AsyncCallbackManager
    from langchain_core.runnables import RunnableConfig
    from langchain_core.tools import StructuredTool
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "grantvault.langchain needs langchain-core: pip install 'grantvault[langchain]'"
    ) from exc

from grantvault._client import App
from grantvault._tools import ProviderContext, run_tool, split_context_parameter

__all__ = ["ProviderContext", "alter_tool", "vault_tool"]

_MAX_ID = 256


def _ids(config: Any, callbacks: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    config = config if isinstance(config, dict) else {}
    metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    configurable = (
        config.get("configurable") if isinstance(config.get("configurable"), dict) else {}
    )
    run_id = config.get("run_id") or metadata.get("run_id")
    if run_id is None and callbacks is not None:
        # The tool run's child manager: its parent is the tool run itself.
        run_id = getattr(callbacks, "parent_run_id", None)
    thread_id = configurable.get("thread_id") or metadata.get("thread_id")
    if run_id is not None:
        out["run_id"] = str(run_id)[:_MAX_ID]
    if thread_id is not None:
        out["thread_id"] = str(thread_id)[:_MAX_ID]
    return out


def vault_tool(
    vault: App,
    provider: str,
    *,
    label: str | None = None,
    name: str | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], StructuredTool]:
    """Decorator: turn an ``async def`` into a ``StructuredTool`` bound to ``provider``."""

    def decorate(fn: Callable[..., Any]) -> StructuredTool:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"{fn.__name__} must be an async function")
        for reserved in ("config", "callbacks", "run_manager"):
            if reserved in inspect.signature(fn).parameters:
                raise TypeError(f"{fn.__name__}: the parameter name {reserved!r} is LangChain's")
        param, signature, annotations = split_context_parameter(fn, required=False)
        tool_name = name or fn.__name__
        tool_description = description or inspect.getdoc(fn) or f"Calls {provider}."

        async def coroutine(
            *args: Any,
            config: RunnableConfig | None = None,
            callbacks: AsyncCallbackManager | None = None,
            **kwargs: Any,
        ) -> Any:
            outcome, value = await run_tool(
                vault,
                fn,
                provider=provider,
                label=label,
                context_param=param,
                audit={"tool": tool_name, "framework": "langchain", **_ids(config, callbacks)},
                args=args,
                kwargs=kwargs,
            )
            if outcome == "ok":
                return value
            if outcome == "authorization_required":
                if value:
                    return f"Authorization required for {provider}. Please visit: {value}"
                return f"Authorization required for {provider}. Please try again later."
            if outcome == "scope_reauth_required":
                return f"More permissions are needed for {provider}; please reconnect it."
            listed = ", ".join(str(v) for v in value or []) or "<none listed>"
            return f"Several {provider} accounts are connected; say which one to use: {listed}"

        extra = [
            inspect.Parameter(
                "config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=RunnableConfig
            ),
            inspect.Parameter(
                "callbacks",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=AsyncCallbackManager | None,
            ),
        ]
        params = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
        coroutine.__signature__ = signature.replace(parameters=[*params, *extra])  # type: ignore[attr-defined]
        coroutine.__annotations__ = {
            **annotations,
            "config": RunnableConfig,
            "callbacks": AsyncCallbackManager | None,
        }
        coroutine.__name__ = tool_name
        coroutine.__qualname__ = getattr(fn, "__qualname__", tool_name)
        coroutine.__doc__ = tool_description
        coroutine.__module__ = fn.__module__
        tool = StructuredTool.from_function(
            coroutine=coroutine, name=tool_name, description=tool_description
        )
        tool.metadata = {**(tool.metadata or {}), "grantvault_provider": provider, "label": label}
        return tool

    return decorate


#: The name ``alter-sdk`` uses for this factory.
alter_tool = vault_tool
