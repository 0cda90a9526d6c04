"""The one clock of the services: ``vault.clock``.

Expiry (tokens, grants, keys, sessions), leases, cool-downs and JWT validation read the time
through the vault's clock, so a test can move time forward (``FakeClock.advance``) instead of
sleeping. Production uses ``SYSTEM_CLOCK``; nothing outside a test builds another clock.

``now()`` is an aware UTC datetime (what the database stores); ``time()`` the same instant in
epoch seconds (what a JWT's ``exp``/``iat`` carry); ``monotonic()`` for in-process caches and
intervals. ``utcnow()`` remains for the few callers with no vault at hand.
"""

from __future__ import annotations

import time as _time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, aware, in UTC."""
        ...

    def time(self) -> float:
        """The current instant in seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals and cache ages)."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return _time.time()

    def monotonic(self) -> float:
        return _time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()


class FakeClock:
    """A clock for tests: starts at the real time and moves only when told (``advance``)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        self._monotonic = _time.monotonic()

    def now(self) -> datetime:
        return self._now

    def time(self) -> float:
        return self._now.timestamp()

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float = 0, **delta: float) -> None:
        """Move time forward by ``seconds`` (plus any ``timedelta`` keywords: minutes=5)."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError("a clock does not go back")
        self._now += step
        self._monotonic += step.total_seconds()


def utcnow() -> datetime:
    """The system clock's now (for code with no vault; services use ``vault.clock.now()``)."""
    return SYSTEM_CLOCK.now()
