"""Durations as operators type them (``30s``, ``15m``, ``12h``, ``90d``), parsed by the
operation (not the CLI), so the local and remote modes agree on what they mean."""

from __future__ import annotations

import re
from datetime import timedelta

from grantvault_server.errors import InvalidInput

_DURATION = re.compile(r"(\d{1,7})([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str, field: str = "duration") -> timedelta:
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise InvalidInput(f"{field}: use a number and a unit: 30s, 15m, 12h, 90d (got {text!r}).")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
