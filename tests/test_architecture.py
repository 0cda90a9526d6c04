"""Module boundaries, checked on the import graph (cheap import-linter)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import grantvault
import grantvault_server

SDK = Path(grantvault.__file__).parent
SERVER = Path(grantvault_server.__file__).parent


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


def test_sdk_never_imports_the_server() -> None:
    assert _offenders(SDK, ("grantvault_server", "sqlalchemy", "fastapi", "alembic")) == []


def test_server_imports_only_the_public_sdk() -> None:
    """The wire contract is ``grantvault.protocol`` and ``grantvault.types``, never a private module."""
    assert _offenders(SERVER, ("grantvault._",)) == []


def test_routes_go_through_services_not_storage() -> None:
    assert _offenders(SERVER / "api", ("grantvault_server.storage", "sqlalchemy")) == []


def test_core_packages_are_framework_free() -> None:
    for package in ("policy", "audit", "crypto", "providers", "auth"):
        assert _offenders(SERVER / package, ("fastapi", "starlette")) == [], package


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
