"""The ASGI application factory: routers, lifespan, error handling, request middleware."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from grantvault import __version__
from grantvault.types.errors import ErrorCode
from grantvault_server.admission import AdmissionGate, AdmissionMiddleware
from grantvault_server.api import (
    admin as admin_api,
    errors,
    identity as identity_api,
    ops,
    sdk,
    unimplemented,
)
from grantvault_server.config import Settings, load_settings
from grantvault_server.errors import VaultError, send_error_answer
from grantvault_server.observability import Metrics
from grantvault_server.ratelimit import RateLimiter, RateLimitMiddleware
from grantvault_server.services import connect
from grantvault_server.services.nonces import purge_nonces
from grantvault_server.services.oauth_tokens import run_revocations
from grantvault_server.services.policy_counters import purge_counters
from grantvault_server.services.vault import Vault
from grantvault_server.web import mount as mount_pages, portal, portal_sections

log = logging.getLogger(__name__)
access_log = logging.getLogger("grantvault.access")

HOUSEKEEPING_INTERVAL_S = 60.0


class RequestContextMiddleware:
    """Request id, body-size limit and per-route metrics, as plain ASGI (cheap on the hot path)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        status = 500
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await _reject_too_large(send, request_id, self.max_body_bytes)
            self._observe(scope, 413, started, request_id)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise VaultError(
                        ErrorCode.PAYLOAD_TOO_LARGE,
                        f"The request body exceeds {self.max_body_bytes} bytes.",
                    )
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if not any(k == b"cache-control" for k, _ in headers):
                    # Responses may carry credentials: no cache may keep them.
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        finally:
            self._observe(scope, status, started, request_id)

    def _observe(
        self, scope: Scope, status: int, started: float, request_id: str | None = None
    ) -> None:
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(scope["method"], path, str(status)).inc()
        self.metrics.latency.labels(path).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            # The route template, never the raw path or query: those can carry credentials.
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "request_id": request_id,
                },
            )


async def _reject_too_large(send: Send, request_id: str, limit: int) -> None:
    await send_error_answer(
        send,
        413,
        {
            "error": ErrorCode.PAYLOAD_TOO_LARGE.value,
            "message": f"The request body exceeds {limit} bytes.",
        },
        [(b"x-request-id", request_id.encode())],
    )


async def _housekeeping(vault: Vault) -> None:
    """Drop expired nonces and pick up keyring changes (a rotation run by another process)."""
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
        try:
            await purge_nonces(vault, datetime.now(UTC))
            await purge_counters(vault.db, vault.clock.now())
            await run_revocations(vault)
            await connect.purge_sessions(vault)
            async with vault.db.read() as conn:
                await vault.barrier.reload(conn)
        except Exception:
            log.warning("housekeeping failed; will retry", exc_info=True)


def create_app(
    settings: Settings | None = None, *, vault: Vault | None = None, close_vault: bool = False
) -> FastAPI:
    """Build the application. Pass ``vault`` to share one already started (tests, CLI);
    ``close_vault`` hands it over, to be closed when the application shuts down."""
    settings = settings or (vault.settings if vault else load_settings())
    metrics = Metrics()
    count_refresh = _refresh_counter(metrics)
    if vault is not None:  # shared vault (tests, CLI): wire it now, lifespan may not run
        vault.refresh_observer = count_refresh
    app = FastAPI(
        title="Grantvault",
        version=__version__,
        description="Credential vault for apps and AI agents: the signed `/sdk/*` protocol "
        "(compatible with the public alter-sdk client) and operations endpoints.",
        lifespan=_lifespan(settings, metrics, count_refresh, vault, close_vault),
        # Off unless asked for: when no OpenTelemetry provider is configured, the per-request
        # check alone cost ~3% of a retrieval. Prometheus metrics are always on.
        telemetry=None if settings.otel else {"tracing": False, "metrics": False, "logs": False},
        docs_url="/docs",
        redoc_url=None,
        # Starlette would answer `/sdk/token/` with a 307 to an absolute URL built from the
        # request's Host header (a client following it re-sends body and x-api-key to that
        # host). Paths are exact here; a trailing slash is a 404 like any unknown path.
        redirect_slashes=False,
    )
    app.state.metrics = metrics
    _install_openapi(app)
    if vault is not None:
        app.state.vault = vault
    _install_routes(app)
    _install_middleware(app, settings, metrics)
    return app


def _refresh_counter(metrics: Metrics) -> Callable[[str], None]:
    """The vault's OAuth refresh observer: one counter per outcome."""

    def count_refresh(outcome: str) -> None:
        metrics.oauth_refreshes.labels(outcome).inc()

    return count_refresh


def _lifespan(
    settings: Settings,
    metrics: Metrics,
    count_refresh: Callable[[str], None],
    vault: Vault | None,
    close_vault: bool,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the vault (or adopt the shared one), wire its observers and run housekeeping
    while the application serves; on shutdown close the vault only if this app owns it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = vault is None or close_vault
        active = vault or await Vault.start(settings)
        active.retrieval_writer.observe = metrics.commit_batch.observe
        active.refresh_observer = count_refresh
        app.state.vault = active
        task = asyncio.create_task(_housekeeping(active))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if owned:
                await active.close()

    return lifespan


def _install_openapi(app: FastAPI) -> None:
    """Routes that validate their own body (see api.sdk) contribute their schemas to the
    generated document, built once when first asked for."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(sdk.TOKEN_SCHEMAS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_routes(app: FastAPI) -> None:
    """Error handlers, then the routers in matching order: the served JSON routes, the
    501 placeholders, the HTML pages, the operations endpoints."""
    errors.install(app)
    app.include_router(sdk.router)
    app.include_router(identity_api.router)
    # After the served routes: these paths answer 501 (see api.unimplemented).
    app.include_router(unimplemented.router)
    app.include_router(admin_api.build_router())
    mount_pages(app)
    app.include_router(portal.router)
    for section in portal_sections.routers():
        app.include_router(section)
    app.include_router(ops.router)


def _install_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Innermost first: admission gate, then rate limits, then request id/body size/metrics,
    and outermost the client address: ``X-Forwarded-For`` counts only when the socket peer
    is one of ``GRANTVAULT_TRUSTED_PROXIES`` (uvicorn's middleware, applied here rather than
    by the server so that every way of running the app, tests included, gets the same rule).
    The per-IP limits and policies' ``ip_allow`` both read the result."""
    gate = AdmissionGate(settings.effective_max_in_flight, settings.queue_timeout_seconds)
    metrics.in_flight.set_function(lambda: gate.in_flight)
    metrics.queued.set_function(lambda: gate.queued)
    app.state.admission = gate
    app.add_middleware(AdmissionMiddleware, gate=gate, metrics=metrics)
    limiter = RateLimiter.from_settings(
        settings, on_refused=lambda scope: metrics.rate_limited.labels(scope).inc()
    )
    app.state.limiter = limiter
    if limiter.keys or limiter.apps or limiter.ips:  # all limits 0: not even the layer
        app.add_middleware(RateLimitMiddleware, limiter=limiter, metrics=metrics)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes
    )
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
