"""Fleet-wide coordination through Redis: lease semaphores, a shared limiter, shared values.

Every process that shares a Redis (workers of one `satapi serve`, replicas on other machines) sees
the same permits. A permit is a lease: its holder's process renews it in the background while the
work runs, and if the process dies (kill -9, a lost machine) the permit returns by itself within
`lease_s`. Waiting costs no polling: a process keeps its waiters in local queues, hears releases on
one pub/sub subscription, and retries the head of each affected queue once per release (plus one
bounded fallback timer per process for leases that ran out, or a lost message).

API (one `RedisCoordinator` per process; everything else hangs off it)::

    coord = RedisCoordinator(
        "redis://127.0.0.1:6379/0",
        lease_s=15.0,            # a dead process's permits come back within this
        prefix="{satapi}:",      # every key and the pub/sub channel start with it
        max_connections=32,      # BlockingConnectionPool: callers wait for a connection...
        op_timeout_s=2.0,        # ...this long at most; also the socket and connect timeouts
        on_error=None,           # callable(operation: str) for each failed Redis call
    )
    await coord.start()          # connects lazily; never fails for Redis being down
    await coord.ping()           # bool, for readiness probes
    ...
    await coord.close()          # releases what is still held

    # A named counting semaphore shared by the fleet. `max_waiting`: None = waiters are not
    # counted; -1 = counted (fleet-wide gauge) but never shed; n >= 0 = a new waiter is refused
    # with `Overloaded` when n already wait fleet-wide. `min_interval_s` spaces permit starts
    # fleet-wide (a permit's holder sleeps the difference before the context's body runs).
    ai_cap = coord.semaphore("ai", capacity=10, max_waiting=100)
    async with coord.acquire(ai_cap) as waited_s:          # several: all at once or none
        ...                                                # the permit is renewed meanwhile
    async with coord.acquire(global_cap, provider_cap): ...
    coord.fleet_stats()   # {name: SlotStats(capacity, in_flight, waiting)} for the whole fleet,
                          # refreshed every second in the background (for metrics)

    # Every process must give the same capacity (and limits) for the same name. For the fleet
    # AI cap, `RedisSlotLimiter` maps `Overloaded` to `AIBusy` (see `coordination.make_ai_limiter`).

    # A mutex: a semaphore of capacity 1. `FleetFlights(coord).hold(key)` is one per key (single
    # flight of image downloads: `ImageService(fleet=...)`).
    async with coord.acquire(coord.semaphore("flight:" + image_id, 1)): ...

    # A value cached in Redis with a TTL, fetched by one process at a time (single flight):
    token = coord.shared_value("sentinelhub:token")
    value: bytes = await token.get_or_fetch(fetch)   # fetch: async () -> (bytes, ttl_s)
    await token.get()                                # bytes | None, no fetch
    await token.invalidate(value)                    # drop it, if it is still that value
    # Concurrent callers in one process share one attempt; other processes wait for the
    # fetching one's mutex, then read what it stored. If `fetch` raises, the error reaches this
    # process's callers and the mutex passes on (the next process fetches itself).

Errors: a Redis that cannot be reached (refused, timed out, no pool connection within
`op_timeout_s`) raises `BackendUnavailable` (HTTP 503 with Retry-After) from `acquire`,
`get_or_fetch` and `get`; waiters already queued get it too, within about a second. Releases and
renewals that fail are counted (`errors`, by operation) and otherwise left to the lease. When
Redis comes back nothing needs restarting.

`RedisLimiter` implements `satapi.limits.Limiter` on top of it: the global cap, every provider's
`max_concurrency` and `min_interval_s`, and the `max_waiting` shed count hold fleet-wide.
`RedisSlotLimiter` implements `satapi.limits.SlotLimiter` (the AI cap, semaphore "ai"): its
`Overloaded` becomes the caller's busy error (`AIBusy`, 503 `ai_busy`, with a Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import secrets
import socket
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry  # the async one: redis 8.2 warns about the other
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

import satapi.coordination.redis_scripts as redis_scripts
from satapi.errors import BackendUnavailable, Overloaded, SatapiError
from satapi.limits import SlotStats

log = logging.getLogger("satapi.coordination")

DEFAULT_PREFIX = "{satapi}:"
# Waiters retry at least this often even if no release is heard (a lost message, a lease that ran
# out): one attempt per queue per process, never one per waiter.
FALLBACK_S = 1.0
STATS_EVERY_S = 1.0
RETRY_AFTER_S = 2

_Fetch = Callable[[], Awaitable[tuple[bytes, float]]]


def _unavailable(op: str) -> BackendUnavailable:
    return BackendUnavailable(
        "The coordination backend (Redis) cannot be reached; try again shortly.",
        backend="redis",
        retry_after=RETRY_AFTER_S,
        extra={"operation": op},
    )


@dataclass(frozen=True, eq=False)
class LeaseSemaphore:
    """A fleet-wide counting semaphore; acquire it with `RedisCoordinator.acquire`."""

    name: str
    capacity: int
    max_waiting: int | None = None
    min_interval_s: float = 0.0

    @property
    def tracked(self) -> bool:
        """Whether waiters are counted in Redis (for shedding and the fleet gauge)."""
        return self.max_waiting is not None


@dataclass(eq=False)
class _Waiter:
    token: str
    future: asyncio.Future[int]
    settled: bool = False


@dataclass(eq=False)
class _Group:
    """The local queue of waiters for one set of semaphores, first come first served."""

    sems: tuple[LeaseSemaphore, ...]
    queue: deque[_Waiter] = field(default_factory=deque)
    dirty: bool = False
    retry_at: float = 0.0


@dataclass(frozen=True)
class _Attempt:
    status: int  # 1 granted, 0 queued, -1 shed
    delay_ms: int = 0
    full_index: int = 0
    retry_in_ms: int = -1


def _reraise_cancel() -> None:
    # redis-py can turn a cancellation that lands mid-command into a connection error: a task
    # that is being cancelled must still end, not carry on as if Redis had failed.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _granted(future: asyncio.Future[int]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


class RedisCoordinator:
    """One process's connection to the fleet: a connection pool, one pub/sub listener, one
    renewal loop, and the local queues of waiters."""

    def __init__(
        self,
        url: str,
        *,
        lease_s: float = 15.0,
        prefix: str = DEFAULT_PREFIX,
        max_connections: int = 32,
        op_timeout_s: float = 2.0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.lease_s = lease_s
        self._lease_ms = max(1, int(lease_s * 1000))
        self._prefix = prefix
        self._channel = prefix + "released"
        self._op_timeout_s = op_timeout_s
        self.proc = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._tokens = itertools.count()
        # One immediate retry on a fresh connection: after a Redis restart every pooled
        # connection is stale once. The scripts are idempotent (ZADD/ZREM of one token), so a
        # retry after a lost reply is harmless. Timeouts bound every operation; the pool blocks
        # (up to the timeout) instead of failing when all its connections are busy.
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=op_timeout_s,
            socket_timeout=op_timeout_s,
            socket_connect_timeout=op_timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self.redis: Redis = Redis.from_pool(self._pool)
        self._acquire = self.redis.register_script(redis_scripts.ACQUIRE)
        self._release = self.redis.register_script(redis_scripts.RELEASE)
        self._renew = self.redis.register_script(redis_scripts.RENEW)
        self._stats = self.redis.register_script(redis_scripts.STATS)
        self._delete_if = self.redis.register_script(redis_scripts.DELETE_IF)
        self._sems: dict[str, LeaseSemaphore] = {}
        self._groups: dict[tuple[str, ...], _Group] = {}
        self._groups_by_sem: dict[str, list[_Group]] = {}
        self._waiting: Counter[str] = Counter()  # local waiters per semaphore name
        # Acquire scripts started, and running now, per name; the renewal's count sync skips a
        # name with any since the previous renewal (see `_renew_all`).
        self._attempts: Counter[str] = Counter()
        self._attempting: Counter[str] = Counter()
        self._attempts_synced: dict[str, int] = {}
        self._held: dict[str, tuple[LeaseSemaphore, ...]] = {}  # token -> what it holds
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._fleet: dict[str, SlotStats] = {}
        self._values: dict[str, asyncio.Future[bytes]] = {}
        self.errors: Counter[str] = Counter()  # Redis errors by operation
        self._on_error = on_error
        self.listening = False

    def _failed(self, operation: str) -> None:
        self.errors[operation] += 1
        if self._on_error is not None:
            self._on_error(operation)

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the listener, the queue pump and the renewal loop (Redis may be down)."""
        for coro in (self._listen(), self._pump(), self._renew_loop()):
            self._tasks.append(asyncio.create_task(coro))

    async def close(self) -> None:
        """Stop the background tasks, release what is still held, close the connections."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=2 * self._op_timeout_s)
            for task in pending:  # a cancellation swallowed by the client: ask once more
                task.cancel()
            if pending:
                _, pending = await asyncio.wait(pending, timeout=self._op_timeout_s)
            if pending:
                log.warning("coordination tasks did not stop: %s", pending)
        self._tasks.clear()
        for token in list(self._held):
            await self._release_token(token)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for group in self._groups.values():
            self._fail_group(group, _unavailable("close"))
        await self.redis.aclose()

    async def ping(self) -> bool:
        """True when Redis answers within the operation timeout (a second try on a fresh
        connection, so one stale pooled connection does not fail a readiness probe)."""
        for _ in range(2):
            try:
                async with asyncio.timeout(self._op_timeout_s):
                    return bool(await self.redis.ping())
            except (RedisError, OSError, TimeoutError) as exc:
                _reraise_cancel()
                self._failed("ping")
                log.debug("redis ping failed: %s", exc)
        return False

    # -- semaphores ---------------------------------------------------------------------------

    def semaphore(
        self,
        name: str,
        capacity: int,
        *,
        max_waiting: int | None = None,
        min_interval_s: float = 0.0,
    ) -> LeaseSemaphore:
        """The semaphore `name`. Every process must give the same settings for the same name."""
        sem = LeaseSemaphore(name, capacity, max_waiting, min_interval_s)
        if sem.tracked:  # kept for the waiting-count sync and the fleet gauges
            self._sems[name] = sem
        return sem

    @asynccontextmanager
    async def acquire(self, *sems: LeaseSemaphore) -> AsyncIterator[float]:
        """Hold one permit of each of `sems` (granted together); yields the seconds waited.

        Raises `Overloaded` (a semaphore's `max_waiting` reached) or `BackendUnavailable`.
        """
        started = time.perf_counter()
        token = f"{self.proc}:{next(self._tokens)}"
        delay_ms = await self._obtain(sems, token)
        self._held[token] = sems
        try:
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            yield time.perf_counter() - started
        finally:
            # Shielded: a cancelled request still gives its permit back promptly.
            release = asyncio.ensure_future(self._release_token(token))
            self._background.add(release)
            release.add_done_callback(self._background.discard)
            await asyncio.shield(release)

    async def _obtain(self, sems: tuple[LeaseSemaphore, ...], token: str) -> int:
        names = tuple(s.name for s in sems)
        group = self._groups.get(names)
        if group is None:
            group = self._groups[names] = _Group(sems)
            for name in names:
                self._groups_by_sem.setdefault(name, []).append(group)
        mode = "queue" if group.queue else "new"
        for name in names:
            self._waiting[name] += 1
        try:
            try:
                attempt = await self._attempt(sems, token, mode, "acquire")
            except asyncio.CancelledError:
                # The script may have run (and granted) after all: give back what it may hold.
                self._spawn(self._release_token(token, held=sems))
                raise
            if attempt.status == -1:
                shed = sems[attempt.full_index - 1]
                raise Overloaded(
                    f"Too many requests are waiting for {shed.name!r} permits across the "
                    "fleet; try again shortly.",
                    retry_after=1,
                )
            if attempt.status == 1:
                return attempt.delay_ms
            waiter = _Waiter(token, asyncio.get_running_loop().create_future())
            group.queue.append(waiter)
            self._schedule(group, attempt.retry_in_ms)
            try:
                return await waiter.future
            except BaseException:
                if not waiter.settled:
                    waiter.settled = True
                    with contextlib.suppress(ValueError):
                        group.queue.remove(waiter)
                elif _granted(waiter.future):
                    # Granted, then cancelled before it could resume: give the permit back.
                    self._spawn(self._release_token(token, held=sems))
                raise
        finally:
            # Counted as waiting from the first attempt until settled (granted, refused, gone).
            for name in names:
                self._waiting[name] -= 1

    async def _attempt(
        self, sems: tuple[LeaseSemaphore, ...], token: str, mode: str, op: str
    ) -> _Attempt:
        keys = [self._prefix + "procs"]
        args: list[Any] = [self.proc, token, self._lease_ms, mode, len(sems)]
        for sem in sems:
            keys += [self._prefix + "sem:" + sem.name, self._prefix + "semw:" + sem.name]
            keys.append(self._prefix + "next:" + sem.name)
            limit = -2 if sem.max_waiting is None else max(-1, sem.max_waiting)
            # This process's waiters, including the one trying now: one fewer if it gets in.
            mine = self._waiting[sem.name]
            args += [sem.capacity, limit, int(sem.min_interval_s * 1000), mine - 1, mine]
            if sem.tracked:  # the rest (per-image mutexes) would only grow these counters
                self._attempts[sem.name] += 1
                self._attempting[sem.name] += 1
        try:
            async with asyncio.timeout(self._op_timeout_s * 2):
                reply = await self._acquire(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            _reraise_cancel()
            self._failed(op)
            log.debug("redis %s failed: %r", op, exc)
            raise _unavailable(op) from None
        finally:
            for sem in sems:
                if sem.tracked:
                    self._attempting[sem.name] -= 1
        status = int(reply[0])
        if status == 1:
            return _Attempt(1, delay_ms=int(reply[1]))
        if status == -1:
            return _Attempt(-1, full_index=int(reply[1]))
        return _Attempt(0, full_index=int(reply[1]), retry_in_ms=int(reply[2]))

    def _schedule(self, group: _Group, retry_in_ms: int) -> None:
        now = time.monotonic()
        fallback = now + FALLBACK_S
        at = fallback if retry_in_ms < 0 else min(fallback, now + retry_in_ms / 1000 + 0.005)
        if not group.retry_at or group.retry_at <= now or at < group.retry_at:
            group.retry_at = at
        self._wake.set()

    async def _pump(self) -> None:
        """Give permits to local waiters: the head of each woken queue, until one is refused."""
        while True:
            now = time.monotonic()
            due = [g.retry_at for g in self._groups.values() if g.queue]
            timeout = max(0.0, min(due) - now) if due else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            now = time.monotonic()
            for group in list(self._groups.values()):
                if not group.queue or not (group.dirty or group.retry_at <= now):
                    continue
                group.dirty = False
                try:
                    await self._drain(group)
                except Exception as exc:  # a bug must not leave its waiters waiting forever
                    log.exception("coordination: handing out permits failed")
                    self._fail_group(group, exc)
            self._prune_groups()

    async def _drain(self, group: _Group) -> None:
        while group.queue:
            head = group.queue[0]
            try:
                attempt = await self._attempt(group.sems, head.token, "retry", "acquire_retry")
            except BackendUnavailable as exc:
                self._fail_group(group, exc)
                return
            if attempt.status != 1:
                self._schedule(group, attempt.retry_in_ms)
                return
            if head.settled or head.future.done():
                # It gave up while this attempt ran (cancelled: its future is done before its
                # task runs the clean-up): hand the permit back.
                if not head.settled:
                    head.settled = True
                    group.queue.popleft()
                self._spawn(self._release_token(head.token, held=group.sems))
                continue
            head.settled = True
            group.queue.popleft()
            head.future.set_result(attempt.delay_ms)

    def _fail_group(self, group: _Group, exc: BaseException) -> None:
        while group.queue:
            waiter = group.queue.popleft()
            if not waiter.settled:
                waiter.settled = True
                if not waiter.future.done():
                    waiter.future.set_exception(exc)

    def _prune_groups(self) -> None:
        # Groups of one-off mutexes (per image) would pile up; drop the idle ones.
        if len(self._groups) < 256:
            return
        for names, group in list(self._groups.items()):
            if not group.queue and not any(self._waiting[n] for n in names):
                del self._groups[names]
                for name in names:
                    groups = self._groups_by_sem.get(name, [])
                    with contextlib.suppress(ValueError):
                        groups.remove(group)
                    if not groups:
                        self._groups_by_sem.pop(name, None)
                        if self._waiting[name] == 0:
                            del self._waiting[name]

    async def _release_token(
        self, token: str, *, held: tuple[LeaseSemaphore, ...] | None = None
    ) -> None:
        sems = self._held.pop(token, None) or held
        if not sems:
            return
        keys: list[str] = []
        message = "\n".join(["s", self.proc, *(s.name for s in sems)])
        args: list[Any] = [token, self._channel, message]
        for sem in sems:
            keys += [self._prefix + "sem:" + sem.name, self._prefix + "semw:" + sem.name]
            args.append("1" if sem.tracked else "0")
        try:
            async with asyncio.timeout(self._op_timeout_s * 2):
                await self._release(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            _reraise_cancel()
            # The lease runs out by itself; nothing else to do.
            self._failed("release")
            log.debug("redis release failed: %r", exc)
        # Local waiters for these semaphores may go now, whether or not the message comes back.
        self._mark_dirty(s.name for s in sems)

    def _mark_dirty(self, names: Any) -> None:
        for name in names:
            for group in self._groups_by_sem.get(name, ()):
                if group.queue:
                    group.dirty = True
                    self._wake.set()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- background: listener, renewals, fleet stats ------------------------------------------

    async def _listen(self) -> None:
        """One subscription per process: releases wake the queues, stored values their waiters."""
        backoff = 0.1
        while True:
            pubsub: PubSub | None = None
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(self._channel)
                self.listening = True
                backoff = 0.1
                # Anything may have been released while no one listened.
                self._mark_dirty(list(self._groups_by_sem))
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    _reraise_cancel()  # in case the client swallowed a cancellation
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                _reraise_cancel()
                self._failed("subscribe")
                log.debug("redis subscription lost: %r", exc)
            finally:
                self.listening = False
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _on_message(self, data: bytes) -> None:
        kind, proc, *names = data.decode("utf-8", "replace").split("\n")
        if kind == "s" and proc != self.proc:  # its own releases woke its queues already
            self._mark_dirty(names)

    async def _renew_loop(self) -> None:
        every = max(0.05, self.lease_s / 3)
        next_renew = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_renew:
                    next_renew = now + every
                    await self._renew_all()
                await self._refresh_fleet_stats()
            except Exception:  # keep renewing: a dead loop would let every lease run out
                log.exception("coordination: lease renewal failed")
            _reraise_cancel()  # a cancellation redis-py swallowed mid-command still ends the loop
            await asyncio.sleep(min(STATS_EVERY_S, every))

    async def _renew_all(self) -> None:
        held = list(self._held.items())
        keys = [self._prefix + "procs"]
        args: list[Any] = [self.proc, self._lease_ms]
        for token, sems in held:
            for sem in sems:
                keys.append(self._prefix + "sem:" + sem.name)
                args.append(token)
        try:
            async with asyncio.timeout(self._op_timeout_s * 2):
                restored = await self._renew(keys=keys, args=args)
                # The waiting counts too, in case an update was lost (a cancelled waiter). Only
                # for names with no acquire script since the previous renewal: each script writes
                # the count it saw, and a sync racing with one (or with a grant whose waiter has
                # not resumed yet) would put back a stale count -- false sheds until the next
                # renewal. Where scripts run, they keep the count current themselves.
                attempts = dict(self._attempts)
                quiet = {
                    name
                    for name, n in attempts.items()
                    if self._attempts_synced.get(name) == n and not self._attempting[name]
                }
                self._attempts_synced = attempts
                pipe = self.redis.pipeline(transaction=False)
                for name, count in self._waiting.items():
                    if name not in quiet:
                        continue
                    if self._sems.get(name) is not None and self._sems[name].tracked:
                        key = self._prefix + "semw:" + name
                        if count > 0:
                            pipe.hset(key, self.proc, count)
                            pipe.pexpire(key, self._lease_ms * 4)
                        else:
                            pipe.hdel(key, self.proc)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            _reraise_cancel()
            self._failed("renew")
            log.debug("redis renew failed: %r", exc)
            return
        for raw in set(restored or ()):
            token = raw.decode() if isinstance(raw, bytes) else str(raw)
            if token not in self._held:  # finished meanwhile: do not leave it restored
                gone = dict(held).get(token)
                if gone:
                    await self._release_token(token, held=gone)
            else:
                log.warning("a permit lease ran out while its transfer ran; it was renewed")

    async def _refresh_fleet_stats(self) -> None:
        sems = [s for s in self._sems.values() if s.tracked]
        if not sems:
            return
        keys = [self._prefix + "procs"]
        for sem in sems:
            keys += [self._prefix + "sem:" + sem.name, self._prefix + "semw:" + sem.name]
        try:
            async with asyncio.timeout(self._op_timeout_s * 2):
                reply = await self._stats(keys=keys, args=[])
        except (RedisError, OSError, TimeoutError):
            _reraise_cancel()
            self._failed("stats")
            self._fleet = {}
            return
        self._fleet = {
            sem.name: SlotStats(
                capacity=sem.capacity, in_flight=int(reply[2 * i]), waiting=int(reply[2 * i + 1])
            )
            for i, sem in enumerate(sems)
        }

    def fleet_stats(self) -> dict[str, SlotStats]:
        """Permits in use and requests waiting, fleet-wide, per tracked semaphore (last second's
        reading; empty while Redis cannot be read)."""
        return dict(self._fleet)

    # -- shared values ------------------------------------------------------------------------

    def shared_value(self, name: str) -> SharedValue:
        """A value cached in Redis under `name`, fetched by one process at a time."""
        return SharedValue(self, name)


class SharedValue:
    """A value cached in Redis with a TTL; one fetch at a time across the fleet.

    `get_or_fetch(fetch)`: the cached value, or -- holding a fleet-wide mutex so that only one
    process calls its `fetch` -- a fresh one, stored for the TTL `fetch` returns. Processes that
    wait for the mutex read the value the holder stored instead of fetching again. Within one
    process, concurrent callers share one attempt.
    """

    def __init__(self, coord: RedisCoordinator, name: str) -> None:
        self._coord = coord
        self.name = name
        self._key = coord._prefix + "val:" + name
        self._lock = coord.semaphore("val:" + name, 1)

    async def get(self) -> bytes | None:
        """The cached value, or None."""
        try:
            async with asyncio.timeout(self._coord._op_timeout_s * 2):
                value = await self._coord.redis.get(self._key)
        except (RedisError, OSError, TimeoutError):
            _reraise_cancel()
            self._coord._failed("value_get")
            raise _unavailable("value_get") from None
        return value if isinstance(value, bytes) or value is None else str(value).encode()

    async def get_or_fetch(self, fetch: _Fetch) -> bytes:
        """The cached value, else one fetched by `fetch()` -> (value, ttl seconds) and stored."""
        value = await self.get()
        if value is not None:
            return value
        flight = self._coord._values.get(self.name)
        if flight is None:
            flight = asyncio.ensure_future(self._fetch_once(fetch))
            self._coord._values[self.name] = flight
            flight.add_done_callback(lambda _: self._coord._values.pop(self.name, None))
        return await asyncio.shield(flight)

    async def _fetch_once(self, fetch: _Fetch) -> bytes:
        async with self._coord.acquire(self._lock):
            value = await self.get()  # the process that held the mutex before may have stored it
            if value is not None:
                return value
            value, ttl_s = await fetch()
            try:
                async with asyncio.timeout(self._coord._op_timeout_s * 2):
                    await self._coord.redis.set(self._key, value, px=max(1, int(ttl_s * 1000)))
            except (RedisError, OSError, TimeoutError):
                _reraise_cancel()
                self._coord._failed("value_set")  # still usable here; others fetch again
            return value

    async def invalidate(self, seen: bytes) -> None:
        """Forget the value if it is still `seen` (e.g. a token the upstream refused)."""
        try:
            async with asyncio.timeout(self._coord._op_timeout_s * 2):
                await self._coord._delete_if(keys=[self._key], args=[seen])
        except (RedisError, OSError, TimeoutError):
            _reraise_cancel()
            self._coord._failed("value_delete")
            raise _unavailable("value_delete") from None


class RedisLimiter:
    """`satapi.limits.Limiter` across the fleet: the global cap, each provider's cap and start
    interval, and the waiting-request limit, all held in Redis.

    `stats()` describes this process (like `LocalLimiter`); `fleet_stats()` the whole fleet.
    """

    GLOBAL = "wms:*"

    def __init__(
        self,
        coord: RedisCoordinator,
        global_cap: int,
        provider_caps: Mapping[str, int],
        *,
        max_waiting: int,
        min_intervals: Mapping[str, float] | None = None,
        default_cap: int = 4,
    ) -> None:
        self._coord = coord
        self._global = coord.semaphore(self.GLOBAL, global_cap, max_waiting=max_waiting)
        self._global_stats = SlotStats(capacity=global_cap)
        self._default_cap = default_cap
        intervals = min_intervals or {}
        self._providers: dict[str, tuple[LeaseSemaphore, SlotStats]] = {}
        for key, cap in provider_caps.items():
            self._add(key, cap, intervals.get(key, 0.0))

    def _add(self, key: str, cap: int, interval: float) -> tuple[LeaseSemaphore, SlotStats]:
        sem = self._coord.semaphore(f"wms:{key}", cap, max_waiting=-1, min_interval_s=interval)
        entry = self._providers[key] = (sem, SlotStats(capacity=cap))
        return entry

    @property
    def waiting(self) -> int:
        """Requests of this process waiting for a permit right now."""
        return self._global_stats.waiting

    def stats(self) -> dict[str, SlotStats]:
        """This process's counters, with the global ones under the key `"*"`."""
        out = {"*": self._global_stats}
        out.update({key: stats for key, (_, stats) in self._providers.items()})
        return out

    def fleet_stats(self) -> dict[str, SlotStats]:
        """The fleet's counters (from Redis, refreshed every second), global under `"*"`."""
        fleet = self._coord.fleet_stats()
        out: dict[str, SlotStats] = {}
        if self.GLOBAL in fleet:
            out["*"] = fleet[self.GLOBAL]
        for key, (sem, _) in self._providers.items():
            if sem.name in fleet:
                out[key] = fleet[sem.name]
        return out

    @property
    def errors(self) -> Mapping[str, int]:
        """Redis errors by operation, in this process."""
        return self._coord.errors

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[float]:
        """Hold a provider permit and a global permit; yields the seconds spent waiting."""
        sem, stats = self._providers.get(key) or self._add(key, self._default_cap, 0.0)
        self._global_stats.waiting += 1
        stats.waiting += 1
        entered = False
        try:
            async with self._coord.acquire(self._global, sem) as waited:
                entered = True
                self._global_stats.waiting -= 1
                stats.waiting -= 1
                for s in (self._global_stats, stats):
                    s.in_flight += 1
                    s.max_in_flight = max(s.max_in_flight, s.in_flight)
                try:
                    yield waited
                finally:
                    self._global_stats.in_flight -= 1
                    stats.in_flight -= 1
        except Overloaded:
            if entered:
                raise
            raise Overloaded(
                "Too many image requests are waiting for the WMS servers; try again shortly.",
                retry_after=1,
            ) from None
        finally:
            if not entered:
                self._global_stats.waiting -= 1
                stats.waiting -= 1


class FleetFlights:
    """Single flight across the fleet: one holder per key at a time (a lease mutex per key).

    `ImageService` holds `hold(image_id)` around "look in the store, else download": whoever
    comes second finds the first one's image in a shared store once the mutex passes to it.
    """

    def __init__(self, coord: RedisCoordinator) -> None:
        self._coord = coord

    def hold(self, key: str) -> AbstractAsyncContextManager[float]:
        """Hold the fleet-wide mutex for `key`; yields the seconds waited."""
        return self._coord.acquire(self._coord.semaphore("flight:" + key, 1))


# --- AI calls -------------------------------------------------------------------------


class RedisSlotLimiter:
    """`satapi.limits.SlotLimiter` across the fleet: one lease semaphore (e.g. the AI cap).

    At most `capacity` holders in the whole fleet, at most `max_waiting` waiting fleet-wide; a
    caller beyond that gets `busy(message, retry_after)` (e.g. `AIBusy`, 503) instead of the
    coordinator's `Overloaded`. A Redis that cannot be reached raises `BackendUnavailable` (503)
    as for the WMS caps. `stats()` describes this process (like `LocalSlotLimiter`),
    `fleet_stats()` the whole fleet (Redis, refreshed every second).
    """

    def __init__(
        self,
        coord: RedisCoordinator,
        name: str,
        capacity: int,
        *,
        max_waiting: int,
        busy: Callable[[str, int], SatapiError],
        observe: Callable[[str, float], None] | None = None,
        message: str = "Too many AI analyses are running or waiting; try again shortly.",
    ) -> None:
        self._coord = coord
        self._sem = coord.semaphore(name, capacity, max_waiting=max_waiting)
        self._stats = SlotStats(capacity=capacity)
        self._busy = busy
        self._observe = observe
        self._message = message
        self._mean_hold_s = 0.0  # exponentially weighted mean of how long a permit is held here

    @property
    def name(self) -> str:
        """The semaphore's name in Redis."""
        return self._sem.name

    def stats(self) -> SlotStats:
        """This process's permits held and callers waiting; the fleet-wide capacity."""
        return self._stats

    def fleet_stats(self) -> SlotStats | None:
        """The fleet's permits held and callers waiting (last second's reading; None until the
        first one, or while Redis cannot be read)."""
        return self._coord.fleet_stats().get(self._sem.name)

    def retry_after(self) -> int:
        """Seconds a refused caller should wait: the fleet queue's expected drain time.

        A refusal means `max_waiting` callers wait fleet-wide; they share `capacity` permits,
        each held for about this process's mean holding time. 1-60 s.
        """
        ahead = max(0, self._sem.max_waiting or 0) + 1
        estimate = ahead / self._sem.capacity * self._mean_hold_s
        return int(min(60, max(1, math.ceil(estimate))))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold a permit of the fleet's semaphore; yields the seconds spent waiting for it."""
        stats = self._stats
        started = time.perf_counter()
        stats.waiting += 1
        entered = False
        try:
            async with self._coord.acquire(self._sem) as waited:
                entered = True
                stats.waiting -= 1
                self._notify("granted", waited)
                granted = time.perf_counter()
                stats.in_flight += 1
                stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
                try:
                    yield waited
                finally:
                    stats.in_flight -= 1
                    held = time.perf_counter() - granted
                    self._mean_hold_s = (
                        0.9 * self._mean_hold_s + 0.1 * held if self._mean_hold_s else held
                    )
        except Overloaded:
            if entered:  # raised by the body, not by the cap
                raise
            self._notify("shed", 0.0)
            raise self._busy(self._message, self.retry_after()) from None
        except asyncio.CancelledError:
            if not entered:
                self._notify("cancelled", time.perf_counter() - started)
            raise
        finally:
            if not entered:
                stats.waiting -= 1

    def _notify(self, outcome: str, waited_s: float) -> None:
        if self._observe is not None:
            self._observe(outcome, waited_s)
