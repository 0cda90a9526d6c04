"""Operations endpoints: liveness, readiness (database and barrier) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from grantvault_server.api.deps import VaultDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def get_healthz() -> dict[str, str]:
    """The process is up (says nothing about its dependencies)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready (same body, `not_ready`)."}})
async def get_readyz(vault: VaultDep) -> JSONResponse:
    """Ready to serve: the database takes a write (not just a read: every retrieval commits
    its nonce and audit row) and the barrier is unsealed. The write probe is cached for a
    second (``Database.probe``), so frequent polling stays cheap."""
    checks: dict[str, Any] = {}
    checks["database"] = await vault.db.probe()
    checks["barrier"] = (
        "unsealed" if vault.barrier.active_term and not vault.barrier.sealed_reason else "sealed"
    )
    ready = checks["database"] == "ok" and checks["barrier"] == "unsealed"
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", response_class=PlainTextResponse)
async def get_metrics(request: Request) -> Response:
    """Prometheus exposition of this process's metrics."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
