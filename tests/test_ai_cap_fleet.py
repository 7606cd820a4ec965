"""The AI cap shared by a fleet: two apps sharing one real redis-server.

Two app instances run in this process (each with its own `RedisCoordinator`, so to Redis they are
two processes); the WMS is mocked with respx and the Messages API is the fake server on
127.0.0.1, which counts the calls it is answering at once, whichever app made them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import respx

from satapi.config import Settings
from satapi.coordination.redis import RedisCoordinator, RedisSlotLimiter
from satapi.errors import AIBusy, BackendUnavailable
from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.support.redis_server import RedisServer
from tests.test_ai_cap import URL, _body, _metric
from tests.test_vision_api import KEY, LandCoverWMS, app_client
from tests.test_vision_api import upstream as upstream  # the WMS fixture, used by name


def _settings(
    make_settings: Callable[..., Settings], fake: FakeAnthropic, redis: RedisServer, **caps: int
) -> Settings:
    return make_settings(
        anthropic_api_key=KEY,
        anthropic_base_url=fake.base_url,
        anthropic_max_retries=0,
        redis_url=redis.url,
        redis_lease_s=3.0,
        **caps,
    )


@contextlib.asynccontextmanager
async def _two_apps(
    settings: Settings, wms: respx.Router
) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    async with app_client(settings, wms=wms) as a, app_client(settings, wms=wms) as b:
        yield a, b


async def _gauge(client: httpx.AsyncClient, name: str) -> float:
    return _metric((await client.get("/metrics")).text, name)


async def _until(client: httpx.AsyncClient, name: str, value: float) -> None:
    # A fleet gauge appears with the coordinator's first reading of the fleet after the cap is
    # first used (refreshed every second): until then its absence means "not yet".
    for _ in range(500):
        text = (await client.get("/metrics")).text
        if re.search(rf"^{re.escape(name)} ", text, re.MULTILINE) and _metric(text, name) == value:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never reached {value}")


async def test_the_cap_holds_across_two_apps(
    make_settings: Callable[..., Settings],
    fake_anthropic: FakeAnthropic,
    upstream: LandCoverWMS,
    redis_server: RedisServer,
    wms: respx.Router,
) -> None:
    fake_anthropic.script(Reply(text=["Fields ", "and ", "a river."], delay=0.05))
    settings = _settings(
        make_settings, fake_anthropic, redis_server, max_concurrent_ai=3, max_ai_waiting=100
    )
    async with _two_apps(settings, wms) as apps:
        answers = await asyncio.gather(*(apps[i % 2].post(URL, json=_body(i)) for i in range(30)))
        for app in apps:  # the fleet gauges are read from Redis every second
            await _until(app, "satapi_fleet_ai_calls_in_flight", 0)
            await _until(app, "satapi_fleet_ai_calls_waiting", 0)
        metrics = [(await app.get("/metrics")).text for app in apps]
    assert [r.status_code for r in answers] == [200] * 30, answers[0].text
    assert all(r.json()["analysis"]["text"] == "Fields and a river." for r in answers)
    assert len(fake_anthropic.requests) == 30
    # Three at once for the fleet, as the API itself saw it: not three per app.
    assert fake_anthropic.max_in_flight == 3
    # Each app counted its own calls, and both made some.
    counts = [_metric(m, "satapi_ai_queue_wait_seconds_count") for m in metrics]
    assert counts == [15, 15]
    for text in metrics:
        assert _metric(text, "satapi_ai_calls_capacity") == 3
        assert _metric(text, "satapi_ai_calls_in_flight") == 0
        assert _metric(text, "satapi_ai_shed_total") == 0
    # 27 of the 30 had to wait for a permit held by either app.
    waited = sum(_metric(m, "satapi_ai_queue_wait_seconds_sum") for m in metrics)
    assert waited > 27 * 0.1


async def test_beyond_the_fleet_waiting_bound_is_503_ai_busy(
    make_settings: Callable[..., Settings],
    fake_anthropic: FakeAnthropic,
    upstream: LandCoverWMS,
    redis_server: RedisServer,
    wms: respx.Router,
) -> None:
    # Each reply takes 4.5 s (longer than the fleet gauges' 1 s refresh); one call may run (in A),
    # one may wait (in B), so a third -- in A, where nothing waits -- is refused at once: the
    # bound is the fleet's, not the process's.
    fake_anthropic.script(Reply(text=["a", "b", "c"], delay=1.5))
    settings = _settings(
        make_settings, fake_anthropic, redis_server, max_concurrent_ai=1, max_ai_waiting=1
    )
    async with _two_apps(settings, wms) as (a, b):
        first = asyncio.create_task(a.post(URL, json=_body(0)))
        assert await fake_anthropic.wait_for_async(lambda: fake_anthropic.in_flight == 1)
        second = asyncio.create_task(b.post(URL, json=_body(1)))
        await _until(b, "satapi_ai_calls_waiting", 1)
        await _until(a, "satapi_fleet_ai_calls_waiting", 1)
        assert await _gauge(a, "satapi_ai_calls_waiting") == 0
        assert await _gauge(a, "satapi_fleet_ai_calls_in_flight") == 1

        refused = await a.post(URL, json=_body(2))
        assert refused.status_code == 503, refused.text
        body = refused.json()
        assert body["success"] is False and body["code"] == "ai_busy"
        assert "AI analyses" in body["error"] and body["request_id"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert await _gauge(a, "satapi_ai_shed_total") == 1

        assert (await first).status_code == 200
        assert (await second).status_code == 200
        # B's call started only after A's ended.
        assert fake_anthropic.max_in_flight == 1
    assert len(fake_anthropic.requests) == 2  # the refused call never reached the API


async def test_redis_down_is_503_backend_unavailable(
    make_settings: Callable[..., Settings],
    fake_anthropic: FakeAnthropic,
    upstream: LandCoverWMS,
    redis_server: RedisServer,
    wms: respx.Router,
) -> None:
    settings = _settings(make_settings, fake_anthropic, redis_server, max_concurrent_ai=2)
    async with app_client(settings, wms=wms) as client:
        # The image is stored (local analysis), so the Claude request below needs no WMS permit:
        # the AI cap is the only thing that asks Redis.
        local = await client.post(URL, json={**_body(0), "analyzer": "local"})
        assert local.status_code == 200, local.text
        redis_server.stop()
        r = await client.post(URL, json=_body(0))
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "backend_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        metrics = (await client.get("/metrics")).text
        assert 'satapi_redis_errors_total{operation="acquire"}' in metrics
        assert _metric(metrics, "satapi_ai_calls_waiting") == 0
        assert fake_anthropic.requests == []
        redis_server.start()  # the same port, empty: no restart needed
        for _ in range(50):
            r = await client.post(URL, json=_body(0))
            if r.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 200, r.text
        assert len(fake_anthropic.requests) == 1


# --- RedisSlotLimiter on its own -------------------------------------------------------------


def _limiter(coord: RedisCoordinator, seen: list[str], capacity: int = 1) -> RedisSlotLimiter:
    return RedisSlotLimiter(
        coord,
        "ai",
        capacity,
        max_waiting=1,
        busy=lambda message, retry_after: AIBusy(message, retry_after=retry_after),
        observe=lambda outcome, _: seen.append(outcome),
    )


async def test_slot_limiter_counts_sheds_and_gives_back_cancelled_places(
    redis_server: RedisServer,
) -> None:
    coord_a = RedisCoordinator(redis_server.url, lease_s=3.0)
    coord_b = RedisCoordinator(redis_server.url, lease_s=3.0)
    await coord_a.start()
    await coord_b.start()
    seen: list[str] = []
    a, b = _limiter(coord_a, seen), _limiter(coord_b, seen)
    try:
        async with a.slot() as waited:
            assert waited < 1
            assert (a.stats().in_flight, a.stats().max_in_flight) == (1, 1)
            waiter = asyncio.create_task(_enter(b))
            # Until B's place in the queue is in Redis (not only in B's own count): before
            # that, A's second caller could take the one waiting place and wait on A itself.
            for _ in range(500):
                if await _fleet_waiting(coord_a) == 1 or waiter.done():
                    break
                await asyncio.sleep(0.01)
            assert not waiter.done(), waiter.exception()
            assert (b.stats().waiting, b.stats().in_flight) == (1, 0)
            with pytest.raises(AIBusy) as refused:
                async with a.slot():
                    pass  # pragma: no cover
            assert 1 <= refused.value.retry_after <= 60
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert b.stats().waiting == 0
        # The permit and the cancelled waiter's place came back: B gets in at once.
        async with b.slot() as waited:
            assert waited < 1
        assert a.stats().in_flight == b.stats().in_flight == 0
        assert seen == ["granted", "shed", "cancelled", "granted"]
        # An error in the body is the body's, not a refusal.
        with pytest.raises(ValueError):
            async with a.slot():
                raise ValueError("boom")
        redis_server.stop()
        with pytest.raises(BackendUnavailable):
            async with a.slot():
                pass  # pragma: no cover
        assert a.stats().waiting == 0
    finally:
        await coord_a.close()
        await coord_b.close()


# The AI semaphore's waiting counts in Redis: process id -> how many of its requests wait.
AI_WAITING = "{satapi}:semw:ai"


async def _fleet_waiting(coord: RedisCoordinator) -> int:
    """The fleet's waiting count for the AI semaphore, as Redis holds it."""
    return sum(int(count) for count in await coord.redis.hvals(AI_WAITING))


async def _enter(limiter: RedisSlotLimiter) -> None:
    async with limiter.slot():
        await asyncio.sleep(10)


async def test_a_renewal_racing_a_grant_leaves_no_stale_waiting_count(
    redis_server: RedisServer,
) -> None:
    # The renewal loop also syncs this process's waiting counts to Redis. Run at the moment an
    # acquire is granted, it once wrote back the count from before the grant: a waiter that
    # did not exist, so a fleet with `max_ai_waiting` 1 shed the next caller for a second.
    coord = RedisCoordinator(redis_server.url, lease_s=3.0)  # not started: renewals run by hand
    sem = coord.semaphore("ai", 1, max_waiting=1)
    try:
        for _ in range(20):
            async with contextlib.AsyncExitStack() as stack:
                held = asyncio.create_task(stack.enter_async_context(coord.acquire(sem)))
                await asyncio.sleep(0)  # the acquire has counted itself and sent its script
                await coord._renew_all()
                await held
                assert await coord.redis.hget(AI_WAITING, coord.proc) is None
        await coord._renew_all()  # quiet since the last one: the count is synced (none)
        assert await coord.redis.hlen(AI_WAITING) == 0
    finally:
        await coord.close()
