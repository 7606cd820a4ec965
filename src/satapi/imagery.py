"""Getting an image: from the store if present, else one shared download, verified, stored."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from satapi.analyzers.base import DataWindow
from satapi.cpu import CpuRunner
from satapi.errors import InvalidRequest, SatapiError
from satapi.imaging import verify_image
from satapi.layercheck import check_request
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

    @property
    def coverage(self) -> float | None:
        """The share of the image inside the layer's extent (0-1), when the extent is known."""
        return None if self.data_window is None else round(self.data_window.fraction, 4)


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
        observer: Observer | None = None,
        fleet: FleetFlightLock | None = None,
    ) -> None:
        self.client = client
        # Single flight across processes: the download of an image id runs under a fleet-wide
        # mutex; whoever gets it second finds the image in a shared store.
        self._fleet = fleet
        self.store = store
        self._cpu = cpu
        self._policy = policy
        self.default_provider = default_provider
        self.max_px = max_px
        self._cache_ttl_s = cache_ttl_s
        self._flights: dict[str, _Flight] = {}
        self._observer: Observer = observer if observer is not None else NullObserver()

    # -- targets --------------------------------------------------------------------------------

    def target(self, provider: str | None, req: GetMapRequest) -> FetchTarget:
        """The download for `req` on `provider` (default provider when None), validated."""
        name = provider or self.default_provider
        config = self.client.provider(name)
        for side, value in (("width", req.width), ("height", req.height)):
            if not 1 <= value <= self.max_px:
                raise InvalidRequest(
                    f"{side} must be between 1 and {self.max_px} pixels (the service's "
                    "max_image_px)."
                )
        return self.client.target(name, config, req)

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
        If every caller waiting for a download is cancelled, the download is cancelled too.
        """
        fetched = await self._fetch(target, on_stage)
        if data_window is None:
            return fetched
        return dataclasses.replace(fetched, data_window=data_window)

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

        tasks = [asyncio.create_task(one(side, t)) for side, t in targets.items()]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return dict(zip(targets, results, strict=True))

    async def fetch_each(
        self, targets: Mapping[str, FetchTarget], *, data_window: DataWindow | None = None
    ) -> dict[str, FetchedImage | SatapiError]:
        """Fetch several images of one area concurrently (`data_window` as in `fetch`); a
        failure stands in for its own result only."""
        results = await asyncio.gather(
            *(self.fetch(t, data_window=data_window) for t in targets.values()),
            return_exceptions=True,
        )
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
            info = await self._cpu.run(
                verify_image,
                writer.temp_path,
                expected_size=target.expected_size,
                max_pixels=self.max_px * self.max_px,
            )
            req = target.request
            now = time.time()
            record = ImageRecord(
                id=target.image_id,
                content_type=info.content_type,
                bytes=writer.bytes_written,
                width=info.width,
                height=info.height,
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
            record = await writer.commit(record)  # a shared store may hold another's
        finally:
            await writer.abort()
        stage("downloaded")
        return FetchedImage(
            record=record,
            queue_wait_s=stats.queue_wait_s,
            download_s=time.perf_counter() - started - stats.queue_wait_s,
        )

    @property
    def downloads_in_progress(self) -> int:
        """Distinct downloads running now."""
        return len(self._flights)


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
