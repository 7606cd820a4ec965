"""Runs CPU-bound work (image decode, resize, numpy) in a bounded pool of worker threads."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

P = ParamSpec("P")
T = TypeVar("T")


class CpuRunner:
    """Runs blocking callables off the event loop, at most `max_threads` at a time."""

    def __init__(self, max_threads: int = 4) -> None:
        self._limiter = CapacityLimiter(max_threads)

    @property
    def max_threads(self) -> int:
        """How many worker threads may run at once."""
        return int(self._limiter.total_tokens)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` in a worker thread and return its result."""
        return await anyio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self._limiter
        )
