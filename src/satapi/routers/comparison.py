"""Before/after comparison: both downloads at once (asyncio.gather), then a change analysis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.sse import EventSourceResponse, ServerSentEvent

from satapi.analysis import Analyzed
from satapi.analyzers.base import Analyzer, DataWindow
from satapi.deps import AnalysisDep, ImagesDep, SelectorDep
from satapi.errors import SatapiError
from satapi.imagery import FetchedImage, ImageService, for_side
from satapi.models import (
    AnalysisOut,
    ComparisonAnalyzeRequest,
    ComparisonDownloadResponse,
    ComparisonRequest,
    ComparisonResponse,
    ComparisonTimings,
    ImageMeta,
    SelectionOut,
    SideTimings,
)
from satapi.routers.streaming import AnalysisSteps, Report, analysis_events, emit
from satapi.selection import Chosen, Plan, Selector, for_sides
from satapi.wms_client import FetchTarget

router = APIRouter(prefix="/api/comparison", tags=["comparison"])

SIDES = ("before", "after")
Pair = dict[str, FetchedImage]


@dataclass
class PairPlan:
    """The two sides of a comparison, validated: a download each, or (with `clearest`) a
    selection to run first."""

    targets: dict[str, FetchTarget]
    plans: dict[str, Plan] = field(default_factory=dict)
    windows: dict[str, DataWindow | None] = field(default_factory=dict)


@dataclass
class Got:
    """The downloaded pair, and how the dates of `clearest` sides were chosen."""

    pair: Pair
    selection: dict[str, SelectionOut] | None = None


async def plan_pair(images: ImageService, selector: Selector, body: ComparisonRequest) -> PairPlan:
    """Validate both sides before anything is downloaded (the `clearest` windows of both
    are planned concurrently)."""
    targets = pair_targets(images, body)
    windows = await pair_windows(images, body)
    work: dict[str, Awaitable[Plan]] = {}
    for side in SIDES:
        chosen = body.before if side == "before" else body.after
        if chosen is not None and chosen.clearest is not None:
            provider = images.client.provider(body.provider or images.default_provider)
            request = body.getmap(provider.layer, layer=chosen.layer)
            work[side] = selector.plan(body.provider, request, chosen.clearest.spec())
    return PairPlan(targets=targets, plans=await for_sides(work), windows=windows)


async def pair_windows(
    images: ImageService, body: ComparisonRequest
) -> dict[str, DataWindow | None]:
    """Check both sides against their layer's capabilities (layer, CRS, time, extent) before
    anything is downloaded; an error names its side. Old clients' URLs are not checked."""
    windows: dict[str, DataWindow | None] = {}
    if body.image1_url is not None and body.image2_url is not None:
        return windows
    provider = images.client.provider(body.provider or images.default_provider)
    for side in SIDES:
        chosen = body.before if side == "before" else body.after
        assert chosen is not None
        request = body.getmap(provider.layer, time=chosen.time, layer=chosen.layer)
        try:
            windows[side] = await images.check(body.provider, request)
        except SatapiError as exc:
            raise for_side(exc, side) from None
    return windows


async def fetch_pair(
    plan: PairPlan, images: ImageService, selector: Selector, report: Report | None = None
) -> Got:
    """Run the selections (both windows at once), then download the pair concurrently."""
    targets = dict(plan.targets)
    selection: dict[str, SelectionOut] | None = None
    if plan.plans:
        runs: dict[str, Awaitable[Chosen]] = {
            side: selector.run(p, _for_side(report, side)) for side, p in plan.plans.items()
        }
        chosen = await for_sides(runs)
        selection = {}
        for side in SIDES:
            if side in chosen:
                targets[side] = chosen[side].target
                selection[side] = SelectionOut.of(chosen[side].selection)
                if report is not None:
                    data = selection[side].model_dump(mode="json")
                    emit(report, "selection", {"side": side, **data})
    stage = (
        None if report is None else (lambda side, s, **x: report({"stage": s, "side": side, **x}))
    )
    pair = await images.fetch_all(
        {side: targets[side] for side in SIDES}, on_stage=stage, windows=plan.windows
    )
    return Got(pair=pair, selection=selection)


def _for_side(report: Report | None, side: str) -> Report | None:
    return None if report is None else (lambda item: report({**item, "side": side}))


def pair_targets(images: ImageService, body: ComparisonRequest) -> dict[str, FetchTarget]:
    """The downloads of the sides with a `time` (or none), validated before anything is
    fetched; a `clearest` side gets its target from its selection."""
    targets: dict[str, FetchTarget] = {}
    for side in SIDES:
        try:
            if body.image1_url is not None and body.image2_url is not None:
                url = body.image1_url if side == "before" else body.image2_url
                targets[side] = images.target_for_url(url)
                continue
            chosen = body.before if side == "before" else body.after
            assert chosen is not None
            if chosen.clearest is not None:
                continue
            provider = images.client.provider(body.provider or images.default_provider)
            request = body.getmap(provider.layer, time=chosen.time, layer=chosen.layer)
            targets[side] = images.target(body.provider, request)
        except SatapiError as exc:
            raise for_side(exc, side) from None
    return targets


async def download_plan(
    body: ComparisonRequest, images: ImagesDep, selector: SelectorDep
) -> PairPlan:
    """Dependency: the validated pair of downloads (or selections)."""
    return await plan_pair(images, selector, body)


@dataclass
class ComparisonJob:
    """A validated comparison analysis: two downloads, the analyzer, the question."""

    plan: PairPlan
    analyzer: Analyzer
    prompt: str | None


async def analyze_job(
    body: ComparisonAnalyzeRequest,
    images: ImagesDep,
    selector: SelectorDep,
    analysis: AnalysisDep,
) -> ComparisonJob:
    """Dependency: validate everything before any download or stream starts."""
    plan = await plan_pair(images, selector, body)
    return ComparisonJob(plan=plan, analyzer=analysis.choose(body.analyzer), prompt=body.prompt)


PairPlanDep = Annotated[PairPlan, Depends(download_plan)]
JobDep = Annotated[ComparisonJob, Depends(analyze_job)]


def _timings(pair: Pair, started: float, analysis_s: float | None = None) -> ComparisonTimings:
    sides = {
        side: SideTimings(
            queue_wait_s=round(pair[side].queue_wait_s, 4),
            download_s=round(pair[side].download_s, 4),
        )
        for side in SIDES
    }
    return ComparisonTimings(
        before=sides["before"],
        after=sides["after"],
        analysis_s=None if analysis_s is None else round(analysis_s, 4),
        total_s=round(time.perf_counter() - started, 4),
    )


def _metas(pair: Pair) -> dict[str, ImageMeta]:
    return {side: ImageMeta.from_fetched(pair[side]) for side in SIDES}


@router.post(
    "/download",
    summary="Download a before/after pair concurrently",
    response_model=ComparisonDownloadResponse,
)
async def download_pair(
    plan: PairPlanDep,
    images: ImagesDep,
    selector: SelectorDep,
) -> ComparisonDownloadResponse:
    """Both images download at the same time, under the same limits: two 1-second downloads take
    about one second. If one fails, the other is cancelled and the error names the side
    (`"side": "before" | "after"` in the envelope). A side with `clearest` gets the least cloudy
    date of its window; both windows are resolved at the same time (`selection` says how)."""
    started = time.perf_counter()
    got = await fetch_pair(plan, images, selector)
    return ComparisonDownloadResponse(
        images=_metas(got.pair),
        timings=_timings(got.pair, started),
        selection=got.selection,
    )


def comparison_response(got: Got, analyzed: Analyzed, started: float) -> ComparisonResponse:
    """The 200 answer of the comparison analysis (also the stream's `result` event)."""
    pair = got.pair
    metas = _metas(pair)
    for name, record in analyzed.images.items():
        metas[name] = ImageMeta.from_record(record, cached=analyzed.cached)
    return ComparisonResponse(
        analysis_id=analyzed.analysis_id,
        images=metas,
        analysis=AnalysisOut(**analyzed.as_dict()),
        timings=_timings(pair, started, analyzed.analysis_s),
        selection=got.selection,
    )


def _labelled(pair: Pair) -> list[tuple[str, FetchedImage]]:
    return [(side, pair[side]) for side in SIDES]


@router.post(
    "/analyze",
    summary="Compare a before/after pair",
    response_model=ComparisonResponse,
)
async def analyze_pair(
    images: ImagesDep,
    selector: SelectorDep,
    analysis: AnalysisDep,
    job: JobDep,
) -> ComparisonResponse:
    """Download both images concurrently, then analyse the change.

    Claude gets both images in one message, labelled with their dates. The local analyzer
    returns per-class fraction deltas, the fraction of changed pixels (cloud and no-data
    ignored) and a change-mask PNG (`images.change_mask`): unchanged pixels dimmed, gains and
    losses in distinct colours.
    """
    started = time.perf_counter()
    got = await fetch_pair(job.plan, images, selector)
    analyzed = await analysis.run(job.analyzer, _labelled(got.pair), job.prompt)
    answer = comparison_response(got, analyzed, started)
    await analysis.save(analyzed, answer.model_dump(mode="json"))
    return answer


def _stream(
    job: ComparisonJob, images: ImageService, selector: Selector, analysis: AnalysisDep
) -> AsyncIterator[ServerSentEvent]:
    started = time.perf_counter()
    steps: AnalysisSteps[Got] = AnalysisSteps(
        fetch=lambda report: fetch_pair(job.plan, images, selector, report),
        image_events=lambda got: [
            {"side": side, **meta.model_dump(mode="json")}
            for side, meta in _metas(got.pair).items()
        ],
        downloaded=lambda got: [{"side": side, "cached": got.pair[side].cached} for side in SIDES],
        analyze=lambda got: analysis.stream(job.analyzer, _labelled(got.pair), job.prompt),
        answer=lambda got, a: comparison_response(got, a, started).model_dump(mode="json"),
        save=analysis.save,
        analyzer=job.analyzer.name,
    )
    return analysis_events(steps)


@router.post(
    "/analyze_stream",
    summary="Compare a before/after pair, streamed over Server-Sent Events",
    response_class=EventSourceResponse,
)
async def analyze_pair_stream(
    images: ImagesDep,
    selector: SelectorDep,
    analysis: AnalysisDep,
    job: JobDep,
) -> AsyncIterable[ServerSentEvent]:
    """The same events as the vision stream: `status`, `selection` (one per `clearest` side,
    with `side`), `image` (one per side, with `side`), `delta`, `result` (the body of
    POST /api/comparison/analyze), or `error`."""
    async for event in _stream(job, images, selector, analysis):
        yield event
