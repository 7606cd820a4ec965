"""Running analyses: picking the analyzer, feeding it stored images, caching and keeping results."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

from satapi.analyzers.base import (
    AnalysisEvent,
    AnalysisResult,
    AnalysisTask,
    Analyzer,
    DataWindow,
    ImageInput,
    ImagePart,
    TextDelta,
)
from satapi.errors import AINotConfigured
from satapi.imagery import FetchedImage
from satapi.imaging import png_size
from satapi.observability.events import (
    AnalysisFinished,
    NullObserver,
    Observer,
    analysis_outcome,
)
from satapi.storage import AnalysisStore, ImageRecord, ImageStore

AnalyzerChoice = Literal["auto", "claude", "local"]


@dataclass(kw_only=True)
class Analyzed:
    """A finished analysis, fresh or from the result cache."""

    analysis_id: str
    analyzer: str
    model: str | None
    text: str
    metrics: dict[str, Any]
    usage: dict[str, int] | None
    cached: bool
    analysis_s: float
    images: dict[str, ImageRecord] = field(default_factory=dict)  # images the analyzer made

    def as_dict(self) -> dict[str, Any]:
        """The `analysis` object of the API's answers."""
        return {
            "analyzer": self.analyzer,
            "model": self.model,
            "text": self.text,
            "metrics": self.metrics,
            "usage": self.usage,
            "cached": self.cached,
        }


def analysis_id(
    analyzer: str,
    model: str | None,
    image_ids: Sequence[str],
    prompt: str | None,
    windows: Sequence[DataWindow | None] = (),
    regions: Sequence[str | None] = (),
) -> str:
    """sha256 of what determines an analysis: images (and the part of each that holds data,
    and the polygon of an area request, by its `key`), analyzer, model and prompt."""
    key: dict[str, Any] = {
        "analyzer": analyzer,
        "model": model,
        "images": list(image_ids),
        "prompt": prompt or "",
    }
    parts = [None if w is None or w.is_whole else dataclasses.astuple(w) for w in windows]
    if any(parts):  # whole images keep the keys they always had
        key["windows"] = parts
    if any(regions):
        key["regions"] = list(regions)
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def derived_image_id(parent_id: str, name: str) -> str:
    """The id of an image an analysis made (e.g. its change mask)."""
    return hashlib.sha256(f"{parent_id}:{name}".encode()).hexdigest()


class AnalysisService:
    """Analyses stored images with the chosen analyzer; repeats are served from the result store."""

    def __init__(
        self,
        store: ImageStore,
        results: AnalysisStore,
        analyzers: Mapping[str, Analyzer],
        observer: Observer | None = None,
    ) -> None:
        self._store = store
        self._results = results
        self._analyzers = dict(analyzers)
        self._observer: Observer = observer if observer is not None else NullObserver()

    @property
    def ai_available(self) -> bool:
        """True when the Claude analyzer is configured (an Anthropic key is set)."""
        return "claude" in self._analyzers

    def choose(self, choice: AnalyzerChoice) -> Analyzer:
        """The analyzer for `choice`: `auto` is Claude when a key is configured, else local."""
        if choice == "auto":
            choice = "claude" if self.ai_available else "local"
        if choice not in self._analyzers:
            raise AINotConfigured(
                "The Claude analyzer needs an Anthropic API key (SATAPI_ANTHROPIC_API_KEY or "
                "ANTHROPIC_API_KEY); use analyzer 'local' or 'auto' without one."
            )
        return self._analyzers[choice]

    async def stream(
        self,
        analyzer: Analyzer,
        images: Sequence[tuple[str, FetchedImage]],
        prompt: str | None,
        *,
        streamed: bool = True,
    ) -> AsyncGenerator[TextDelta | Analyzed, None]:
        """Analyse `images` ((label, image) pairs), yielding text deltas and then `Analyzed`.

        `streamed=False` (nobody reads the deltas) asks an analyzer that has `complete` for its
        result in one piece."""
        started = time.perf_counter()
        records = [fetched.record for _, fetched in images]
        key = analysis_id(
            analyzer.name,
            analyzer.model,
            [r.id for r in records],
            prompt,
            [fetched.data_window for _, fetched in images],
            [None if fetched.region is None else fetched.region.key for _, fetched in images],
        )
        stored = await self._results.get(key)
        if stored is not None and await self._derived_present(stored):
            analyzed = await self._from_stored(key, stored, started)
            self._observer.observe(
                AnalysisFinished(
                    analyzer=analyzed.analyzer,
                    model=analyzed.model,
                    outcome="cached",
                    duration_s=analyzed.analysis_s,
                )
            )
            yield TextDelta(analyzed.text)
            yield analyzed
            return
        by_parts = len(images) == 1 and getattr(analyzer, "takes_parts", False)
        inputs = [
            _image_input(
                label,
                fetched,
                fetched.data
                if fetched.data is not None
                else await self._store.read_bytes(fetched.record),
                await self._parts(fetched) if by_parts else (),
            )
            for label, fetched in images
        ]
        task = AnalysisTask(images=inputs, prompt=prompt)
        result: AnalysisResult | None = None
        failure: BaseException | None = None
        analysis_started = time.perf_counter()
        complete = None if streamed else getattr(analyzer, "complete", None)
        events = analyzer.stream(task) if complete is None else _one(complete(task))
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield event
                else:
                    result = event
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._report(analyzer, result, failure, time.perf_counter() - analysis_started)
            # Close the analyzer's stream (and its HTTP response) now, not at garbage collection.
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
        if result is None:
            raise RuntimeError(f"analyzer {analyzer.name!r} ended without a result")
        made = await self._store_made_images(key, result, records)
        analyzed = Analyzed(
            analysis_id=key,
            analyzer=result.analyzer,
            model=result.model,
            text=result.text,
            metrics=result.metrics,
            usage=result.usage,
            cached=False,
            analysis_s=time.perf_counter() - started,
            images=made,
        )
        yield analyzed

    async def run(
        self,
        analyzer: Analyzer,
        images: Sequence[tuple[str, FetchedImage]],
        prompt: str | None,
    ) -> Analyzed:
        """Like `stream`, returning only the finished analysis."""
        final: Analyzed | None = None
        async with aclosing(self.stream(analyzer, images, prompt, streamed=False)) as events:
            async for event in events:
                if isinstance(event, Analyzed):
                    final = event
        assert final is not None
        return final

    def _report(
        self,
        analyzer: Analyzer,
        result: AnalysisResult | None,
        failure: BaseException | None,
        duration_s: float,
    ) -> None:
        # One event per analyzer run: a stream abandoned by its client (GeneratorExit) is
        # `cancelled`, like a cancelled task; the tokens are those the provider billed.
        usage = (result.usage if result is not None else None) or {}
        if isinstance(failure, GeneratorExit):
            outcome = "cancelled"
        elif failure is None and result is None:
            outcome = "error"  # the analyzer ended without a result
        else:
            outcome = analysis_outcome(failure)
        self._observer.observe(
            AnalysisFinished(
                analyzer=analyzer.name,
                model=result.model if result is not None else analyzer.model,
                outcome=outcome,
                duration_s=duration_s,
                input_tokens=int(usage.get("input_tokens", 0)),
                output_tokens=int(usage.get("output_tokens", 0)),
            )
        )

    async def save(self, analyzed: Analyzed, response: dict[str, Any]) -> None:
        """Persist the API answer of a fresh analysis, for GET /api/analyses/{id} and the cache."""
        if analyzed.cached:
            return
        record = dict(response)
        record["created_at"] = time.time()
        record["derived_images"] = {name: r.id for name, r in analyzed.images.items()}
        await self._results.put(analyzed.analysis_id, record)

    async def get(self, key: str) -> dict[str, Any] | None:
        """A persisted analysis answer."""
        return await self._results.get(key)

    async def _parts(self, fetched: FetchedImage) -> tuple[ImagePart, ...]:
        """A stitched image's tiles, encoded, for an analyzer that measures them one by one;
        none (the whole image is analysed) when one of them has left the store."""
        parts: list[ImagePart] = []
        for tile, image_id in fetched.parts:
            record = await self._store.get(image_id)
            if record is None:
                return ()
            parts.append(
                ImagePart(
                    data=await self._store.read_bytes(record),
                    x=tile.x,
                    y=tile.y,
                    width=tile.width,
                    height=tile.height,
                    bbox=tile.bbox,
                )
            )
        return tuple(parts)

    async def _derived_present(self, stored: dict[str, Any]) -> bool:
        for image_id in (stored.get("derived_images") or {}).values():
            if await self._store.get(image_id) is None:
                return False  # evicted: analyse again so the answer's links work
        return True

    async def _from_stored(self, key: str, stored: dict[str, Any], started: float) -> Analyzed:
        analysis = stored["analysis"]
        made: dict[str, ImageRecord] = {}
        for name, image_id in (stored.get("derived_images") or {}).items():
            record = await self._store.get(image_id)
            if record is not None:
                made[name] = record
        return Analyzed(
            analysis_id=key,
            analyzer=analysis["analyzer"],
            model=analysis.get("model"),
            text=analysis["text"],
            metrics=analysis.get("metrics") or {},
            usage=analysis.get("usage"),
            cached=True,
            analysis_s=time.perf_counter() - started,
            images=made,
        )

    async def _store_made_images(
        self, key: str, result: AnalysisResult, sources: Sequence[ImageRecord]
    ) -> dict[str, ImageRecord]:
        made: dict[str, ImageRecord] = {}
        last = sources[-1]
        for name, data in result.images.items():
            width, height = png_size(data)
            record = ImageRecord(
                id=derived_image_id(key, name),
                content_type="image/png",
                bytes=len(data),
                width=width,
                height=height,
                provider=last.provider,
                layer=name,
                bbox=last.bbox,
                crs=last.crs,
                time=last.time,
                attribution=last.attribution,
                kind="derived",
            )
            await self._store.put_bytes(record, data)
            made[name] = record
        return made


async def _one(result: Awaitable[AnalysisResult]) -> AsyncIterator[AnalysisEvent]:
    """An analyzer's `complete` as a stream of its one event."""
    yield await result


def _image_input(
    label: str, fetched: FetchedImage, data: bytes, parts: tuple[ImagePart, ...] = ()
) -> ImageInput:
    record = fetched.record
    bbox = tuple(record.bbox) if record.bbox and len(record.bbox) == 4 else None
    return ImageInput(
        data=data,
        content_type=record.content_type,
        label=label,
        provider=record.provider,
        layer=record.layer,
        bbox=bbox,  # type: ignore[arg-type]
        crs=record.crs,
        time=record.time,
        data_window=fetched.data_window,
        region=fetched.region,
        parts=parts,
        size=(record.width, record.height) if parts else None,
    )
