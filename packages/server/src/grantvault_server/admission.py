"""Admission control: a bound on the requests one server process works on at once.

Why: above the database pool's size, every extra request in flight only waits for a
connection, and a request waits for one several times (key lookup, grant read, commit).
Unbounded, a burst makes every request slow at once, and work done for requests that then
time out at their last step is wasted. With a gate in front, at most ``limit`` requests are
inside the application; the rest wait here, in arrival order, for at most ``timeout``
seconds, and are then refused with ``503 server_busy`` and ``Retry-After``, before any work
was spent on them. Throughput stays at what the pool sustains and the backlog drains as soon
as the load drops (see ``docs/operations.md`` for sizing).

Liveness, readiness and metrics bypass the gate (a busy server is alive, and its metrics
must stay readable), as do the static files of the hosted pages and the sign-in long poll,
which waits without holding a database connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import send_error_answer

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/sdk/auth/poll"})
EXEMPT_PREFIXES = ("/connect/static/",)
RETRY_AFTER_SECONDS = 2


class AdmissionGate:
    """At most ``limit`` holders at once; others wait first-come first-served up to
    ``timeout`` seconds. A released slot is handed straight to the oldest waiter."""

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self.in_flight = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self.waiters)

    async def acquire(self) -> bool:
        """True once a slot is held (the caller must ``release`` it); False after ``timeout``."""
        if self.in_flight < self.limit and not self.waiters:
            self.in_flight += 1
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as the wait ended: pass it on.
                self.release()
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                return False
            raise
        return True

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; in_flight stays
                return
        self.in_flight -= 1


class AdmissionMiddleware:
    """Runs every request (but the exempt ones) inside a slot of the gate."""

    def __init__(self, app: ASGIApp, *, gate: AdmissionGate, metrics: Any) -> None:
        self.app = app
        self.gate = gate
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        gate = self.gate
        if not await gate.acquire():
            await self._refuse(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            gate.release()

    async def _refuse(self, send: Send) -> None:
        self.metrics.denials.labels(ErrorCode.SERVER_BUSY.value).inc()
        await send_error_answer(
            send,
            503,
            {
                "error": ErrorCode.SERVER_BUSY.value,
                "message": "The vault is busy (more requests in flight than it admits); "
                f"retry in {RETRY_AFTER_SECONDS} s.",
                "retry_after_seconds": RETRY_AFTER_SECONDS,
            },
            [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())],
        )
