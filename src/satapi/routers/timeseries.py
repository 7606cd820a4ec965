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
from satapi.deps import AnalysisDep, ImagesDep, SelectorDep, SettingsDep
from satapi.errors import NoDatesInWindow, SatapiError
from satapi.imagery import FetchedImage, ImageService
from satapi.models import (
    ImageMeta,
    SelectionOut,
    TimeseriesPoint,
    TimeseriesRequest,
    TimeseriesResponse,
)
from satapi.selection import Chosen, ClearestSpec, Selector, period_windows
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


async def _choose(selector: Selector, body: TimeseriesRequest, window: str) -> Chosen | SatapiError:
    provider = selector.images.client.provider(body.provider or selector.images.default_provider)
    spec = ClearestSpec(window=window, max_candidates=body.max_candidates, max_cloud=body.max_cloud)
    try:
        return await selector.select(body.provider, body.getmap(provider.layer), spec)
    except SatapiError as exc:
        return exc


async def clearest_series(
    body: TimeseriesRequest,
    images: ImageService,
    selector: Selector,
    analysis: AnalysisService,
    limit: int,
) -> TimeseriesResponse:
    """One window per `clearest_per` period, all selected concurrently: each point is the
    clearest date of its window (`no_data` when the window has none), fetched and measured."""
    assert body.clearest_per and body.start and body.end
    windows = period_windows(body.start, body.end, body.clearest_per, limit=limit)
    provider = images.client.provider(body.provider or images.default_provider)
    images.target(body.provider, body.getmap(provider.layer))  # 422 before any network
    area = await images.check(body.provider, body.getmap(provider.layer))
    picked = await asyncio.gather(*(_choose(selector, body, w) for w in windows))
    points: dict[str, TimeseriesPoint] = {}
    chosen: dict[str, Chosen] = {}
    for window, result in zip(windows, picked, strict=True):
        start = window.split("/")[0]
        if isinstance(result, NoDatesInWindow):
            points[start] = TimeseriesPoint(time=start, error=result.message, code="no_data")
        elif isinstance(result, SatapiError):
            points[start] = TimeseriesPoint(time=start, error=result.message, code=result.code)
        else:
            chosen[start] = result
    fetched = await images.fetch_each(
        {start: c.target for start, c in chosen.items()}, data_window=area
    )
    ok = {t: f for t, f in fetched.items() if isinstance(f, FetchedImage)}
    measured = await asyncio.gather(*(_measure(analysis, f) for f in ok.values()))
    metrics_of = dict(zip(ok, measured, strict=True))
    for start, c in chosen.items():
        picked_point = TimeseriesPoint(
            time=start,
            chosen_time=c.selection.chosen,
            selection=SelectionOut.of(c.selection),
        )
        image = fetched[start]
        outcome = metrics_of.get(start, image)
        if isinstance(outcome, SatapiError):
            picked_point.error, picked_point.code = outcome.message, outcome.code
        elif isinstance(image, FetchedImage) and isinstance(outcome, dict):
            picked_point.image = ImageMeta.from_fetched(image)
            picked_point.metrics = outcome
        points[start] = picked_point
    ordered = [points[w.split("/")[0]] for w in windows]
    return TimeseriesResponse(partial=any(p.error for p in ordered), points=ordered)


async def build_series(
    body: TimeseriesRequest, images: ImageService, analysis: AnalysisService, limit: int
) -> TimeseriesResponse:
    """Fetch every date concurrently (a failure stays with its date), then measure each."""
    times = requested_times(body, limit)
    provider_name = body.provider or images.default_provider
    provider = images.client.provider(provider_name)
    layer = body.layer or provider.layer
    targets: dict[str, FetchTarget] = {
        t: images.target(body.provider, body.getmap(provider.layer, time=t)) for t in times
    }
    points: dict[str, TimeseriesPoint] = {}
    window = await images.check(body.provider, body.getmap(provider.layer))
    offered = await _layer_times(images, provider_name, layer) if provider.check_time else None
    if offered is not None:
        for t in times:
            if not time_available(offered, t):
                points[t] = TimeseriesPoint(
                    time=t,
                    error=f"The layer {layer!r} has no imagery for {t}.",
                    code="time_not_available",
                )
                del targets[t]
    fetched = await images.fetch_each(targets, data_window=window)
    ok = {t: f for t, f in fetched.items() if isinstance(f, FetchedImage)}
    measured = await asyncio.gather(*(_measure(analysis, f) for f in ok.values()))
    for t, result in fetched.items():
        if isinstance(result, SatapiError):
            points[t] = TimeseriesPoint(time=t, error=result.message, code=result.code)
    for (t, f), metrics in zip(ok.items(), measured, strict=True):
        if isinstance(metrics, SatapiError):
            points[t] = TimeseriesPoint(time=t, error=metrics.message, code=metrics.code)
        else:
            points[t] = TimeseriesPoint(time=t, image=ImageMeta.from_fetched(f), metrics=metrics)
    ordered = [points[t] for t in times]
    return TimeseriesResponse(partial=any(p.error for p in ordered), points=ordered)


def to_csv(series: TimeseriesResponse) -> str:
    """One row per date: time, status, image id, the metrics, the error code and text, and the
    chosen date (with clearest_per)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    # chosen_time goes last: positional readers of the older columns keep working.
    header = ["time", "status", "image_id", *METRIC_COLUMNS, "code", "error", "chosen_time"]
    writer.writerow(header)
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
                p.chosen_time or "",
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
    selector: SelectorDep,
    analysis: AnalysisDep,
    settings: SettingsDep,
    accept: Annotated[str | None, Header()] = None,
) -> TimeseriesResponse | Response:
    """Fetch every date concurrently under the same limits and measure each image locally.

    One failed date does not fail the series: its point carries `error` and `code`, and
    `partial` is true. When the provider's capabilities list TIME values, dates the layer does
    not have are reported (`time_not_available`), not silently snapped. `Accept: text/csv`
    returns the metrics as CSV.

    With `clearest_per` (e.g. P1M) instead of `step`, `start`/`end` are cut into one window
    per period and each point is the least cloudy date of its window (`chosen_time`, with the
    candidates' scores in `selection`); a period without any date is a point with code
    `no_data`.
    """
    limit = settings.max_timeseries_dates
    if body.clearest_per is not None:
        series = await clearest_series(body, images, selector, analysis, limit)
    else:
        series = await build_series(body, images, analysis, limit)
    if accept and "text/csv" in accept:
        return Response(to_csv(series), media_type="text/csv")
    return series
