"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
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
async def readyz(request: Request, resources: ResourcesDep) -> HealthResponse | JSONResponse:
    """Ready when the image store is writable, the WMS HTTP client is open, with `redis_url`
    Redis answers (`checks.redis_reachable`), and the server is not shutting down (503 from the
    moment SIGTERM arrives, so load balancers stop sending).

    When the store is not ready, `checks.store_error` says why (e.g. the bucket does not exist,
    the object store refused the credentials, or the data directory is full).
    """
    if request.app.state.shutdown.draining:
        body = HealthResponse(status="unavailable", checks={"not_shutting_down": False})
        return JSONResponse(body.model_dump(), status_code=503)
    problem = await resources.store.problem()
    checks: dict[str, object] = {
        "store_writable": problem is None,
        "http_client_open": not resources.http.is_closed,
    }
    if problem is not None:
        checks["store_error"] = problem
    if resources.coordinator is not None:
        checks["redis_reachable"] = await resources.coordinator.ping()
    if problem is None and all(v is True for k, v in checks.items() if k != "store_error"):
        return HealthResponse(status="ok", checks=checks)
    body = HealthResponse(status="unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=503)
