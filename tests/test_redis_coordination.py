"""The Redis lease semaphores, limiter and shared values, against a real redis-server."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from satapi.coordination.redis import RedisCoordinator, RedisLimiter
from satapi.errors import BackendUnavailable, Overloaded
from tests.support.redis_server import RedisServer


async def _pair(url: str, lease_s: float) -> AsyncIterator[list[RedisCoordinator]]:
    made = [RedisCoordinator(url, lease_s=lease_s, op_timeout_s=0.5) for _ in range(2)]
    for c in made:
        await c.start()
    try:
        yield made
    finally:
        for c in made:
            await c.close()


@pytest.fixture
async def coords(redis_server: RedisServer) -> AsyncIterator[list[RedisCoordinator]]:
    """Two coordinators (two "processes") sharing the test's Redis, lease 1 s."""
    async for made in _pair(redis_server.url, 1.0):
        yield made


@pytest.fixture
async def long_lease_coords(redis_server: RedisServer) -> AsyncIterator[list[RedisCoordinator]]:
    """The same with a 6 s lease: for tests that a permit comes back at once, not after a lease,
    with room for a loaded machine (half a lease) between the two."""
    async for made in _pair(redis_server.url, 6.0):
        yield made


async def test_cap_holds_across_coordinators(coords: list[RedisCoordinator]) -> None:
    sems = [c.semaphore("cap", 3, max_waiting=-1) for c in coords]
    inside = peak = 0

    async def work(i: int) -> None:
        nonlocal inside, peak
        async with coords[i % 2].acquire(sems[i % 2]):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    async with asyncio.timeout(10):
        await asyncio.gather(*(work(i) for i in range(30)))
    assert peak == 3


async def test_waiters_wake_on_release_not_on_a_timer(coords: list[RedisCoordinator]) -> None:
    a, b = coords
    holder_released = asyncio.Event()
    async with a.acquire(a.semaphore("m", 1)):
        waiter = asyncio.create_task(_timed_acquire(b, b.semaphore("m", 1)))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        holder_released.set()
    waited = await asyncio.wait_for(waiter, 2)
    # Woken by the release message, well before the 1 s fallback timer.
    assert 0.2 <= waited < 0.6


async def _timed_acquire(coord: RedisCoordinator, sem: object) -> float:
    async with coord.acquire(sem) as waited:  # type: ignore[arg-type]
        return waited


async def test_dead_holder_lease_returns(redis_server: RedisServer) -> None:
    dead = RedisCoordinator(redis_server.url, lease_s=1.0)
    live = RedisCoordinator(redis_server.url, lease_s=1.0)
    await live.start()
    try:
        # A holder that stops renewing and never releases: a killed process.
        sem = dead.semaphore("cap", 2)
        for n in range(2):
            assert await dead._obtain((sem,), f"dead:{n}") == 0
        started = time.monotonic()
        async with asyncio.timeout(5):
            async with (
                live.acquire(live.semaphore("cap", 2)),
                live.acquire(live.semaphore("cap", 2)),
            ):
                elapsed = time.monotonic() - started
        assert 0.5 < elapsed < 2.5
    finally:
        await live.close()
        await dead.redis.aclose()


async def test_live_holder_keeps_its_lease(coords: list[RedisCoordinator]) -> None:
    a, b = coords
    async with a.acquire(a.semaphore("long", 1)):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.5):  # 2.5 leases
                async with b.acquire(b.semaphore("long", 1)):
                    pass


async def test_cancelled_waiters_leave_no_permit_behind(
    long_lease_coords: list[RedisCoordinator],
) -> None:
    a, b = long_lease_coords
    sem_a, sem_b = a.semaphore("c", 2, max_waiting=-1), b.semaphore("c", 2, max_waiting=-1)
    holders = [a.acquire(sem_a), a.acquire(sem_a)]
    for h in holders:
        await h.__aenter__()
    waiters = [asyncio.create_task(_timed_acquire(b, sem_b)) for _ in range(20)]
    await asyncio.sleep(0.1)
    for h in holders:
        await h.__aexit__(None, None, None)
    # Cancel them while permits are being handed out.
    await asyncio.sleep(0)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    # Both permits are free again, at once (not after a lease).
    async with asyncio.timeout(3.0):
        async with a.acquire(sem_a), a.acquire(sem_a):
            pass
    assert b._waiting[sem_b.name] == 0


async def test_waiter_cancelled_while_its_grant_is_in_flight(
    long_lease_coords: list[RedisCoordinator], caplog: pytest.LogCaptureFixture
) -> None:
    """The CI race, made certain: the waiter is cancelled after Redis granted its permit but
    before its task has run its clean-up (its future is already cancelled then)."""
    a, b = long_lease_coords
    sem_a, sem_b = a.semaphore("g", 1, max_waiting=-1), b.semaphore("g", 1, max_waiting=-1)
    holder = a.acquire(sem_a)
    await holder.__aenter__()
    waiter = asyncio.create_task(_timed_acquire(b, sem_b))
    await asyncio.sleep(0.1)
    original = b._attempt

    async def cancel_on_grant(*args: Any) -> Any:
        attempt = await original(*args)
        if args[2] == "retry" and attempt.status == 1:
            waiter.cancel()  # cancels the awaited future now; the task runs later
        return attempt

    b._attempt = cancel_on_grant  # type: ignore[method-assign]
    await holder.__aexit__(None, None, None)
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    # The granted permit went back at once, not after a lease.
    async with asyncio.timeout(3.0):
        async with a.acquire(sem_a):
            pass
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    assert b._waiting[sem_b.name] == 0


async def test_cancelled_holder_releases(long_lease_coords: list[RedisCoordinator]) -> None:
    a, b = long_lease_coords

    async def hold() -> None:
        async with a.acquire(a.semaphore("h", 1)):
            await asyncio.sleep(30)

    task = asyncio.create_task(hold())
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with asyncio.timeout(3.0):  # half a lease
        async with b.acquire(b.semaphore("h", 1)):
            pass


async def test_max_waiting_sheds_fleet_wide(coords: list[RedisCoordinator]) -> None:
    a, b = coords
    sem_a, sem_b = a.semaphore("s", 1, max_waiting=3), b.semaphore("s", 1, max_waiting=3)
    async with a.acquire(sem_a):
        waiting = [asyncio.create_task(_timed_acquire(a, sem_a)) for _ in range(2)]
        waiting.append(asyncio.create_task(_timed_acquire(b, sem_b)))
        await asyncio.sleep(0.1)
        with pytest.raises(Overloaded):
            async with b.acquire(sem_b):
                pass
        with pytest.raises(Overloaded):
            async with a.acquire(sem_a):
                pass
    async with asyncio.timeout(3):
        await asyncio.gather(*waiting)


async def test_min_interval_spaces_starts_fleet_wide(coords: list[RedisCoordinator]) -> None:
    starts: list[float] = []

    async def one(c: RedisCoordinator) -> None:
        async with c.acquire(c.semaphore("iv", 10, min_interval_s=0.1)):
            starts.append(time.monotonic())

    lag = {"max": 0.0}

    async def ticker() -> None:  # how late this loop runs (a busy test machine): see below
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.005)
            lag["max"] = max(lag["max"], time.monotonic() - before - 0.005)

    ticking = asyncio.create_task(ticker())
    try:
        async with asyncio.timeout(5):
            await asyncio.gather(*(one(coords[i % 2]) for i in range(6)))
    finally:
        ticking.cancel()
    starts.sort()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Redis spaces the grants 0.1 s apart; a start is seen here when the loop resumes its
    # waiter, so one seen late by the loop's lag can look that much closer to the next.
    assert min(gaps) > 0.08 - lag["max"], (gaps, lag)
    assert starts[-1] - starts[0] > 5 * 0.08 - lag["max"], (starts, lag)


async def test_limiter_global_and_provider_caps(coords: list[RedisCoordinator]) -> None:
    limiters = [RedisLimiter(c, 4, {"p": 2, "q": 4}, max_waiting=100) for c in coords]
    inside = {"p": 0, "all": 0}
    peak = {"p": 0, "all": 0}

    async def one(i: int, key: str) -> None:
        async with limiters[i % 2].slot(key):
            inside["all"] += 1
            inside["p"] += key == "p"
            peak["all"] = max(peak["all"], inside["all"])
            peak["p"] = max(peak["p"], inside["p"])
            await asyncio.sleep(0.03)
            inside["all"] -= 1
            inside["p"] -= key == "p"

    async with asyncio.timeout(10):
        await asyncio.gather(*(one(i, "pq"[i % 3 == 0]) for i in range(40)))
    assert peak == {"p": 2, "all": 4}
    await asyncio.sleep(1.2)  # the stats loop reads the fleet's counters every second
    fleet = limiters[0].fleet_stats()
    assert fleet["*"].in_flight == 0 and fleet["*"].capacity == 4


async def test_fleet_stats_show_both_processes(coords: list[RedisCoordinator]) -> None:
    la, lb = (RedisLimiter(c, 2, {"p": 3}, max_waiting=100) for c in coords)
    async with la.slot("p"), lb.slot("p"):
        waiter = asyncio.create_task(_enter(lb, "p"))
        waiter2 = asyncio.create_task(_enter(la, "p"))
        await asyncio.sleep(1.3)
        fleet = la.fleet_stats()
        assert (fleet["*"].in_flight, fleet["*"].waiting, fleet["*"].capacity) == (2, 2, 2)
        assert (fleet["p"].in_flight, fleet["p"].waiting) == (2, 2)
        assert la.stats()["*"].waiting == 1
    await asyncio.wait_for(asyncio.gather(waiter, waiter2), 3)


async def _enter(limiter: RedisLimiter, key: str) -> None:
    async with limiter.slot(key):
        await asyncio.sleep(0.05)


async def test_redis_down_is_backend_unavailable_then_recovers(redis_server: RedisServer) -> None:
    coord = RedisCoordinator(redis_server.url, lease_s=1.0, op_timeout_s=0.5)
    await coord.start()
    try:
        sem = coord.semaphore("d", 1, max_waiting=10)
        holder = coord.acquire(sem)
        await holder.__aenter__()
        queued = asyncio.create_task(_timed_acquire(coord, sem))
        await asyncio.sleep(0.1)
        redis_server.stop()
        # A queued waiter is told within about the fallback period, never left waiting.
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(queued, 3)
        with pytest.raises(BackendUnavailable) as info:
            async with coord.acquire(sem):
                pass
        assert info.value.retry_after
        assert not await coord.ping()
        await holder.__aexit__(None, None, None)  # a failed release is only counted
        assert coord.errors["release"] >= 1
        redis_server.start()
        async with asyncio.timeout(5):
            while not await coord.ping():
                await asyncio.sleep(0.1)
            async with coord.acquire(sem):
                pass
    finally:
        await coord.close()


async def test_shared_value_fetched_once(coords: list[RedisCoordinator]) -> None:
    calls = 0

    async def fetch() -> tuple[bytes, float]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return b"token-1", 30.0

    values = [c.shared_value("oauth") for c in coords]
    async with asyncio.timeout(5):
        got = await asyncio.gather(*(values[i % 2].get_or_fetch(fetch) for i in range(10)))
    assert got == [b"token-1"] * 10
    assert calls == 1
    await values[0].invalidate(b"other")  # not the stored value: kept
    assert await values[1].get() == b"token-1"
    await values[0].invalidate(b"token-1")
    assert await values[1].get() is None


async def test_waiters_cost_no_polling(redis_server: RedisServer) -> None:
    # 400 waiters in two processes while one permit is held for 2.5 s (2 fallback periods):
    # each waiter makes one attempt when it arrives; after that each process retries only the
    # head of its queue (on a release, or once per fallback period), never once per waiter.
    # The default operation timeout: 400 first attempts share 32 connections, which on a
    # CPU-starved test machine can take longer than the fixture's short 0.5 s.
    coords = [RedisCoordinator(redis_server.url, lease_s=1.0) for _ in range(2)]
    for c in coords:
        await c.start()
    try:
        await _no_polling(coords)
    finally:
        for c in coords:
            await c.close()


async def _no_polling(coords: list[RedisCoordinator]) -> None:
    a, b = coords
    calls = {"n": 0}
    for c in coords:
        original = c._attempt

        async def counted(*args: Any, _original: Any = original) -> Any:
            calls["n"] += 1
            return await _original(*args)

        c._attempt = counted  # type: ignore[method-assign]
    sem_a, sem_b = a.semaphore("poll", 1, max_waiting=-1), b.semaphore("poll", 1, max_waiting=-1)
    holder = a.acquire(sem_a)
    await holder.__aenter__()
    waiters = [
        asyncio.create_task(_timed_acquire(*((a, sem_a) if i % 2 else (b, sem_b))))
        for i in range(400)
    ]
    # Each waiter's first attempt (on a busy machine, one that timed out is made again) ...
    async with asyncio.timeout(20):
        while calls["n"] < 400:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    settled = calls["n"]
    # ... then 2 s (2 fallback periods) of waiting cost each process only retries of its head.
    await asyncio.sleep(2.0)
    assert calls["n"] - settled <= 2 * 4, (settled, calls)
    await holder.__aexit__(None, None, None)
    async with asyncio.timeout(20):
        await asyncio.gather(*waiters)
    # Then per release each process tries its head once: one wins, the other is refused
    # (measured: ~1,000 attempts for 400 grants over two processes).
    assert calls["n"] <= 400 + 8 + 400 * 3, calls


async def test_cancelled_during_the_first_attempt_leaves_no_permit(
    long_lease_coords: list[RedisCoordinator],
) -> None:
    a, b = long_lease_coords
    for steps in range(40):
        task = asyncio.create_task(_timed_acquire(a, a.semaphore("first", 1)))
        for _ in range(steps):  # cancel it at every stage of its first attempt in turn
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # Free at once, not after the 6 s lease.
        async with asyncio.timeout(3.0):
            async with b.acquire(b.semaphore("first", 1)):
                pass


async def test_close_ends_a_loop_whose_cancellation_was_swallowed(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """redis-py can swallow a cancellation that lands mid-command; the loops must still end."""
    c = RedisCoordinator(redis_server.url, lease_s=1.0, op_timeout_s=0.5)
    renewing = asyncio.Event()

    async def swallowing_renew() -> None:
        if renewing.is_set():
            return
        renewing.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return  # as a client that turns the cancel into a quiet return would (once)

    c._renew_all = swallowing_renew  # type: ignore[method-assign]
    await c.start()
    await asyncio.wait_for(renewing.wait(), 2)
    started = time.monotonic()
    await c.close()
    assert time.monotonic() - started < 0.9
    assert not [r for r in caplog.records if "did not stop" in r.getMessage()]
