"""Shared by the SSE routes: numbered events, and downloads that report their stages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi.sse import ServerSentEvent

from satapi.errors import SatapiError
from satapi.imagery import FetchedImage, ImageService
from satapi.wms_client import FetchTarget


class EventStream:
    """Makes `ServerSentEvent`s with increasing ids."""

    def __init__(self) -> None:
        self._next = 0

    def event(self, name: str, data: Any) -> ServerSentEvent:
        """The next event called `name` carrying `data` as JSON."""
        self._next += 1
        return ServerSentEvent(event=name, id=str(self._next), data=data)

    def status(self, stage: str, **extra: Any) -> ServerSentEvent:
        """A `status` event for a stage: queued, downloading, downloaded, analyzing."""
        return self.event("status", {"stage": stage, **extra})

    def error(self, error: SatapiError) -> ServerSentEvent:
        """The `error` event sent when something fails after the stream started."""
        return self.event("error", {"code": error.code, "error": error.message, **error.extra})


async def fetch_with_stages(
    images: ImageService, target: FetchTarget
) -> AsyncIterator[str | FetchedImage]:
    """Fetch `target`, yielding stage names ("downloading") as they happen, then the image.

    Cancelling the consumer cancels the fetch (and the download, unless others share it).
    """
    stages: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(images.fetch(target, on_stage=stages.put_nowait))
    try:
        while not task.done():
            getter = asyncio.create_task(stages.get())
            try:
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
            if getter.done() and not getter.cancelled():
                stage = getter.result()
                if stage == "downloading":
                    yield stage
        yield task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SatapiError):
                await task
