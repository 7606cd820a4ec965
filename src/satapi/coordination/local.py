"""The in-process coordination backends: asyncio semaphores for the WMS caps and for AI
calls, and the OAuth token cache (one token and one in-flight issue per key)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from satapi.errors import Overloaded, SatapiError
from satapi.limits import SlotStats
from satapi.tokens import IssueToken, Token


@dataclass
class _Provider:
    semaphore: asyncio.Semaphore
    stats: SlotStats
    min_interval_s: float = 0.0
    next_start: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LocalLimiter:
    """In-process semaphores: at most `global_cap` transfers, and each provider's own cap.

    When `max_waiting` requests already wait for a permit, a new one is refused at once with
    `Overloaded` instead of queueing without bound.
    """

    def __init__(
        self,
        global_cap: int,
        provider_caps: Mapping[str, int],
        *,
        max_waiting: int,
        min_intervals: Mapping[str, float] | None = None,
        default_cap: int = 4,
    ) -> None:
        self._global = asyncio.Semaphore(global_cap)
        self._global_stats = SlotStats(capacity=global_cap)
        self._max_waiting = max_waiting
        self._default_cap = default_cap
        intervals = min_intervals or {}
        self._providers: dict[str, _Provider] = {
            key: self._new_provider(cap, intervals.get(key, 0.0))
            for key, cap in provider_caps.items()
        }

    @staticmethod
    def _new_provider(cap: int, interval: float) -> _Provider:
        return _Provider(asyncio.Semaphore(cap), SlotStats(capacity=cap), interval)

    def _provider(self, key: str) -> _Provider:
        if key not in self._providers:
            self._providers[key] = self._new_provider(self._default_cap, 0.0)
        return self._providers[key]

    @property
    def waiting(self) -> int:
        """Requests waiting for a permit right now."""
        return self._global_stats.waiting

    def stats(self) -> dict[str, SlotStats]:
        """Counters, with the global ones under the key `"*"`."""
        out = {"*": self._global_stats}
        out.update({key: p.stats for key, p in self._providers.items()})
        return out

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[float]:
        """Hold a provider permit and a global permit; yields the seconds spent waiting."""
        provider = self._provider(key)
        busy = provider.semaphore.locked() or self._global.locked()
        if busy and self._global_stats.waiting >= self._max_waiting:
            raise Overloaded(
                "Too many image requests are waiting for the WMS servers; try again shortly.",
                retry_after=1,
            )
        started = time.perf_counter()
        self._global_stats.waiting += 1
        provider.stats.waiting += 1
        try:
            # Provider first, so requests queued for one slow server hold no global permit.
            await provider.semaphore.acquire()
            try:
                await self._global.acquire()
            except BaseException:
                provider.semaphore.release()
                raise
        finally:
            self._global_stats.waiting -= 1
            provider.stats.waiting -= 1
        try:
            await self._respect_interval(provider)
            waited = time.perf_counter() - started
            for stats in (self._global_stats, provider.stats):
                stats.in_flight += 1
                stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                yield waited
            finally:
                self._global_stats.in_flight -= 1
                provider.stats.in_flight -= 1
        finally:
            self._global.release()
            provider.semaphore.release()

    @staticmethod
    async def _respect_interval(provider: _Provider) -> None:
        if provider.min_interval_s <= 0:
            return
        async with provider.lock:
            now = time.monotonic()
            delay = provider.next_start - now
            provider.next_start = max(now, provider.next_start) + provider.min_interval_s
        if delay > 0:
            await asyncio.sleep(delay)


# --- AI calls -------------------------------------------------------------------------

# Called once per `slot()` with ("granted", seconds waited), ("shed", 0.0) or
# ("cancelled", seconds waited): metrics' AI queue series.
SlotObserver = Callable[[str, float], None]

_MIN_RETRY_AFTER_S = 1
_MAX_RETRY_AFTER_S = 60


class LocalSlotLimiter:
    """An in-process cap: at most `capacity` holders, at most `max_waiting` queued behind them.

    A caller that finds the cap reached and `max_waiting` callers already queued gets `busy()`
    (e.g. `AIBusy`, 503) with `retry_after` estimated from how long permits are held: the
    queue ahead of it, divided among the permits, times the mean holding time (1-60 s).
    """

    def __init__(
        self,
        capacity: int,
        *,
        max_waiting: int,
        busy: Callable[[str, int], SatapiError],
        observe: SlotObserver | None = None,
    ) -> None:
        self._semaphore = asyncio.Semaphore(capacity)
        self._stats = SlotStats(capacity=capacity)
        self._max_waiting = max_waiting
        self._busy = busy
        self._observe = observe
        self._mean_hold_s = 0.0  # exponentially weighted mean of how long a permit is held

    def stats(self) -> SlotStats:
        """Permits held, callers waiting, the capacity and the most ever held at once."""
        return self._stats

    def retry_after(self) -> int:
        """Seconds a refused caller should wait: the queue's expected drain time, 1-60 s."""
        ahead = self._stats.waiting + 1
        estimate = ahead / self._stats.capacity * self._mean_hold_s
        return int(min(_MAX_RETRY_AFTER_S, max(_MIN_RETRY_AFTER_S, math.ceil(estimate))))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold a permit; yields the seconds spent waiting for it."""
        stats = self._stats
        if self._semaphore.locked() and stats.waiting >= self._max_waiting:
            self._notify("shed", 0.0)
            raise self._busy(
                "Too many AI analyses are running or waiting; try again shortly.",
                self.retry_after(),
            )
        started = time.perf_counter()
        stats.waiting += 1
        try:
            await self._semaphore.acquire()
        except BaseException:
            self._notify("cancelled", time.perf_counter() - started)
            raise
        finally:
            stats.waiting -= 1
        granted = time.perf_counter()
        waited = granted - started
        self._notify("granted", waited)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            yield waited
        finally:
            stats.in_flight -= 1
            self._semaphore.release()
            held = time.perf_counter() - granted
            if self._mean_hold_s:
                self._mean_hold_s = 0.9 * self._mean_hold_s + 0.1 * held
            else:
                self._mean_hold_s = held

    def _notify(self, outcome: str, waited_s: float) -> None:
        if self._observe is not None:
            self._observe(outcome, waited_s)


# --- OAuth token cache (Sentinel Hub / CDSE) -----------------------------------------


class LocalTokenCache:
    """`TokenCache` for one process: a dict of tokens and one in-flight issue task per key.

    The issue runs in its own task, so a caller that is cancelled does not cancel it for the
    others waiting on it.
    """

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._flights: dict[str, asyncio.Future[Token]] = {}

    async def get(self, key: str, issue: IssueToken, *, stale: str | None = None) -> Token:
        """See `TokenCache.get`."""
        token = self._tokens.get(key)
        if token is not None and token.value != stale and token.usable():
            return token
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._issue(key, issue))
            self._flights[key] = flight
            flight.add_done_callback(lambda f: self._landed(key, f))
        return await asyncio.shield(flight)

    async def _issue(self, key: str, issue: IssueToken) -> Token:
        token = await issue()
        self._tokens[key] = token
        return token

    def _landed(self, key: str, flight: asyncio.Future[Token]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: a failure nobody waits for is not "never retrieved"

    def forget(self, key: str) -> None:
        """Drop the token kept for `key` (credentials changed)."""
        self._tokens.pop(key, None)

    async def aclose(self) -> None:
        """Cancel issues still in flight (shutdown)."""
        for flight in list(self._flights.values()):
            flight.cancel()
        for flight in list(self._flights.values()):
            with contextlib.suppress(BaseException):
                await flight
