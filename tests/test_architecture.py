"""Module rules import-linter cannot state. The layers, the SDK/server split, framework-free
packages and acyclicity are import-linter contracts (pyproject.toml [tool.importlinter], run by
``scripts/check``); these tests keep the rest, and keep the contracts and the docs honest."""

from __future__ import annotations

import ast
import inspect
import re
import tomllib
from pathlib import Path
from typing import Any

import grantvault
import grantvault_server

SDK = Path(grantvault.__file__).parent
SERVER = Path(grantvault_server.__file__).parent
ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _offenders(root: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(root.parent)} imports {name}"
        for path in root.rglob("*.py")
        for name in _imports(path)
        if name.startswith(forbidden)
    )


def test_server_imports_only_the_public_sdk() -> None:
    """The wire contract is ``grantvault.protocol`` and ``grantvault.types``, never a private module."""
    assert _offenders(SERVER, ("grantvault._",)) == []


def test_only_the_barrier_touches_aes() -> None:
    offenders = [
        o
        for o in _offenders(SERVER, ("cryptography",))
        if not o.startswith("grantvault_server/crypto/")
    ]
    assert offenders == []


def test_sdk_public_names_are_explicit_and_sorted() -> None:
    assert grantvault.__all__ == sorted(grantvault.__all__)
    # Submodules (grantvault.exceptions, .models, .fastapi, ...) are namespaces, not names.
    public = {
        n
        for n in dir(grantvault)
        if not n.startswith("_") and not inspect.ismodule(getattr(grantvault, n))
    }
    assert public <= set(grantvault.__all__) | {"__version__"}
    for name in grantvault.__all__:
        assert getattr(grantvault, name) is not None


def _contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_the_private_sdk_contract_names_every_private_module() -> None:
    """import-linter takes no ``grantvault._*`` wildcard: its list must follow the SDK."""
    private = {f"grantvault.{p.stem}" for p in SDK.glob("_*.py") if p.stem != "__init__"}
    private |= {f"grantvault.{p.name}" for p in SDK.glob("_*/") if p.is_dir()}
    assert set(_contracts()["server-uses-public-sdk"]["forbidden_modules"]) == private


def test_every_server_package_has_a_layer_and_the_docs_draw_it() -> None:
    """A new top-level module must be placed in the layers (and docs/architecture.md)."""
    layers = _contracts()["server-layers"]["layers"]
    placed = {name.strip("() ") for layer in layers for name in re.split(r"[|:]", layer)}
    modules = {
        p.stem if p.is_file() else p.name
        for p in SERVER.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    assert modules == placed
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert [name for name in sorted(placed) if f"{name}" not in doc] == []
