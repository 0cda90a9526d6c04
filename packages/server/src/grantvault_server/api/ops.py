"""Operations endpoints: liveness, readiness (database and barrier) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from grantvault_server.api.deps import VaultDep
from grantvault_server.services.requests import database_ok

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def get_healthz() -> dict[str, str]:
    """The process is up (says nothing about its dependencies)."""
    return {"status": "ok"}


@router.get("/readyz")
async def get_readyz(vault: VaultDep) -> JSONResponse:
    """Ready to serve: the database answers and the barrier is unsealed."""
    checks: dict[str, Any] = {}
    checks["database"] = "ok" if await database_ok(vault) else "unavailable"
    checks["barrier"] = (
        "unsealed" if vault.barrier.active_term and not vault.barrier.sealed_reason else "sealed"
    )
    ready = checks["database"] == "ok" and checks["barrier"] == "unsealed"
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics")
async def get_metrics(request: Request) -> Response:
    """Prometheus exposition of this process's metrics."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
