"""POST /api/timeseries: one area over many dates, fetched concurrently, analysed locally."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import Response

from satapi.analysis import AnalysisService
from satapi.deps import AnalysisDep, ImagesDep, SettingsDep
from satapi.errors import SatapiError
from satapi.imagery import FetchedImage, ImageService
from satapi.models import ImageMeta, TimeseriesPoint, TimeseriesRequest, TimeseriesResponse
from satapi.timedim import check_count, expand_range, parse_when, time_available
from satapi.wms_client import FetchTarget

log = logging.getLogger("satapi.timeseries")

router = APIRouter(prefix="/api", tags=["timeseries"])

METRIC_COLUMNS = (
    "vegetation_fraction",
    "water_fraction",
    "bare_fraction",
    "built_fraction",
    "cloud_fraction",
    "nodata_fraction",
    "mean_brightness",
)


def requested_times(body: TimeseriesRequest, limit: int) -> list[str]:
    """The dates asked for, unique and ordered, at most `limit` of them."""
    if body.times is not None:
        check_count(body.times, limit)
        times = list(dict.fromkeys(body.times))
    else:
        assert body.start and body.end and body.step
        times = expand_range(body.start, body.end, body.step, limit=limit)
        check_count(times, limit)
    return sorted(times, key=lambda t: (parse_when(t).isoformat(), t))


async def _layer_times(images: ImageService, provider: str, layer: str) -> list[str] | None:
    """The layer's TIME values from capabilities, or None when they can't be had."""
    try:
        layers = await images.client.layers(provider)
    except SatapiError as exc:
        log.info("capabilities unavailable for %s, dates not checked: %s", provider, exc.code)
        return None
    for info in layers:
        if info.name == layer:
            return info.times or None
    return None


async def _measure(
    analysis: AnalysisService, fetched: FetchedImage
) -> dict[str, Any] | SatapiError:
    try:
        analyzed = await analysis.run(analysis.choose("local"), [("image", fetched)], None)
    except SatapiError as exc:
        return exc
    return analyzed.metrics


async def build_series(
    body: TimeseriesRequest, images: ImageService, analysis: AnalysisService, limit: int
) -> TimeseriesResponse:
    """Fetch every date concurrently (a failure stays with its date), then measure each."""
    times = requested_times(body, limit)
    provider_name = body.provider or images.default_provider
    provider = images.client.provider(provider_name)
    layer = body.layer or provider.default_layer
    targets: dict[str, FetchTarget] = {
        t: images.target(body.provider, body.getmap(provider.default_layer, time=t)) for t in times
    }
    points: dict[str, TimeseriesPoint] = {}
    offered = await _layer_times(images, provider_name, layer)
    if offered is not None:
        for t in times:
            if not time_available(offered, t):
                points[t] = TimeseriesPoint(
                    time=t,
                    error=f"The layer {layer!r} has no imagery for {t}.",
                    code="time_not_available",
                )
                del targets[t]
    fetched = await images.fetch_each(targets)
    ok = {t: f for t, f in fetched.items() if isinstance(f, FetchedImage)}
    measured = await asyncio.gather(*(_measure(analysis, f) for f in ok.values()))
    for t, result in fetched.items():
        if isinstance(result, SatapiError):
            points[t] = TimeseriesPoint(time=t, error=result.message, code=result.code)
    for (t, f), metrics in zip(ok.items(), measured, strict=True):
        if isinstance(metrics, SatapiError):
            points[t] = TimeseriesPoint(time=t, error=metrics.message, code=metrics.code)
        else:
            points[t] = TimeseriesPoint(
                time=t, image=ImageMeta.from_record(f.record, cached=f.cached), metrics=metrics
            )
    ordered = [points[t] for t in times]
    return TimeseriesResponse(partial=any(p.error for p in ordered), points=ordered)


def to_csv(series: TimeseriesResponse) -> str:
    """One row per date: time, status, image id, the metrics, and the error code and text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["time", "status", "image_id", *METRIC_COLUMNS, "code", "error"])
    for p in series.points:
        metrics = p.metrics or {}
        writer.writerow(
            [
                p.time,
                "error" if p.error else "ok",
                p.image.id if p.image else "",
                *(metrics.get(c, "") for c in METRIC_COLUMNS),
                p.code or "",
                p.error or "",
            ]
        )
    return out.getvalue()


@router.post(
    "/timeseries",
    summary="One area over many dates, with local metrics per date",
    response_model=TimeseriesResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV on request."}},
)
async def timeseries(
    body: TimeseriesRequest,
    images: ImagesDep,
    analysis: AnalysisDep,
    settings: SettingsDep,
    accept: Annotated[str | None, Header()] = None,
) -> TimeseriesResponse | Response:
    """Fetch every date concurrently under the same limits and measure each image locally.

    One failed date does not fail the series: its point carries `error` and `code`, and
    `partial` is true. When the provider's capabilities list TIME values, dates the layer does
    not have are reported (`time_not_available`), not silently snapped. `Accept: text/csv`
    returns the metrics as CSV.
    """
    series = await build_series(body, images, analysis, settings.max_timeseries_dates)
    if accept and "text/csv" in accept:
        return Response(to_csv(series), media_type="text/csv")
    return series
