"""Before/after comparison: both downloads at once (asyncio.gather), then a change analysis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.sse import EventSourceResponse, ServerSentEvent

from satapi.analysis import Analyzed
from satapi.analyzers.base import Analyzer
from satapi.deps import AnalysisDep, ImagesDep
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
    SideTimings,
)
from satapi.routers.streaming import AnalysisSteps, analysis_events
from satapi.wms_client import FetchTarget

router = APIRouter(prefix="/api/comparison", tags=["comparison"])

SIDES = ("before", "after")
Pair = dict[str, FetchedImage]


def pair_targets(images: ImageService, body: ComparisonRequest) -> dict[str, FetchTarget]:
    """The two downloads a comparison stands for, validated before anything is fetched."""
    targets: dict[str, FetchTarget] = {}
    for side in SIDES:
        try:
            if body.image1_url is not None and body.image2_url is not None:
                url = body.image1_url if side == "before" else body.image2_url
                targets[side] = images.target_for_url(url)
                continue
            chosen = body.before if side == "before" else body.after
            assert chosen is not None
            provider = images.client.provider(body.provider or images.default_provider)
            request = body.getmap(provider.default_layer, time=chosen.time, layer=chosen.layer)
            targets[side] = images.target(body.provider, request)
        except SatapiError as exc:
            raise for_side(exc, side) from None
    return targets


async def download_targets(body: ComparisonRequest, images: ImagesDep) -> dict[str, FetchTarget]:
    """Dependency: the validated pair of downloads."""
    return pair_targets(images, body)


@dataclass
class ComparisonJob:
    """A validated comparison analysis: two downloads, the analyzer, the question."""

    targets: dict[str, FetchTarget]
    analyzer: Analyzer
    prompt: str | None


async def analyze_job(
    body: ComparisonAnalyzeRequest, images: ImagesDep, analysis: AnalysisDep
) -> ComparisonJob:
    """Dependency: validate everything before any download or stream starts."""
    return ComparisonJob(
        targets=pair_targets(images, body),
        analyzer=analysis.choose(body.analyzer),
        prompt=body.prompt,
    )


PairTargets = Annotated[dict[str, FetchTarget], Depends(download_targets)]
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
    return {
        side: ImageMeta.from_record(pair[side].record, cached=pair[side].cached) for side in SIDES
    }


@router.post(
    "/download",
    summary="Download a before/after pair concurrently",
    response_model=ComparisonDownloadResponse,
)
async def download_pair(
    targets: PairTargets,
    images: ImagesDep,
) -> ComparisonDownloadResponse:
    """Both images download at the same time, under the same limits: two 1-second downloads take
    about one second. If one fails, the other is cancelled and the error names the side
    (`"side": "before" | "after"` in the envelope)."""
    started = time.perf_counter()
    pair = await images.fetch_all(targets)
    return ComparisonDownloadResponse(images=_metas(pair), timings=_timings(pair, started))


def comparison_response(pair: Pair, analyzed: Analyzed, started: float) -> ComparisonResponse:
    """The 200 answer of the comparison analysis (also the stream's `result` event)."""
    metas = _metas(pair)
    for name, record in analyzed.images.items():
        metas[name] = ImageMeta.from_record(record, cached=analyzed.cached)
    return ComparisonResponse(
        analysis_id=analyzed.analysis_id,
        images=metas,
        analysis=AnalysisOut(**analyzed.as_dict()),
        timings=_timings(pair, started, analyzed.analysis_s),
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
    pair = await images.fetch_all(job.targets)
    analyzed = await analysis.run(job.analyzer, _labelled(pair), job.prompt)
    answer = comparison_response(pair, analyzed, started)
    await analysis.save(analyzed, answer.model_dump(mode="json"))
    return answer


def _stream(
    job: ComparisonJob, images: ImagesDep, analysis: AnalysisDep
) -> AsyncIterator[ServerSentEvent]:
    started = time.perf_counter()
    steps: AnalysisSteps[Pair] = AnalysisSteps(
        fetch=lambda report: images.fetch_all(
            job.targets, on_stage=lambda side, stage: report({"stage": stage, "side": side})
        ),
        image_events=lambda pair: [
            {"side": side, **meta.model_dump(mode="json")} for side, meta in _metas(pair).items()
        ],
        cached=lambda pair: all(pair[side].cached for side in SIDES),
        analyze=lambda pair: analysis.stream(job.analyzer, _labelled(pair), job.prompt),
        answer=lambda pair, a: comparison_response(pair, a, started).model_dump(mode="json"),
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
    analysis: AnalysisDep,
    job: JobDep,
) -> AsyncIterable[ServerSentEvent]:
    """The same events as the vision stream: `status`, `image` (one per side, with `side`),
    `delta`, `result` (the body of POST /api/comparison/analyze), or `error`."""
    async for event in _stream(job, images, analysis):
        yield event
