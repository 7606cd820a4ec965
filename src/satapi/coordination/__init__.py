"""Coordination backends, and the factories that pick one from the settings: limiters (the
`satapi.limits` protocols: concurrency caps, leases) and OAuth token caches (`satapi.tokens`),
in-process (`local.py`) or on Redis for a fleet (`redis.py`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from satapi.limits import Limiter, SlotLimiter
from satapi.tokens import SharedTokenCache, SharedValues, TokenCache

if TYPE_CHECKING:
    from satapi.config import Settings
    from satapi.coordination.redis import FleetFlights, RedisCoordinator
    from satapi.observability.events import Observer


def make_limiter(settings: Settings) -> Limiter:
    """The in-process limiter, with this worker's share of every cap (`worker_processes`)."""
    from satapi.coordination.local import LocalLimiter
    from satapi.coordination.shares import local_caps

    caps = local_caps(settings)
    return LocalLimiter(
        caps.global_cap,
        caps.provider_caps,
        max_waiting=caps.max_waiting,
        min_intervals=caps.min_intervals,
        default_cap=max(1, 4 // caps.workers),
    )


async def open_coordination(
    settings: Settings, *, on_error: Callable[[str], None] | None = None
) -> tuple[RedisCoordinator | None, Limiter, FleetFlights | None]:
    """The limiter and the fleet single flight the settings ask for.

    With `redis_url`: a started `RedisCoordinator` (the caller closes it), the Redis limiter and
    fleet-wide single flight. Without: no coordinator, the in-process limiter, no fleet flights.
    `on_error(operation)` hears of every failed Redis call.
    """
    if settings.redis_url is None:
        return None, make_limiter(settings), None
    from satapi.coordination.redis import FleetFlights, RedisCoordinator, RedisLimiter

    coordinator = RedisCoordinator(
        settings.redis_url.get_secret_value(), lease_s=settings.redis_lease_s, on_error=on_error
    )
    await coordinator.start()
    limiter = RedisLimiter(
        coordinator,
        settings.max_concurrent_wms,
        {name: p.max_concurrency for name, p in settings.providers.items()},
        max_waiting=settings.max_waiting,
        min_intervals={name: p.min_interval_s for name, p in settings.providers.items()},
    )
    return coordinator, limiter, FleetFlights(coordinator)


def make_ai_limiter(
    settings: Settings, observer: Observer, coordinator: RedisCoordinator | None = None
) -> SlotLimiter:
    """The AI cap: `max_concurrent_ai` Claude calls at once, `max_ai_waiting` queued behind.

    Beyond the queue, `AIBusy` (503 `ai_busy`) with a `Retry-After`. Anthropic's rate limits are
    per organisation, so with a `coordinator` (`redis_url`) the cap and the queue bound hold for
    the whole fleet (the lease semaphore "ai"; Redis down is 503 `backend_unavailable`).
    Without one, each of `worker_processes` processes enforces its share (`coordination.shares`).
    """
    from satapi.errors import AIBusy
    from satapi.observability.events import AiSlotSettled

    def busy(message: str, retry_after: int) -> AIBusy:
        return AIBusy(message, retry_after=retry_after)

    def observe(outcome: str, waited_s: float) -> None:
        observer.observe(AiSlotSettled(outcome=outcome, waited_s=waited_s))

    if coordinator is not None:
        from satapi.coordination.redis import RedisSlotLimiter

        return RedisSlotLimiter(
            coordinator,
            "ai",
            settings.max_concurrent_ai,
            max_waiting=settings.max_ai_waiting,
            busy=busy,
            observe=observe,
        )
    from satapi.coordination.local import LocalSlotLimiter
    from satapi.coordination.shares import local_caps

    caps = local_caps(settings)
    return LocalSlotLimiter(
        caps.ai_cap, max_waiting=caps.ai_max_waiting, busy=busy, observe=observe
    )


def make_token_cache(settings: Settings, shared: SharedValues | None = None) -> TokenCache:
    """The token cache: shared through `shared` (the app passes its Redis coordinator, which
    exists when `redis_url` is set) so the fleet asks once per expiry, else kept in-process.
    """
    del settings  # the choice is made by whoever opened the coordination backend
    if shared is not None:
        return SharedTokenCache(shared)
    from satapi.coordination.local import LocalTokenCache

    return LocalTokenCache()
