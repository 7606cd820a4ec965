"""AI vision analysis of one image: a JSON answer, or the same streamed over Server-Sent Events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError

from satapi.analysis import Analyzed
from satapi.analyzers.base import Analyzer, DataWindow
from satapi.deps import AnalysisDep, ImagesDep, SelectorDep
from satapi.imagery import FetchedImage, ImageService
from satapi.models import (
    AnalysisOut,
    AnalysisTimings,
    AnalyzerName,
    ImageMeta,
    SelectionOut,
    VisionRequest,
)
from satapi.models import VisionResponse as VisionResponseModel
from satapi.routers.images import plan_for, target_for, window_for
from satapi.routers.streaming import AnalysisSteps, Report, analysis_events, emit
from satapi.selection import Plan, Selector
from satapi.wms_client import FetchTarget

router = APIRouter(prefix="/api/vision", tags=["vision"])


@dataclass
class VisionJob:
    """A validated analysis request: what to download (or select) and who analyses it."""

    target: FetchTarget | None  # None with `clearest`: the plan decides
    plan: Plan | None
    analyzer: Analyzer
    prompt: str | None
    window: DataWindow | None = None  # where the image holds data (layer's extent)


@dataclass
class Got:
    """The downloaded image, and how its date was chosen (with `clearest`)."""

    fetched: FetchedImage
    selection: SelectionOut | None = None


async def _job(
    body: VisionRequest, images: ImageService, selector: Selector, analysis: AnalysisDep
) -> VisionJob:
    target = target_for(images, body) if body.clearest is None else None
    analyzer = analysis.choose(body.analyzer)  # before the plan reads any capabilities
    window = await window_for(images, body)
    plan = await plan_for(selector, body)
    return VisionJob(
        target=target,
        plan=plan,
        analyzer=analyzer,
        prompt=body.prompt,
        window=window,
    )


async def job_from_body(
    body: VisionRequest, images: ImagesDep, selector: SelectorDep, analysis: AnalysisDep
) -> VisionJob:
    """Validate a JSON body before anything streams, so bad input gets a plain JSON error."""
    return await _job(body, images, selector, analysis)


async def job_from_query(
    images: ImagesDep,
    selector: SelectorDep,
    analysis: AnalysisDep,
    bbox: Annotated[
        str | None,
        Query(description="minx,miny,maxx,maxy (lon/lat for EPSG:4326).", examples=["-10,35,5,44"]),
    ] = None,
    provider: Annotated[str | None, Query(max_length=64)] = None,
    layer: Annotated[str | None, Query(max_length=256)] = None,
    crs: Annotated[str, Query(max_length=32)] = "EPSG:4326",
    time: Annotated[str | None, Query(max_length=64, examples=["2024-06-01"])] = None,
    clearest: Annotated[
        str | None,
        Query(
            max_length=80,
            description="Instead of time: a window start/end; the clearest date in it is used.",
            examples=["2024-05-01/2024-09-30"],
        ),
    ] = None,
    max_candidates: Annotated[int | None, Query(description="With clearest.")] = None,
    max_cloud: Annotated[float | None, Query(description="With clearest.")] = None,
    width: Annotated[int, Query(ge=1)] = 512,
    height: Annotated[int, Query(ge=1)] = 512,
    format: Annotated[str, Query(max_length=32)] = "image/png",
    prompt: Annotated[str | None, Query(max_length=4000)] = None,
    analyzer: Annotated[AnalyzerName, Query()] = "auto",
    wms_url: Annotated[str | None, Query(max_length=4096)] = None,
) -> VisionJob:
    """The same request from query parameters, for the browser's `EventSource` (GET only)."""
    raw: dict[str, object] = {
        "provider": provider,
        "layer": layer,
        "crs": crs,
        "time": time,
        "width": width,
        "height": height,
        "format": format,
        "prompt": prompt,
        "analyzer": analyzer,
        "wms_url": wms_url,
    }
    limits = {"max_candidates": max_candidates, "max_cloud": max_cloud}
    limits = {k: v for k, v in limits.items() if v is not None}
    if clearest is not None:
        raw["clearest"] = {"window": clearest, **limits}
    else:
        raw.update(limits)  # without clearest they are unknown fields: validation says so
    if bbox is not None:
        try:
            raw["bbox"] = [float(v) for v in bbox.split(",")]
        except ValueError:
            raw["bbox"] = bbox  # let validation report it
    try:
        body = VisionRequest.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None
    return await _job(body, images, selector, analysis)


BodyJob = Annotated[VisionJob, Depends(job_from_body)]
QueryJob = Annotated[VisionJob, Depends(job_from_query)]


async def fetch_job(
    job: VisionJob, images: ImageService, selector: Selector, report: Report | None = None
) -> Got:
    """Select the date (with `clearest`; the stream hears `selecting` and `selection`), then
    download the image."""
    on_stage = None if report is None else (lambda stage, **x: report({"stage": stage, **x}))
    if job.plan is None:
        assert job.target is not None
        return Got(await images.fetch(job.target, on_stage=on_stage, data_window=job.window))
    chosen = await selector.run(job.plan, report)
    selection = SelectionOut.of(chosen.selection)
    if report is not None:
        emit(report, "selection", selection.model_dump(mode="json"))
    fetched = await images.fetch(chosen.target, on_stage=on_stage, data_window=job.window)
    return Got(fetched, selection)


def vision_response(got: Got, analyzed: Analyzed, started: float) -> VisionResponseModel:
    """The 200 answer (also the stream's `result` event)."""
    fetched = got.fetched
    return VisionResponseModel(
        analysis_id=analyzed.analysis_id,
        image=ImageMeta.from_fetched(fetched),
        analysis=AnalysisOut(**analyzed.as_dict()),
        timings=AnalysisTimings(
            queue_wait_s=round(fetched.queue_wait_s, 4),
            download_s=round(fetched.download_s, 4),
            analysis_s=round(analyzed.analysis_s, 4),
            total_s=round(time.perf_counter() - started, 4),
        ),
        selection=got.selection,
    )


@router.post(
    "/analyze_satellite",
    summary="Analyse a satellite image",
    response_model=VisionResponseModel,
)
async def analyze_satellite(
    job: BodyJob, images: ImagesDep, selector: SelectorDep, analysis: AnalysisDep
) -> VisionResponseModel:
    """Download the image (or reuse it) and analyse it with Claude or the local pixel analyzer.

    A repeated request (same image, analyzer, model and prompt) is answered from the result
    cache without a new AI call.
    """
    started = time.perf_counter()
    got = await fetch_job(job, images, selector)
    analyzed = await analysis.run(job.analyzer, [("image", got.fetched)], job.prompt)
    answer = vision_response(got, analyzed, started)
    await analysis.save(analyzed, answer.model_dump(mode="json"))
    return answer


def _stream(
    job: VisionJob, images: ImageService, selector: Selector, analysis: AnalysisDep
) -> AsyncIterator[ServerSentEvent]:
    started = time.perf_counter()
    steps: AnalysisSteps[Got] = AnalysisSteps(
        fetch=lambda report: fetch_job(job, images, selector, report),
        image_events=lambda g: [ImageMeta.from_fetched(g.fetched).model_dump(mode="json")],
        downloaded=lambda g: [{"cached": g.fetched.cached}],
        analyze=lambda g: analysis.stream(job.analyzer, [("image", g.fetched)], job.prompt),
        answer=lambda g, a: vision_response(g, a, started).model_dump(mode="json"),
        save=analysis.save,
        analyzer=job.analyzer.name,
    )
    return analysis_events(steps)


STREAM_DOC = """Events, each with an `id` and JSON `data`:
`status` (`{"stage": "queued" | "selecting" | "downloading" | "downloaded" | "analyzing"}`),
`selection` (with `clearest`: every candidate's scores and the chosen date),
`image` (the image's metadata), `delta` (`{"text": ...}` as the analysis is written),
`result` (exactly the body of POST /api/vision/analyze_satellite), then the stream ends.
A failure after the stream started is an `error` event (`{"code", "error"}`). Invalid input
is refused before streaming with a normal JSON error."""


@router.post(
    "/analyze_satellite_stream",
    summary="Analyse a satellite image, streamed over Server-Sent Events",
    response_class=EventSourceResponse,
    description=STREAM_DOC,
)
async def analyze_satellite_stream(
    job: BodyJob, images: ImagesDep, selector: SelectorDep, analysis: AnalysisDep
) -> AsyncIterable[ServerSentEvent]:
    """Streamed analysis (POST with the JSON body)."""
    async for event in _stream(job, images, selector, analysis):
        yield event


@router.get(
    "/analyze_satellite_stream",
    summary="Analyse a satellite image, streamed (GET, for EventSource)",
    response_class=EventSourceResponse,
    description=STREAM_DOC
    + "\n\nQuery parameters mirror the JSON body; `bbox=minx,miny,maxx,maxy`.",
)
async def analyze_satellite_stream_get(
    job: QueryJob, images: ImagesDep, selector: SelectorDep, analysis: AnalysisDep
) -> AsyncIterable[ServerSentEvent]:
    """Streamed analysis (GET with query parameters)."""
    async for event in _stream(job, images, selector, analysis):
        yield event
