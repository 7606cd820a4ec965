"""Runs CPU-bound work (image decode, resize, numpy) in a bounded pool of worker threads."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

P = ParamSpec("P")
T = TypeVar("T")


M_ARENA_MAX = -8  # glibc's mallopt parameter number for the arena limit


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas for this process (0: leave glibc's default); True if applied.

    glibc gives threads that allocate at the same time arenas of their own, up to 8 per core.
    The worker threads here (CPU work, aiofiles) each touch several, and freed memory
    scattered over many arenas is rarely returned: a long soak grew RSS steadily this way.
    Other C libraries have no such knob; nothing happens there.
    """
    if arenas <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


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
