"""The event-loop lag sampler and its histogram, `satapi_event_loop_lag_seconds`."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

from satapi.config import Settings
from satapi.observability.looplag import lag_sampler
from tests.test_vision_api import app_client


async def test_a_blocked_loop_shows_as_lag() -> None:
    seen: list[float] = []
    async with lag_sampler(seen.append, interval_s=0.01):
        await asyncio.sleep(0.05)
        quiet = list(seen)
        time.sleep(0.15)  # blocking the loop on purpose: that is what the sampler must see
        await asyncio.sleep(0.05)
    assert quiet and max(quiet) < 0.1
    assert max(seen) >= 0.12  # the sample that spanned the block saw most of its 150 ms
    count = len(seen)
    await asyncio.sleep(0.05)
    assert len(seen) == count  # the task stopped with the block


async def test_metrics_export_the_lag_histogram(make_settings: Callable[..., Settings]) -> None:
    async with app_client(make_settings()) as client:
        await asyncio.sleep(0.3)  # ~6 samples at 50 ms
        text = (await client.get("/metrics")).text
    count = re.search(r"^satapi_event_loop_lag_seconds_count (\S+)$", text, re.MULTILINE)
    assert count is not None and float(count.group(1)) >= 2
    assert 'satapi_event_loop_lag_seconds_bucket{le="0.025"}' in text
