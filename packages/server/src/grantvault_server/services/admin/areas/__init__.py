"""One module per area of administration; importing this package registers every operation.

Modules are found, not listed, so adding an area is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

MODULES: tuple[ModuleType, ...] = tuple(
    importlib.import_module(f"{__name__}.{info.name}")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
)
