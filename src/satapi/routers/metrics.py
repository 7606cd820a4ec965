"""GET /metrics: the Prometheus text exposition (not in the OpenAPI schema, no API key)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from satapi.observability.metrics import Metrics

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Every metric in Prometheus' text format; the scrape-time gauges are computed now."""
    registry: Metrics = request.app.state.metrics
    if registry.multiprocess:
        # Reads one file per worker process: keep that off the event loop.
        body, content_type = await asyncio.to_thread(registry.render)
    else:
        body, content_type = registry.render()
    return Response(content=body, media_type=content_type)
