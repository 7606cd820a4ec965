"""Shared by the SSE routes: numbered events, stage reports, and the analysis event sequence."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi.sse import ServerSentEvent

from satapi.analysis import Analyzed
from satapi.analyzers.base import TextDelta
from satapi.errors import SatapiError

T = TypeVar("T")
Report = Callable[[dict[str, Any]], None]

log = logging.getLogger("satapi.stream")


class EventStream:
    """Makes `ServerSentEvent`s with increasing ids."""

    def __init__(self) -> None:
        self._next = 0

    def event(self, name: str, data: Any, *, retry_ms: int | None = None) -> ServerSentEvent:
        """The next event called `name` carrying `data` as JSON (and an SSE `retry` field)."""
        self._next += 1
        return ServerSentEvent(event=name, id=str(self._next), data=data, retry=retry_ms)

    def status(self, stage: str, **extra: Any) -> ServerSentEvent:
        """A `status` event for a stage: queued, downloading, downloaded, analyzing."""
        return self.event("status", {"stage": stage, **extra})

    def error(self, error: SatapiError) -> ServerSentEvent:
        """The `error` event sent when something fails after the stream started.

        When trying again later may succeed (`ai_busy`, `overloaded`...), the data carries
        `retry_after` in seconds, as the JSON routes' `Retry-After` header does, and the event's
        SSE `retry` field says the same in milliseconds for `EventSource` clients.
        """
        data = {"code": error.code, "error": error.message, **error.extra}
        if error.retry_after is None:
            return self.event("error", data)
        seconds = max(1, math.ceil(error.retry_after))
        return self.event("error", {**data, "retry_after": seconds}, retry_ms=seconds * 1000)


def emit(report: Report, name: str, data: dict[str, Any]) -> None:
    """Have `analysis_events` send an event called `name` while the fetch step runs."""
    report({"event": name, "data": data})


@dataclass
class Done(Generic[T]):
    """The result of the work `with_reports` ran."""

    value: T


async def with_reports(
    work: Callable[[Report], Awaitable[T]],
) -> AsyncIterator[dict[str, Any] | Done[T]]:
    """Run `work(report)`, yielding what it reports while it runs, then `Done(result)`.

    Closing the iterator early cancels the work.
    """
    reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.ensure_future(work(reports.put_nowait))
    try:
        while not task.done():
            getter = asyncio.ensure_future(reports.get())
            try:
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
            if getter.done() and not getter.cancelled():
                yield getter.result()
        while not reports.empty():
            yield reports.get_nowait()
        yield Done(task.result())
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


@dataclass(kw_only=True)
class AnalysisSteps(Generic[T]):
    """What differs between the analysis streams (one image, or a before/after pair)."""

    # Select (with `clearest`) and download; reports {"stage": "selecting" | "downloading", ...}
    # and events of its own (`emit`).
    fetch: Callable[[Report], Awaitable[T]]
    image_events: Callable[[T], list[dict[str, Any]]]  # one `image` event each
    # One `downloaded` status each: `{"cached": ...}`, with `"side"` for a pair.
    downloaded: Callable[[T], list[dict[str, Any]]]
    analyze: Callable[[T], AsyncIterator[TextDelta | Analyzed]]
    answer: Callable[[T, Analyzed], dict[str, Any]]  # the non-stream 200 body
    save: Callable[[Analyzed, dict[str, Any]], Awaitable[None]]
    analyzer: str


async def analysis_events(steps: AnalysisSteps[T]) -> AsyncIterator[ServerSentEvent]:
    """status queued -> [selecting -> selection(s)] -> downloading -> downloaded -> image(s) ->
    analyzing -> delta* -> result.

    A failure after the stream started becomes an `error` event, then the stream ends.
    """
    events = EventStream()
    try:
        yield events.status("queued")
        fetched: T | None = None
        async for item in with_reports(steps.fetch):
            if isinstance(item, Done):
                fetched = item.value
            elif "event" in item:  # an event of its own, e.g. `selection` (see `emit`)
                yield events.event(item["event"], item["data"])
            elif item.get("stage") == "progress":  # tiles of a large area arriving
                yield events.event("progress", {k: v for k, v in item.items() if k != "stage"})
            elif item.get("stage") in ("selecting", "downloading"):
                yield events.status(
                    item["stage"], **{k: v for k, v in item.items() if k != "stage"}
                )
        assert fetched is not None
        for done in steps.downloaded(fetched):
            yield events.status("downloaded", **done)
        for image in steps.image_events(fetched):
            yield events.event("image", image)
        yield events.status("analyzing", analyzer=steps.analyzer)
        analyzed: Analyzed | None = None
        async for event in steps.analyze(fetched):
            if isinstance(event, TextDelta):
                yield events.event("delta", {"text": event.text})
            else:
                analyzed = event
        assert analyzed is not None
        answer = steps.answer(fetched, analyzed)
        await steps.save(analyzed, answer)
        yield events.event("result", answer)
    except SatapiError as exc:
        yield events.error(exc)
    except Exception:
        log.exception("analysis stream failed")
        yield events.error(SatapiError("Internal error; the incident was logged."))
