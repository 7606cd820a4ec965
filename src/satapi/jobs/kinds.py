"""What each job kind runs: the same validation and the same service calls as its route.

A job's `result` is what the synchronous route answers, because it is made by the route's
own function (`POST /api/timeseries`, `/api/vision/analyze_satellite`,
`/api/comparison/analyze`); only the work's timings and `cached` flags can differ.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from satapi.app_state import Resources
from satapi.models import ComparisonAnalyzeRequest, TimeseriesRequest, VisionRequest
from satapi.routers import comparison, timeseries, vision
from satapi.selection import period_windows


@dataclass(frozen=True)
class Kind:
    """One job kind: its params' model, the check made at submit time, and the work."""

    model: type[BaseModel]
    # Raises what the route would for the same body; returns the progress total.
    check: Callable[[Any, Resources], Awaitable[int]]
    run: Callable[[Any, Resources], Awaitable[dict[str, Any]]]


async def _check_timeseries(body: TimeseriesRequest, r: Resources) -> int:
    limit = r.settings.max_timeseries_dates
    provider = r.images.client.provider(body.provider or r.images.default_provider)
    if body.clearest_per is not None:
        assert body.start and body.end
        windows = period_windows(body.start, body.end, body.clearest_per, limit=limit)
        r.images.target(body.provider, body.getmap(provider.layer))
        return len(windows)
    times = timeseries.requested_times(body, limit)
    for t in times:
        r.images.target(body.provider, body.getmap(provider.layer, time=t))
    return len(times)


async def _run_timeseries(body: TimeseriesRequest, r: Resources) -> dict[str, Any]:
    answer = await timeseries.timeseries(body, r.images, r.selector, r.analysis, r.settings)
    assert isinstance(answer, BaseModel)
    return answer.model_dump(mode="json", by_alias=True)


async def _check_analyze(body: VisionRequest, r: Resources) -> int:
    await vision.job_from_body(body, r.images, r.selector, r.analysis)
    return 1


async def _run_analyze(body: VisionRequest, r: Resources) -> dict[str, Any]:
    job = await vision.job_from_body(body, r.images, r.selector, r.analysis)
    answer = await vision.analyze_satellite(job, r.images, r.selector, r.analysis)
    return answer.model_dump(mode="json", by_alias=True)


async def _check_compare(body: ComparisonAnalyzeRequest, r: Resources) -> int:
    await comparison.analyze_job(body, r.images, r.selector, r.analysis)
    return 2


async def _run_compare(body: ComparisonAnalyzeRequest, r: Resources) -> dict[str, Any]:
    job = await comparison.analyze_job(body, r.images, r.selector, r.analysis)
    answer = await comparison.analyze_pair(r.images, r.selector, r.analysis, job)
    return answer.model_dump(mode="json", by_alias=True)


KINDS: dict[str, Kind] = {
    "timeseries": Kind(TimeseriesRequest, _check_timeseries, _run_timeseries),
    "analyze": Kind(VisionRequest, _check_analyze, _run_analyze),
    "compare": Kind(ComparisonAnalyzeRequest, _check_compare, _run_compare),
}
