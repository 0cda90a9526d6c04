"""The public surface: explicit sorted ``__all__``, a docstring on every public name, typed."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

import grantvault

MODULES = [
    "grantvault",
    "grantvault.exceptions",
    "grantvault.models",
    "grantvault.enums",
    "grantvault.fastapi",
    "grantvault.mcp",
    "grantvault.langchain",
    "grantvault.protocol",
    "grantvault.protocol.injection",
    "grantvault.protocol.key_format",
    "grantvault.protocol.signing",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_all_is_sorted_complete_and_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = module.__all__
    assert exported == sorted(exported)
    assert len(set(exported)) == len(exported)
    assert module.__doc__ and module.__doc__.strip()
    for name in exported:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"
        if inspect.isclass(obj) and obj.__module__.startswith("grantvault"):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (
                    inspect.isfunction(member) or isinstance(member, property)
                ):
                    continue
                assert inspect.getdoc(member), f"{module_name}.{name}.{attr} has no docstring"


def test_top_level_names_are_exactly_all() -> None:
    public = {n for n in dir(grantvault) if not n.startswith("_")}
    submodules = {
        "types", "protocol", "exceptions", "models", "enums", "fastapi", "mcp", "langchain"
    }  # fmt: skip
    assert public - submodules == set(grantvault.__all__) - {"__version__"}


def test_package_ships_py_typed_and_declares_extras() -> None:
    root = Path(grantvault.__file__).parent
    assert (root / "py.typed").is_file()
    pyproject = (root.parents[1] / "pyproject.toml").read_text()
    for extra in ("fastapi", "mcp", "langchain", "aws"):
        assert f"\n{extra} = [" in pyproject, extra


def test_sync_and_async_clients_offer_the_same_methods() -> None:
    def methods(cls: type) -> dict[str, inspect.Signature]:
        return {
            n: inspect.signature(m)
            for n, m in vars(cls).items()
            if inspect.isfunction(m) and not n.startswith("_")
        }

    async_methods, sync_methods = methods(grantvault.App), methods(grantvault.SyncApp)
    assert set(async_methods) == set(sync_methods)
    for name, signature in async_methods.items():
        assert list(signature.parameters) == list(sync_methods[name].parameters), name
