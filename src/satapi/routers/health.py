"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from satapi.deps import ResourcesDep
from satapi.models import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """Answers at once with no I/O: the process and its event loop are alive."""
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    summary="Readiness",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "Not ready."}},
)
async def readyz(resources: ResourcesDep) -> HealthResponse | JSONResponse:
    """Ready when the image store is writable and the WMS HTTP client is open.

    When the store is not ready, `checks.store_error` says why (e.g. the bucket does not exist,
    or the object store refused the credentials).
    """
    problem = await resources.store.problem()
    checks: dict[str, object] = {
        "store_writable": problem is None,
        "http_client_open": not resources.http.is_closed,
    }
    if problem is not None:
        checks["store_error"] = problem
    if problem is None and checks["http_client_open"]:
        return HealthResponse(status="ok", checks=checks)
    body = HealthResponse(status="unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=503)
