"""How the vault writes a timestamp on the wire and in audit details: ISO 8601, UTC as ``Z``."""

from __future__ import annotations

from datetime import datetime


def iso(value: datetime | None) -> str | None:
    """``2026-01-02T03:04:05.123456Z`` for an aware UTC ``value``; ``None`` stays ``None``."""
    return value.isoformat().replace("+00:00", "Z") if value else None
