"""Clearest date: pick the least cloudy date of a window by measuring small previews of the area.

The candidates are the layer's dates inside the window (from a `DateSource`: for WMS the TIME
values of GetCapabilities), thinned evenly to `max_candidates`. Each is fetched as a preview
(same bbox, CRS, layer, style and format; long edge `preview_px`) through the `ImageService`, so
the downloads are concurrent under the usual caps, shared with identical requests and stored
like any image. The local pixel rules score each preview: `cloud_fraction + nodata_fraction`.
The lowest score wins; ties go to the latest date.

Planning (dates, window, previews) is separate from running (downloads, scoring) so that a stream
can refuse an impossible window with a plain JSON error before it starts, and report the scores
as an event once they are known.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from satapi.analyzers import pixels
from satapi.analyzers.base import AreaOfInterest
from satapi.cpu import CpuRunner
from satapi.errors import NoDatesInWindow, SatapiError, TooCloudy
from satapi.imagery import FetchedImage, ImageService, for_side
from satapi.observability.events import (
    NullObserver,
    Observer,
    SelectionFinished,
    error_code,
)
from satapi.timedim import (
    expand_range,
    instant,
    parse_step,
    parse_when,
    parse_window,
    thin,
    times_in_window,
)
from satapi.wms_client import FetchTarget, GetMapRequest

DEFAULT_MAX_CANDIDATES = 12
T = TypeVar("T")
StageReport = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, kw_only=True)
class ClearestSpec:
    """What a request asks for instead of a `time`: a window and the selection's limits."""

    window: str
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    max_cloud: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One date's preview and its score, or why it has none."""

    time: str
    status: Literal["ok", "failed"]
    cloud_fraction: float | None = None
    nodata_fraction: float | None = None
    score: float | None = None
    code: str | None = None  # the error code of a failed preview
    error: str | None = None
    preview_id: str | None = None  # the stored preview (GET /api/images/{id})

    def as_dict(self) -> dict[str, Any]:
        """The candidate as the API reports it."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class Selection:
    """The outcome: the chosen date and every candidate's score, sorted by time."""

    window: str
    chosen: str | None
    candidates: tuple[Candidate, ...]
    cached: bool = False  # the scores came from the selection cache
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The `selection` object of the API's answers."""
        return {
            "window": self.window,
            "chosen": self.chosen,
            "candidates": [c.as_dict() for c in self.candidates],
            "cached": self.cached,
            "note": self.note,
        }


class DateSource(Protocol):
    """Where a provider's candidate dates come from (provider-agnostic)."""

    async def dates(self, provider: str, layer: str) -> list[str] | None:
        """The layer's TIME values (a list and/or start/end/period intervals); None when the
        layer is unknown to the source."""
        ...


class CapabilitiesDates:
    """The TIME values a WMS server's GetCapabilities lists for a layer (cached by the client)."""

    def __init__(self, images: ImageService) -> None:
        self._images = images

    async def dates(self, provider: str, layer: str) -> list[str] | None:
        """The layer's TIME values, or None when the capabilities do not list the layer."""
        for info in await self._images.client.layers(provider):
            if info.name == layer:
                return list(info.times)
        return None


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A validated selection, ready to run: which previews to fetch, and where its result is
    cached."""

    provider: str
    request: GetMapRequest  # the full-size image, without a time
    spec: ClearestSpec
    previews: dict[str, FetchTarget]  # time -> preview download, sorted by time
    cache_key: str
    cache_ttl_s: float | None  # None: the window is in the past, the scores keep for good
    # Set when the provider mosaics the window itself, least cloudy scene first: the one
    # download to make, with no previews and no chosen date.
    mosaic: FetchTarget | None = None


@dataclass(frozen=True, kw_only=True)
class Chosen:
    """The full-size download for the chosen date, and the selection that chose it."""

    target: FetchTarget
    selection: Selection


def period_windows(start: str, end: str, period: str, *, limit: int) -> list[str]:
    """`start/end` cut into consecutive windows of one `period` each (the last one ends at
    `end`), at most `limit` of them: P1M from 2024-05-01 to 2024-07-31 gives
    2024-05-01/2024-05-31, 2024-06-01/2024-06-30 and 2024-07-01/2024-07-31."""
    starts = expand_range(start, end, period, limit=limit)
    date_only = "T" not in start
    # The day (or second) before the next window starts; start + period * (k+1), not repeated
    # addition, as expand_range does.
    duration = parse_step(period)
    first, last = parse_when(start), parse_when(end)
    windows: list[str] = []
    for k, begin in enumerate(starts):
        nxt = first + duration * (k + 1)
        closing = min(nxt - (dt.timedelta(days=1) if date_only else dt.timedelta(seconds=1)), last)
        stop = closing.isoformat() if date_only else _iso(closing)
        windows.append(f"{begin}/{stop}")
    return windows


def _iso(value: dt.date) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def for_sides(work: Mapping[str, Awaitable[T]]) -> dict[str, T]:
    """Await one job per side (a comparison's `before` and `after`) concurrently; the first
    failure cancels the others and is re-raised naming its side (`extra["side"]`)."""

    async def one(side: str, job: Awaitable[T]) -> T:
        try:
            return await job
        except SatapiError as exc:
            raise for_side(exc, side) from None

    tasks = {side: asyncio.ensure_future(one(side, job)) for side, job in work.items()}
    try:
        await asyncio.gather(*tasks.values())
    except BaseException:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        raise
    return {side: task.result() for side, task in tasks.items()}


def preview_size(width: int, height: int, long_edge: int) -> tuple[int, int]:
    """`width` x `height` scaled so the long edge is `long_edge` (never enlarged)."""
    longest = max(width, height)
    if longest <= long_edge:
        return width, height
    scale = long_edge / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def score_image(
    data: bytes, max_pixels: int, region: AreaOfInterest | None = None
) -> tuple[float, float]:
    """(cloud_fraction, nodata_fraction) of an image by the local analyzer's pixel rules,
    inside an area's polygon when there is one (blocking; run it through the CpuRunner)."""
    rgba = pixels.decode_rgba(data, max_pixels)
    inside = None if region is None else region.mask(rgba.shape[:2])
    metrics = pixels.measure(rgba, inside, inside)
    nodata = float(metrics["nodata_fraction"])
    # measure() gives cloud as a share of the pixels with data; the score wants the frame's.
    return round(float(metrics["cloud_fraction"]) * (1.0 - nodata), 4), nodata


def choose(candidates: Sequence[Candidate]) -> Candidate | None:
    """The lowest score among the scored candidates; ties go to the latest date."""
    scored = [c for c in candidates if c.score is not None]
    if not scored:
        return None
    return min(scored, key=lambda c: (c.score, -_when(c.time).timestamp()))


def _when(value: str) -> dt.datetime:
    return instant(parse_when(value))


def _all_failed(plan: Plan, candidates: tuple[Candidate, ...], first: SatapiError) -> SatapiError:
    """The first failure's error (same class, so the same status), naming the window."""
    return type(first)(
        f"No candidate preview of the window {plan.spec.window} could be fetched; "
        f"the first failure: {first.message}",
        retry_after=first.retry_after,
        extra={
            **first.extra,
            "window": plan.spec.window,
            "candidates": [c.as_dict() for c in candidates],
        },
    )


class _Cache:
    """Scored candidates by plan key, in memory, least recently used out first."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float | None, tuple[Candidate, ...]]] = OrderedDict()

    def get(self, key: str) -> tuple[Candidate, ...] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, candidates = entry
        if expires is not None and self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return candidates

    def put(self, key: str, candidates: tuple[Candidate, ...], ttl_s: float | None) -> None:
        if self._max <= 0:
            return
        expires = None if ttl_s is None else self._clock() + ttl_s
        self._entries[key] = (expires, candidates)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class Selector:
    """Plans and runs clearest-date selections on top of the image service."""

    images: ImageService
    cpu: CpuRunner
    dates: DateSource
    preview_px: int = 256
    cache_ttl_s: float = 3600.0
    cache_entries: int = 1024
    clock: Callable[[], float] = time.time
    observer: Observer = field(default_factory=NullObserver)
    _cache: _Cache = field(init=False)
    _locks: dict[str, tuple[asyncio.Lock, int]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._cache = _Cache(self.cache_entries, self.clock)

    async def plan(self, provider: str | None, request: GetMapRequest, spec: ClearestSpec) -> Plan:
        """Validate the request and the window and list the candidates (capabilities are read,
        no image is fetched). `NoDatesInWindow` when the layer has no date in the window."""
        name = provider or self.images.default_provider
        full = dataclasses.replace(request, time=None)
        self.images.target(name, full)  # validates bbox, size, format before anything else
        _, hi = parse_window(spec.window)
        if self.images.client.provider(name).mosaics_scenes:
            return self._mosaic_plan(name, full, spec)
        values = await self.dates.dates(name, full.layer)
        if not values:
            raise NoDatesInWindow(
                f"The layer {full.layer!r} of provider {name!r} lists no dates (no TIME "
                "dimension in its capabilities), so there is no date to choose from.",
                extra={"window": spec.window, "nearest": []},
            )
        found = times_in_window(values, spec.window)
        if not found.inside:
            nearest = [t for t in (found.before, found.after) if t is not None]
            if len(nearest) == 1:
                said = f"its nearest date is {nearest[0]}"
            else:
                said = f"its nearest dates are {' and '.join(nearest) or 'none'}"
            raise NoDatesInWindow(
                f"The layer {full.layer!r} has no date in the window {spec.window}; {said}.",
                extra={"window": spec.window, "nearest": nearest},
            )
        chosen_times = thin(found.inside, spec.max_candidates)
        width, height = preview_size(full.width, full.height, self.preview_px)
        previews = {
            t: self.images.target(
                name,
                # A GeoTIFF is wanted of the chosen date only: previews are PNG.
                dataclasses.replace(
                    full,
                    width=width,
                    height=height,
                    time=t,
                    format="image/png" if full.format == "image/tiff" else full.format,
                ),
            )
            for t in chosen_times
        }
        # The scores depend on the area's polygon too (its pixels alone are scored).
        shape = full.region.key if full.region is not None else None
        key = hashlib.sha256(
            json.dumps([spec.window, [p.image_id for p in previews.values()], shape]).encode()
        ).hexdigest()
        # Newer dates may still appear in a window that reaches into the last cache_ttl_s.
        recent = hi.replace(tzinfo=dt.UTC).timestamp() >= self.clock() - self.cache_ttl_s
        return Plan(
            provider=name,
            request=full,
            spec=spec,
            previews=previews,
            cache_key=key,
            cache_ttl_s=self.cache_ttl_s if recent else None,
        )

    def _mosaic_plan(self, name: str, full: GetMapRequest, spec: ClearestSpec) -> Plan:
        """A provider that mosaics scenes itself gets the whole window, least cloudy first.

        Listing the days that have data would need its Catalog API; its own per-scene cloud
        ordering (`leastCC`) is the next best thing, and no date is "chosen".
        """
        target = self.images.target(
            name, dataclasses.replace(full, time=spec.window, mosaicking_order="leastCC")
        )
        return Plan(
            provider=name,
            request=full,
            spec=spec,
            previews={},
            cache_key=target.image_id,
            cache_ttl_s=None,
            mosaic=target,
        )

    async def run(self, plan: Plan, report: StageReport | None = None) -> Chosen:
        """Fetch and score the previews (or take the scores from the cache), choose, and
        return the full-size download for the chosen date.

        `TooCloudy` when the best score is above `max_cloud`; when every preview failed, the
        first failure's error (same class and status) listing the candidates.
        """
        if plan.mosaic is not None:
            return self._mosaic(plan)
        started = time.perf_counter()
        candidates: tuple[Candidate, ...] = ()
        cached = self._cache.get(plan.cache_key)
        outcome, error, chosen = "error", None, None
        try:
            if cached is None:
                # Identical selections score one at a time: the others then find the cache.
                async with self._one_at_a_time(plan.cache_key):
                    cached = self._cache.get(plan.cache_key)
                    if cached is None:
                        candidates = await self._score(plan, report)
            if cached is not None:
                candidates = cached
            selection = self._decide(plan, candidates, cached=cached is not None)
            outcome, chosen = ("cached" if cached is not None else "ok"), selection.chosen
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except TooCloudy:
            outcome = "too_cloudy"
            raise
        except Exception as exc:
            error = error_code(exc)
            raise
        finally:
            self.observer.observe(
                SelectionFinished(
                    provider=plan.provider,
                    layer=plan.request.layer,
                    window=plan.spec.window,
                    outcome=outcome,
                    candidates=len(candidates) or len(plan.previews),
                    failed=sum(c.status == "failed" for c in candidates),
                    duration_s=time.perf_counter() - started,
                    chosen=chosen,
                    error=error,
                )
            )
        assert selection.chosen is not None
        target = self.images.target(
            plan.provider, dataclasses.replace(plan.request, time=selection.chosen)
        )
        return Chosen(target=target, selection=selection)

    def _mosaic(self, plan: Plan) -> Chosen:
        assert plan.mosaic is not None
        self.observer.observe(
            SelectionFinished(
                provider=plan.provider,
                layer=plan.request.layer,
                window=plan.spec.window,
                outcome="ok",
                candidates=0,
                failed=0,
                duration_s=0.0,
            )
        )
        note = (
            f"Provider {plan.provider!r} mosaics the whole window {plan.spec.window} itself, "
            "least cloudy scene first (mosaickingOrder leastCC, by each scene's cloud cover); "
            "no single date is chosen and max_cloud is not applied."
        )
        selection = Selection(window=plan.spec.window, chosen=None, candidates=(), note=note)
        return Chosen(target=plan.mosaic, selection=selection)

    async def _score(self, plan: Plan, report: StageReport | None) -> tuple[Candidate, ...]:
        if report is not None:
            report({"stage": "selecting", "candidates": len(plan.previews)})
        candidates, failures = await self._score_all(plan)
        if not failures:
            # A selection with a failed preview is not kept: the next one may succeed.
            self._cache.put(plan.cache_key, candidates, plan.cache_ttl_s)
        elif len(failures) == len(candidates):
            raise _all_failed(plan, candidates, failures[0])
        return candidates

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def select(
        self,
        provider: str | None,
        request: GetMapRequest,
        spec: ClearestSpec,
        report: StageReport | None = None,
    ) -> Chosen:
        """`plan` then `run`."""
        return await self.run(await self.plan(provider, request, spec), report)

    def _decide(self, plan: Plan, candidates: tuple[Candidate, ...], *, cached: bool) -> Selection:
        best = choose(candidates)
        assert best is not None and best.score is not None
        if best.score > plan.spec.max_cloud:
            raise TooCloudy(
                f"Every candidate of the window {plan.spec.window} is cloudier than max_cloud "
                f"{plan.spec.max_cloud}: the best, {best.time}, scores {best.score:.4f} "
                "(cloud + no-data fraction).",
                extra={
                    "window": plan.spec.window,
                    "candidates": [c.as_dict() for c in candidates],
                },
            )
        return Selection(
            window=plan.spec.window, chosen=best.time, candidates=candidates, cached=cached
        )

    async def _score_all(self, plan: Plan) -> tuple[tuple[Candidate, ...], list[SatapiError]]:
        fetched = await self.images.fetch_each(plan.previews)
        errors: dict[str, SatapiError] = {}

        async def one(when: str, result: FetchedImage | SatapiError) -> Candidate:
            if isinstance(result, FetchedImage):
                try:
                    data = await self.images.store.read_bytes(result.record)
                    cloud, nodata = await self.cpu.run(
                        score_image,
                        data,
                        self.images.max_px * self.images.max_px,
                        plan.request.region,
                    )
                except SatapiError as exc:
                    result = exc
                else:
                    return Candidate(
                        time=when,
                        status="ok",
                        cloud_fraction=cloud,
                        nodata_fraction=nodata,
                        score=round(cloud + nodata, 4),
                        preview_id=result.record.id,
                    )
            errors[when] = result
            return Candidate(time=when, status="failed", code=result.code, error=result.message)

        candidates = await asyncio.gather(*(one(t, r) for t, r in fetched.items()))
        ordered = tuple(sorted(candidates, key=lambda c: _when(c.time)))
        return ordered, [errors[c.time] for c in ordered if c.time in errors]
