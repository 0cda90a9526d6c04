"""docs/sdk.md stays truthful: every Python example compiles, its imports exist, and every
``vault.<method>(`` it calls is a method of the client."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from grantvault import App, SyncApp

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if ">>>" not in b]


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_example_compiles_and_uses_real_names(block: str) -> None:
    tree = compile(
        block, str(DOC), "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("grantvault")
        ):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in {"vault", "client", "sync_vault"}
            and node.func.attr not in {"get", "json"}
        ):
            name = node.func.attr
            assert hasattr(App, name) or hasattr(SyncApp, name) or name in {"optional", "close"}, (
                name
            )
