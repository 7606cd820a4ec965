"""Getting an image: from the store if present, else one shared download, verified, stored."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from satapi.analyzers.base import AreaOfInterest, DataWindow
from satapi.areas import AreaInfo, Tile, area_info, check_pixels, tile_grid
from satapi.cpu import CpuRunner
from satapi.errors import InvalidGeometry, InvalidRequest, SatapiError
from satapi.imaging import verify_image
from satapi.layercheck import check_request
from satapi.mosaic import TIFF, build_mosaic
from satapi.observability.events import (
    DownloadSettled,
    NullObserver,
    Observer,
    download_outcome,
    error_code,
)
from satapi.providers.wms import target_from_url
from satapi.storage import ImageRecord, ImageStore
from satapi.urlpolicy import UrlPolicy
from satapi.wms_client import DownloadStats, FetchTarget, GetMapRequest, ImageClient

# Hears a download's stages: `stage("downloading")`, with `attempt=` and `attempts=` keywords
# when the download is a retry.
StageCallback = Callable[..., None]
T = TypeVar("T")


class FleetFlightLock(Protocol):
    """A fleet-wide mutex per key (e.g. `satapi.coordination.redis.FleetFlights`)."""

    def hold(self, key: str) -> AbstractAsyncContextManager[float]:
        """Hold the mutex for `key`; yields the seconds waited."""
        ...


@dataclass(kw_only=True)
class FetchedImage:
    """An image ready in the store, and how it got there."""

    record: ImageRecord
    cached: bool = False  # it was already in the store
    shared: bool = False  # it came from another request's download
    queue_wait_s: float = 0.0
    download_s: float = 0.0
    # The part of the image inside the layer's extent (None: all of it, or not known).
    data_window: DataWindow | None = None
    # An area request: the polygon whose pixels count, and the figures of the area.
    region: AreaOfInterest | None = None
    area: AreaInfo | None = None
    # A stitched image: its tiles and their image ids (each stored like any image).
    parts: tuple[tuple[Tile, str], ...] = ()
    # The stored bytes, when this request downloaded a small image that never left memory:
    # an analysis uses them instead of reading the file it has just written. Only `fetch`
    # carries them (one image per caller); `fetch_each` drops each as it arrives, so a series
    # does not hold every date's image at once.
    data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def coverage(self) -> float | None:
        """The share of the image inside the layer's extent (0-1), when the extent is known."""
        return None if self.data_window is None else round(self.data_window.fraction, 4)


@dataclass(frozen=True, kw_only=True)
class MosaicTarget(FetchTarget):
    """An image made of a grid of GetMaps (or a GeoTIFF): each tile is an image of its own,
    stored and single-flighted like any other; the stitched result is stored under an id
    derived from the whole request, its format and the grid."""

    tiles: tuple[tuple[Tile, FetchTarget], ...] = ()
    out_format: str = "image/png"

    @functools.cached_property
    def image_id(self) -> str:
        """sha256 of the whole image's canonical request, output format and tile grid."""
        whole = FetchTarget.image_id.func(self)  # type: ignore[attr-defined]
        grid = ";".join(f"{t.x},{t.y},{t.width},{t.height}" for t, _ in self.tiles)
        return hashlib.sha256(f"mosaic:{whole}:{self.out_format}:{grid}".encode()).hexdigest()


@dataclass
class _Flight:
    task: asyncio.Task[FetchedImage]
    waiters: int = 0
    transferring: bool = False
    listeners: list[StageCallback] = field(default_factory=list)

    def stage(self, name: str, /, **extra: Any) -> None:
        if name == "downloading":
            self.transferring = True
        for listener in list(self.listeners):
            listener(name, **extra)


class ImageService:
    """Turns image requests into stored images, downloading each distinct request once."""

    def __init__(
        self,
        client: ImageClient,
        store: ImageStore,
        cpu: CpuRunner,
        policy: UrlPolicy,
        *,
        default_provider: str,
        max_px: int,
        cache_ttl_s: float,
        inflate_png: bool = False,
        observer: Observer | None = None,
        fleet: FleetFlightLock | None = None,
        max_area_pixels: int = 25_000_000,
        max_vertices: int = 10_000,
    ) -> None:
        self.client = client
        self.max_area_pixels = max_area_pixels
        self.max_vertices = max_vertices
        # Single flight across processes: the download of an image id runs under a fleet-wide
        # mutex; whoever gets it second finds the image in a shared store.
        self._fleet = fleet
        self.store = store
        self._cpu = cpu
        self._policy = policy
        self.default_provider = default_provider
        self.max_px = max_px
        self._cache_ttl_s = cache_ttl_s
        self._inflate_png = inflate_png  # the `png_check` setting: see imaging.py
        self._flights: dict[str, _Flight] = {}
        self._observer: Observer = observer if observer is not None else NullObserver()

    # -- targets --------------------------------------------------------------------------------

    def target(self, provider: str | None, req: GetMapRequest) -> FetchTarget:
        """The download for `req` on `provider` (default provider when None), validated."""
        name = provider or self.default_provider
        config = self.client.provider(name)
        if req.region is not None and req.region.vertices > self.max_vertices:
            raise InvalidGeometry(
                f"The geometry has {req.region.vertices} vertices; at most {self.max_vertices} "
                "are accepted (max_geometry_vertices). Simplify it first.",
                extra={"vertices": req.region.vertices, "limit": self.max_vertices},
            )
        for side, value in (("width", req.width), ("height", req.height)):
            if value < 1 or (req.explicit_size and value > self.max_px):
                raise InvalidRequest(
                    f"{side} must be between 1 and {self.max_px} pixels (the service's "
                    "max_image_px)."
                )
        if req.width * req.height > self.max_area_pixels:
            check_pixels(req.bbox, req.crs, req.width, req.height, self.max_area_pixels)
        if req.format != TIFF:
            return self.client.target(name, config, req)
        # A GeoTIFF is written by the service from PNG tiles, whatever the server offers.
        target = self.client.target(name, config, dataclasses.replace(req, format="image/png"))
        return dataclasses.replace(target, request=req)

    async def tile_limit(self, name: str) -> tuple[int, int] | None:
        """The largest width and height provider `name` serves in one request: its `max_size`
        (2500 for the Process API) and its capabilities' MaxWidth/MaxHeight, the smaller."""
        config = self.client.provider(name)
        widths: list[int | None] = [config.tile_limit]
        heights: list[int | None] = [config.tile_limit]
        if config.kind == "wms":
            try:
                layers = await self.client.layers(name)
            except SatapiError:  # the layer check logs it; no MaxWidth to go by
                layers = []
            if layers:  # MaxWidth/MaxHeight belong to the service: every layer has them
                widths.append(layers[0].max_width)
                heights.append(layers[0].max_height)
        known_widths = [v for v in widths if v is not None]
        known_heights = [v for v in heights if v is not None]
        if not known_widths and not known_heights:
            return None
        unlimited = self.max_area_pixels  # no limit on that side
        return (min(known_widths, default=unlimited), min(known_heights, default=unlimited))

    async def plan(self, target: FetchTarget) -> FetchTarget:
        """`target`, or the `MosaicTarget` of its tiles when it is larger than its provider
        serves at once or asks for a GeoTIFF."""
        req = target.request
        if req is None or isinstance(target, MosaicTarget):
            return target
        limit = await self.tile_limit(target.source)
        max_w, max_h = limit if limit is not None else (req.width, req.height)
        if req.format != TIFF and req.width <= max_w and req.height <= max_h:
            return target
        config = self.client.provider(target.source)
        tile_format = "image/jpeg" if req.format == "image/jpeg" else "image/png"
        tiles = tuple(
            (
                tile,
                self.client.target(
                    target.source,
                    config,
                    dataclasses.replace(
                        req,
                        bbox=tile.bbox,
                        width=tile.width,
                        height=tile.height,
                        format=tile_format,
                        region=None,
                        resolution_m=None,
                        explicit_size=True,
                    ),
                ),
            )
            for tile in tile_grid(req.bbox, req.width, req.height, max_w, max_h)
        )
        return MosaicTarget(
            **{f.name: getattr(target, f.name) for f in dataclasses.fields(FetchTarget)},
            tiles=tiles,
            out_format=req.format,
        )

    async def check(self, provider: str | None, req: GetMapRequest) -> DataWindow | None:
        """Refuse `req` when its layer's capabilities do not offer its layer, CRS, time or
        extent (before any GetMap); where the image will hold data (`layercheck`)."""
        name = provider or self.default_provider
        return await check_request(self.client, name, self.client.provider(name), req)

    def target_for_url(self, url: str) -> FetchTarget:
        """The download for an old client's complete GetMap URL, if its host is allowed."""
        return target_from_url(url, self._policy, max_px=self.max_px)

    # -- fetching -------------------------------------------------------------------------------

    async def fetch(
        self,
        target: FetchTarget,
        on_stage: StageCallback | None = None,
        *,
        data_window: DataWindow | None = None,
    ) -> FetchedImage:
        """The stored image for `target`: a cache hit, a shared download, or a new download.

        `data_window` (from `check`) is carried on the result for the analyzers and answers.
        An image larger than its provider serves at once, or a GeoTIFF, is fetched as tiles and
        stitched (`plan`); an area request's polygon, figures and tiles come with the result.
        If every caller waiting for a download is cancelled, the download is cancelled too.
        """
        planned = await self.plan(target)
        fetched = await self._fetch(planned, on_stage)
        req = target.request
        area = None
        if req is not None and (
            req.region is not None
            or req.resolution_m is not None
            or isinstance(planned, MosaicTarget)
        ):
            area = await self._cpu.run(
                area_info,
                req.region,
                req.bbox,
                req.crs,
                width=fetched.record.width,
                height=fetched.record.height,
                resolution_m=req.resolution_m,
                tiles=len(planned.tiles) if isinstance(planned, MosaicTarget) else 1,
            )
        if data_window is None and area is None:
            return fetched
        return dataclasses.replace(
            fetched,
            data_window=data_window,
            region=None if req is None else req.region,
            area=area,
            parts=tuple((tile, t.image_id) for tile, t in planned.tiles)
            if isinstance(planned, MosaicTarget)
            else (),
        )

    async def _fetch(self, target: FetchTarget, on_stage: StageCallback | None) -> FetchedImage:
        started = time.perf_counter()
        image_id = target.image_id
        record = await self.store.get(image_id)
        if record is not None:
            self._report(target, "cache_hit", nbytes=record.bytes)
            return FetchedImage(record=record, cached=True)
        flight = self._flights.get(image_id)
        if flight is not None and flight.task.cancelling():
            # Its last waiter left and it is unwinding: joining it could only end in
            # CancelledError, so start afresh (its clean-up does not touch the new download).
            flight = None
        shared = flight is not None
        if flight is None:
            flight = self._start(target)
        if on_stage is not None:
            flight.listeners.append(on_stage)
            if flight.transferring:
                on_stage("downloading")
        flight.waiters += 1
        try:
            result = await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if on_stage is not None:
                with contextlib.suppress(ValueError):
                    flight.listeners.remove(on_stage)
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()
        if shared:
            self._report(
                target,
                "shared",
                nbytes=result.record.bytes,
                duration_s=time.perf_counter() - started,
            )
            return FetchedImage(
                record=result.record,
                shared=True,
                queue_wait_s=result.queue_wait_s,
                download_s=result.download_s,
            )
        return result

    async def fetch_all(
        self,
        targets: Mapping[str, FetchTarget],
        on_stage: Callable[..., None] | None = None,
        windows: Mapping[str, DataWindow | None] | None = None,
    ) -> dict[str, FetchedImage]:
        """Fetch several images concurrently (`asyncio.gather`); all or nothing.

        `windows` gives each side's data window (see `fetch`).

        If one fails, the others are cancelled and the error is re-raised with the failing
        side's name in its message and in `extra["side"]`.
        """

        async def one(side: str, target: FetchTarget) -> FetchedImage:
            stage = None if on_stage is None else (lambda s, **x: on_stage(side, s, **x))
            window = None if windows is None else windows.get(side)
            try:
                return await self.fetch(target, on_stage=stage, data_window=window)
            except SatapiError as exc:
                raise for_side(exc, side) from None

        results = await all_or_nothing([one(side, t) for side, t in targets.items()])
        return dict(zip(targets, results, strict=True))

    async def fetch_each(
        self, targets: Mapping[str, FetchTarget], *, data_window: DataWindow | None = None
    ) -> dict[str, FetchedImage | SatapiError]:
        """Fetch several images of one area concurrently (`data_window` as in `fetch`); a
        failure stands in for its own result only."""

        async def one(target: FetchTarget) -> FetchedImage:
            fetched = await self.fetch(target, data_window=data_window)
            # Each image's bytes go as soon as it is stored: a series reads them in turn.
            return dataclasses.replace(fetched, data=None) if fetched.data is not None else fetched

        results = await asyncio.gather(*(one(t) for t in targets.values()), return_exceptions=True)
        out: dict[str, FetchedImage | SatapiError] = {}
        for key, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, SatapiError):
                raise result
            out[key] = result
        return out

    def _start(self, target: FetchTarget) -> _Flight:
        image_id = target.image_id
        flight: _Flight
        task = asyncio.create_task(self._download(target, lambda s, **x: flight.stage(s, **x)))
        flight = _Flight(task=task)
        self._flights[image_id] = flight

        def _done(t: asyncio.Task[FetchedImage]) -> None:
            if self._flights.get(image_id) is flight:
                del self._flights[image_id]
            if not t.cancelled():
                t.exception()  # retrieved here so an unawaited failure is not logged as lost

        task.add_done_callback(_done)
        return flight

    async def _download(self, target: FetchTarget, stage: StageCallback) -> FetchedImage:
        if self._fleet is None:
            return await self._download_once(target, stage)
        started = time.perf_counter()
        reported = False
        try:
            async with self._fleet.hold(target.image_id):
                # Another process may have stored it while this one waited for the mutex.
                record = await self.store.get(target.image_id, check=True)
                reported = True
                if record is not None:
                    self._report(
                        target,
                        "shared",
                        nbytes=record.bytes,
                        duration_s=time.perf_counter() - started,
                    )
                    return FetchedImage(record=record, shared=True)
                return await self._download_once(target, stage)
        except BaseException as exc:
            if not reported:  # the mutex was not obtained (e.g. Redis is unreachable)
                self._report(target, download_outcome(exc), error=error_code(exc))
            raise

    async def _download_once(self, target: FetchTarget, stage: StageCallback) -> FetchedImage:
        # Reports the download once, however many requests share it.
        started = time.perf_counter()
        stats = DownloadStats()
        outcome, error, nbytes = "ok", None, 0
        try:
            result = await self._download_and_store(target, stage, stats)
            nbytes = result.record.bytes
            return result
        except BaseException as exc:
            outcome, error = download_outcome(exc), error_code(exc)
            raise
        finally:
            self._report(
                target,
                outcome,
                nbytes=nbytes,
                duration_s=time.perf_counter() - started - stats.queue_wait_s,
                queue_wait_s=stats.queue_wait_s,
                error=error,
            )

    def _report(
        self,
        target: FetchTarget,
        outcome: str,
        *,
        nbytes: int = 0,
        duration_s: float = 0.0,
        queue_wait_s: float = 0.0,
        error: str | None = None,
    ) -> None:
        self._observer.observe(
            DownloadSettled(
                provider=target.source,
                layer=target.layer,
                outcome=outcome,
                duration_s=duration_s,
                nbytes=nbytes,
                queue_wait_s=queue_wait_s,
                # Only a download's own line shows the URL: building it (urlencode) is skipped for
                # cache hits and shares, which are noted on their request's line.
                source_url=None
                if outcome in ("cache_hit", "shared")
                else target.url(redacted=True),
                error=error,
                image_id=target.image_id,
            )
        )

    async def _download_and_store(
        self, target: FetchTarget, stage: StageCallback, stats: DownloadStats
    ) -> FetchedImage:
        if isinstance(target, MosaicTarget):
            return await self._stitch(target, stage, stats)
        started = time.perf_counter()
        # The open runs in a worker thread and completes even if this task is cancelled
        # meanwhile: then close and remove what it made instead of leaking a temp file.
        opening = asyncio.ensure_future(self.store.open_writer(target.image_id))
        try:
            writer = await asyncio.shield(opening)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await (await opening).abort()
            raise
        try:
            await self.client.download(
                target,
                writer,
                on_transfer=lambda: stage("downloading", **_retry(stats)),
                stats=stats,
            )
            await writer.finish()
            held = writer.held  # a small image is checked (and then written) from memory
            info = await self._cpu.run(
                verify_image,
                writer.temp_path if held is None else held,
                expected_size=target.expected_size,
                max_pixels=self.max_px * self.max_px,
                inflate=self._inflate_png,
            )
            record = self._record(
                target, info.content_type, writer.bytes_written, info.width, info.height
            )
            record = await writer.commit(record)  # a shared store may hold another's
        finally:
            await writer.abort()
        stage("downloaded")
        return FetchedImage(
            record=record,
            queue_wait_s=stats.queue_wait_s,
            download_s=time.perf_counter() - started - stats.queue_wait_s,
            # A shared store may have answered with another process's copy: only bytes that
            # match the record go along.
            data=held
            if held is not None
            and record.bytes == len(held)
            and record.content_type == info.content_type
            else None,
        )

    async def _stitch(
        self, target: MosaicTarget, stage: StageCallback, stats: DownloadStats
    ) -> FetchedImage:
        """Fetch every tile (concurrently, under the same caps; each stored and shared like any
        image), report `progress` as they arrive, stitch them and store the whole."""
        started = time.perf_counter()
        total, done = len(target.tiles), 0
        stage("downloading")
        stage("progress", done=0, total=total)

        async def one(tile: Tile, tile_target: FetchTarget) -> FetchedImage:
            nonlocal done
            try:
                fetched = await self._fetch(tile_target, None)
            except SatapiError as exc:
                raise type(exc)(
                    f"The {tile.describe(total)} failed: {exc.message}",
                    retry_after=exc.retry_after,
                    extra={**exc.extra, "tile": tile.index + 1, "tiles": total},
                ) from None
            done += 1
            stage("progress", done=done, total=total)
            return fetched

        fetched = await all_or_nothing([one(tile, t) for tile, t in target.tiles])
        stats.queue_wait_s = max((f.queue_wait_s for f in fetched), default=0.0)
        encoded = [
            (tile, await self.store.read_bytes(f.record))
            for (tile, _), f in zip(target.tiles, fetched, strict=True)
        ]
        req = target.request
        assert req is not None
        data = await self._cpu.run(
            build_mosaic,
            encoded,
            width=req.width,
            height=req.height,
            fmt=target.out_format,
            bbox=req.bbox,
            crs=req.crs,
        )
        del encoded
        record = self._record(target, target.out_format, len(data), req.width, req.height)
        await self.store.put_bytes(record, data)
        stored = await self.store.get(record.id, check=True)
        stage("downloaded")
        return FetchedImage(
            record=stored or record,
            queue_wait_s=stats.queue_wait_s,
            download_s=time.perf_counter() - started - stats.queue_wait_s,
        )

    def _record(
        self, target: FetchTarget, content_type: str, nbytes: int, width: int, height: int
    ) -> ImageRecord:
        """The store record of a new image for `target`."""
        req = target.request
        now = time.time()
        return ImageRecord(
            id=target.image_id,
            content_type=content_type,
            bytes=nbytes,
            width=width,
            height=height,
            provider=target.source,
            layer=target.layer,
            bbox=list(req.bbox) if req else None,
            crs=target.crs,
            time=target.time,
            fetched_at=now,
            expires_at=None if target.has_time else now + self._cache_ttl_s,
            source_url=target.url(redacted=True),
            attribution=target.attribution,
            kind=target.kind,
        )

    @property
    def downloads_in_progress(self) -> int:
        """Distinct downloads running now."""
        return len(self._flights)


async def all_or_nothing(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run `coros` concurrently (`asyncio.gather`); when one fails, cancel the others, wait
    for them, and raise its error."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _retry(stats: DownloadStats) -> dict[str, int]:
    """`{"attempt": n, "attempts": max}` from the second attempt on; nothing for the first."""
    if stats.attempts < 2:
        return {}
    return {"attempt": stats.attempts, "attempts": stats.max_attempts}


def for_side(error: SatapiError, side: str) -> SatapiError:
    """The same error (class, status, code), saying which side of a pair it came from."""
    return type(error)(
        f"The {side} image failed: {error.message}",
        retry_after=error.retry_after,
        extra={**error.extra, "side": side},
    )
