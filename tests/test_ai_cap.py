"""The AI cap: at most `max_concurrent_ai` Claude calls, shedding, metrics.

The app runs in-process; the WMS is mocked with respx and the Messages API is the fake server
on 127.0.0.1, which counts the calls it is answering at once.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable

import pytest
import respx

from satapi.analyzers.claude import make_anthropic_client
from satapi.app import make_ai_http_client
from satapi.config import Settings
from satapi.coordination.local import LocalSlotLimiter
from satapi.errors import AIBusy
from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.test_vision_api import KEY, LandCoverWMS, app_client
from tests.test_vision_api import upstream as upstream  # the WMS fixture, used by name

URL = "/api/vision/analyze_satellite"


def _body(i: int) -> dict[str, object]:
    # A distinct bbox per request: distinct images, so no result is served from the cache.
    west = 10.0 + i * 0.01
    return {"bbox": [west, 45.0, west + 1, 46.0], "width": 64, "height": 64, "analyzer": "claude"}


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in the metrics"
    return float(match.group(1))


def _settings(make_settings: Callable[..., Settings], fake: FakeAnthropic, **caps: int) -> Settings:
    return make_settings(
        anthropic_api_key=KEY,
        anthropic_base_url=fake.base_url,
        anthropic_max_retries=0,
        **caps,
    )


async def test_cap_holds_under_50_concurrent_requests(
    make_settings: Callable[..., Settings],
    fake_anthropic: FakeAnthropic,
    upstream: LandCoverWMS,
    wms: respx.Router,
) -> None:
    fake_anthropic.script(Reply(text=["Fields ", "and ", "a river."], delay=0.05))
    settings = _settings(make_settings, fake_anthropic, max_concurrent_ai=5, max_ai_waiting=100)
    async with app_client(settings, wms=wms) as client:
        answers = await asyncio.gather(*(client.post(URL, json=_body(i)) for i in range(50)))
        metrics = (await client.get("/metrics")).text
    assert [r.status_code for r in answers] == [200] * 50, answers[0].text
    assert all(r.json()["analysis"]["text"] == "Fields and a river." for r in answers)
    assert len(fake_anthropic.requests) == 50
    # The cap is reached and never exceeded, as the API itself saw it.
    assert fake_anthropic.max_in_flight == 5
    # Kept alive and sized to the cap: 50 calls over 5 connections, none opened while one idled.
    assert len({r.peer for r in fake_anthropic.requests}) == 5
    assert _metric(metrics, "satapi_ai_calls_capacity") == 5
    assert _metric(metrics, "satapi_ai_calls_in_flight") == 0
    assert _metric(metrics, "satapi_ai_calls_waiting") == 0
    assert _metric(metrics, "satapi_ai_queue_wait_seconds_count") == 50
    # 45 of the 50 had to wait for a permit: at least one reply (3 deltas 50 ms apart) each.
    assert _metric(metrics, "satapi_ai_queue_wait_seconds_sum") > 45 * 0.1
    assert _metric(metrics, "satapi_ai_shed_total") == 0


async def test_beyond_the_waiting_bound_is_503_ai_busy_with_retry_after(
    make_settings: Callable[..., Settings],
    fake_anthropic: FakeAnthropic,
    upstream: LandCoverWMS,
    wms: respx.Router,
) -> None:
    # The first call is held until the third request has been refused; one call may run, one
    # may wait, the third is refused at once.
    release = threading.Event()
    fake_anthropic.script(Reply(text=["a", "b", "c"], hold=release), Reply(text=["a", "b", "c"]))
    settings = _settings(make_settings, fake_anthropic, max_concurrent_ai=1, max_ai_waiting=1)
    async with app_client(settings, wms=wms) as client:

        async def gauge(name: str) -> float:
            return _metric((await client.get("/metrics")).text, name)

        first = asyncio.create_task(client.post(URL, json=_body(0)))
        assert await fake_anthropic.wait_for_async(lambda: fake_anthropic.in_flight == 1)
        second = asyncio.create_task(client.post(URL, json=_body(1)))
        for _ in range(200):
            if await gauge("satapi_ai_calls_waiting") == 1:
                break
            await asyncio.sleep(0.01)
        assert await gauge("satapi_ai_calls_in_flight") == 1
        assert await gauge("satapi_ai_calls_waiting") == 1

        refused = await client.post(URL, json=_body(2))
        assert refused.status_code == 503, refused.text
        body = refused.json()
        assert body["success"] is False and body["code"] == "ai_busy"
        assert "AI analyses" in body["error"] and body["request_id"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert await gauge("satapi_ai_shed_total") == 1

        release.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200
        assert await gauge("satapi_ai_calls_in_flight") == 0
    assert len(fake_anthropic.requests) == 2  # the refused call never reached the API


async def test_cache_hits_and_local_analyses_take_no_ai_permit(
    make_settings: Callable[..., Settings],
    fake_anthropic: FakeAnthropic,
    upstream: LandCoverWMS,
    wms: respx.Router,
) -> None:
    settings = _settings(make_settings, fake_anthropic, max_concurrent_ai=1, max_ai_waiting=0)
    async with app_client(settings, wms=wms) as client:
        assert (await client.post(URL, json=_body(0))).status_code == 200
        again = await client.post(URL, json=_body(0))
        local = await client.post(URL, json={**_body(1), "analyzer": "local"})
        metrics = (await client.get("/metrics")).text
    assert again.status_code == 200 and again.json()["analysis"]["cached"] is True
    assert local.status_code == 200
    assert _metric(metrics, "satapi_ai_queue_wait_seconds_count") == 1


# --- LocalSlotLimiter on its own -------------------------------------------------------------


def _limiter(capacity: int, max_waiting: int, seen: list[tuple[str, float]]) -> LocalSlotLimiter:
    return LocalSlotLimiter(
        capacity,
        max_waiting=max_waiting,
        busy=lambda message, retry_after: AIBusy(message, retry_after=retry_after),
        observe=lambda outcome, waited: seen.append((outcome, waited)),
    )


async def test_cancelled_waiter_gives_back_its_place() -> None:
    seen: list[tuple[str, float]] = []
    limiter = _limiter(1, 1, seen)
    async with limiter.slot():
        waiter = asyncio.create_task(_hold(limiter))
        await asyncio.sleep(0.01)
        assert limiter.stats().waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.stats().waiting == 0
    stats = limiter.stats()
    assert (stats.in_flight, stats.waiting, stats.max_in_flight) == (0, 0, 1)
    async with limiter.slot() as waited:  # the permit came back
        assert waited < 0.1
    assert [outcome for outcome, _ in seen] == ["granted", "cancelled", "granted"]


async def test_retry_after_follows_how_long_permits_are_held() -> None:
    limiter = _limiter(2, 0, [])
    assert limiter.retry_after() == 1  # nothing measured yet
    for _ in range(2):
        async with limiter.slot():
            await asyncio.sleep(0.3)
    async with limiter.slot(), limiter.slot():
        with pytest.raises(AIBusy) as refused:
            async with limiter.slot():
                pass  # pragma: no cover
    # Mean hold ~0.3 s, one caller ahead per permit: rounds up to 1 s; never below 1.
    assert refused.value.retry_after == 1
    limiter._mean_hold_s = 50.0
    assert limiter.retry_after() == 25
    limiter._mean_hold_s = 1000.0
    assert limiter.retry_after() == 60


async def _hold(limiter: LocalSlotLimiter) -> None:
    async with limiter.slot():
        await asyncio.sleep(10)


@pytest.mark.parametrize("calls", [120])
async def test_connections_are_kept_alive_up_to_the_cap(
    make_settings: Callable[..., Settings], fake_anthropic: FakeAnthropic, calls: int
) -> None:
    """Two waves of 120 overlapping calls (more than the 100 idle connections the SDK's default
    pool keeps) through the app's SDK client go over 120 connections: the second wave finds
    every connection of the first one idle and reuses it."""
    fake_anthropic.script(Reply(text=["o", "k"], delay=1.5))
    settings = _settings(make_settings, fake_anthropic, max_concurrent_ai=calls)
    client = make_anthropic_client(
        KEY,
        base_url=fake_anthropic.base_url,
        max_retries=0,
        http_client=make_ai_http_client(settings),
    )

    async def call() -> str:
        async with client.messages.stream(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            return await stream.get_final_text()

    try:
        for _ in range(2):
            assert await asyncio.gather(*(call() for _ in range(calls))) == ["ok"] * calls
    finally:
        await client.close()
    assert fake_anthropic.max_in_flight == calls  # each wave overlapped whole
    assert len({r.peer for r in fake_anthropic.requests}) == calls
