"""The limiter seam: permits for WMS transfers (a global cap, a cap per provider, load shedding)
and for AI calls (one cap, a bounded queue).

Backends live in `satapi.coordination` (`coordination/local.py`: in-process semaphores;
`coordination/redis.py`: fleet-wide leases), which also holds the factories that pick one.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass
class SlotStats:
    """Counters for one semaphore (global or a provider's)."""

    capacity: int
    in_flight: int = 0
    waiting: int = 0
    max_in_flight: int = 0


class Limiter(Protocol):
    """Hands out permits for WMS transfers; a shared (e.g. Redis) backend can replace it."""

    def slot(self, key: str) -> AbstractAsyncContextManager[float]:
        """Async context manager holding a permit for provider `key`; yields the seconds waited."""
        ...

    def stats(self) -> dict[str, SlotStats]:
        """Counters, with the global ones under the key `"*"`."""
        ...


# --- AI calls -------------------------------------------------------------------------


class SlotLimiter(Protocol):
    """Permits for one capped resource (AI calls), with a bounded queue.

    `coordination.local.LocalSlotLimiter` caps one process; `coordination.redis.RedisSlotLimiter`
    (a Redis lease semaphore) caps the fleet with the same two methods and the same busy error.
    """

    def slot(self) -> AbstractAsyncContextManager[float]:
        """Async context manager holding a permit; yields the seconds waited for it.

        Raises the limiter's busy error at once when too many callers already wait.
        """
        ...

    def stats(self) -> SlotStats:
        """Permits held, callers waiting, the capacity and the most ever held at once."""
        ...
