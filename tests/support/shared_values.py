"""An in-memory stand-in for the Redis coordinator's shared values, for token-cache tests.

`MemorySharedValues` has the semantics `satapi.tokens.SharedValues` asks for, as the Redis
coordinator's `shared_value` provides them: a value with a TTL; `get_or_fetch` shares one
attempt among a process's concurrent callers (a task of its own, so a caller that is cancelled
does not cancel it for the others), fetches under a mutex shared by the whole fleet, and
callers that waited for the mutex read what the holder stored; `invalidate(seen)` deletes only
a value that is still `seen`. `store.process()` is one process's view: several
`SharedTokenCache`s over views of one store stand for several processes sharing one Redis.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from satapi.tokens import FetchShared


@dataclass
class _Entry:
    value: bytes | None = None
    expires: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # the fleet-wide mutex


class MemorySharedValue:
    """One shared value, seen from one process (see the module docstring)."""

    def __init__(self, name: str, store: MemorySharedValues, process: MemoryProcess) -> None:
        self._name = name
        self._entry = store.entry(name)
        self._store = store
        self._process = process

    def _current(self) -> bytes | None:
        if self._entry.value is not None and time.monotonic() < self._entry.expires:
            return self._entry.value
        return None

    async def get_or_fetch(self, fetch: FetchShared) -> bytes:
        """The stored value, else one fetched under the fleet-wide mutex and stored."""
        await asyncio.sleep(self._store.latency_s)  # a round trip to Redis
        if (value := self._current()) is not None:
            return value
        flights = self._process.flights
        flight = flights.get(self._name)
        if flight is None:
            flight = asyncio.ensure_future(self._fetch_once(fetch))
            flights[self._name] = flight
            flight.add_done_callback(lambda f: _landed(flights, self._name, f))
        return await asyncio.shield(flight)

    async def _fetch_once(self, fetch: FetchShared) -> bytes:
        async with self._entry.lock:
            if (value := self._current()) is not None:
                return value
            value, ttl_s = await fetch()
            self._store.fetches += 1
            self._entry.value, self._entry.expires = value, time.monotonic() + ttl_s
            return value

    async def invalidate(self, seen: bytes) -> None:
        """Forget the value if it is still `seen`."""
        await asyncio.sleep(self._store.latency_s)  # a round trip to Redis
        if self._entry.value == seen:
            self._entry.value = None
            self._store.invalidations += 1


def _landed(
    flights: dict[str, asyncio.Future[bytes]], name: str, flight: asyncio.Future[bytes]
) -> None:
    if flights.get(name) is flight:
        del flights[name]
    if not flight.cancelled():
        flight.exception()  # retrieved: nobody may be waiting any more


class MemoryProcess:
    """One process's view of the store: its own in-flight fetches."""

    def __init__(self, store: MemorySharedValues) -> None:
        self.store = store
        self.flights: dict[str, asyncio.Future[bytes]] = {}

    def shared_value(self, name: str) -> MemorySharedValue:
        """The shared value called `name`."""
        return MemorySharedValue(name, self.store, self)


class MemorySharedValues:
    """The shared store (Redis); `fetches` and `invalidations` count what happened."""

    def __init__(self, *, latency_s: float = 0.002) -> None:
        self._entries: dict[str, _Entry] = {}
        self.latency_s = latency_s
        self.fetches = 0
        self.invalidations = 0

    def entry(self, name: str) -> _Entry:
        """The stored entry called `name`."""
        return self._entries.setdefault(name, _Entry())

    def process(self) -> MemoryProcess:
        """A new process's view of this store."""
        return MemoryProcess(self)
