"""The portal's per-area pages (secrets, grants, policies, providers, identity, users, audit),
one module per area, each with its own ``router``; discovered, not listed, so adding an area
is adding a file. The shared page machinery (sessions, CSRF, rendering, running an
operation) lives in ``web.portal``.
"""

from __future__ import annotations

import importlib
import pkgutil

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    found: list[APIRouter] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.append(module.router)
    return found
