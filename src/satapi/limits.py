"""The limiter seam: permits for WMS transfers (a global cap, a cap per provider, load shedding).

Backends live in `satapi.coordination` (`coordination/local.py`: in-process semaphores).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from satapi.config import Settings


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


def make_limiter(settings: Settings) -> Limiter:
    """The limiter the settings ask for."""
    from satapi.coordination.local import LocalLimiter

    return LocalLimiter(
        settings.max_concurrent_wms,
        {name: p.max_concurrency for name, p in settings.providers.items()},
        max_waiting=settings.max_waiting,
        min_intervals={name: p.min_interval_s for name, p in settings.providers.items()},
    )
