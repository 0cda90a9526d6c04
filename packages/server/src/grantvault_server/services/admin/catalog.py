"""Every administrative operation, registered: what the admin API serves and the CLI calls."""

from __future__ import annotations

from grantvault_server.services.admin import areas
from grantvault_server.services.admin.registry import OPERATIONS, Operation

#: The area modules, imported for their registrations.
AREAS = areas.MODULES


def load_all() -> dict[str, Operation]:
    return OPERATIONS


def find(name: str) -> Operation:
    return OPERATIONS[name]
