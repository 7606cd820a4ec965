"""Event-loop lag: a tiny periodic task measures how late the loop wakes it (starvation).

Each sample becomes a `LoopLagSampled` observation (see `satapi.app`), which metrics turn into
the `satapi_event_loop_lag_seconds` histogram.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

# Often enough to catch a stall of a few tens of ms, cheap enough to be free (~20 wake-ups/s).
DEFAULT_INTERVAL_S: Final = 0.05


async def sample_lag(observe: Callable[[float], None], interval_s: float) -> None:
    """Forever: sleep `interval_s`, then `observe` how much later than asked the loop woke us.

    A lag of x seconds means ready callbacks (requests, probes) waited about that long behind
    whatever held the loop: CPU work, blocking calls, or too much work at once.
    """
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_s)
        observe(max(0.0, loop.time() - started - interval_s))


@asynccontextmanager
async def lag_sampler(
    observe: Callable[[float], None], interval_s: float = DEFAULT_INTERVAL_S
) -> AsyncIterator[asyncio.Task[None]]:
    """Run `sample_lag` in a background task for the duration of the block."""
    task = asyncio.create_task(sample_lag(observe, interval_s), name="satapi-loop-lag")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
