"""Caps for one of several worker processes without Redis: each gets an equal share of each cap.

Without a shared backend each worker enforces its own caps, so `satapi serve --workers N` gives
every worker `cap // N` (never more than the configured total, the remainder unused) and spaces
each provider's starts N times further apart. A cap smaller than N cannot be shared that way.
"""

from __future__ import annotations

from dataclasses import dataclass

from satapi.config import Settings


class ShareError(ValueError):
    """A cap is too small to give each worker process at least one permit."""


@dataclass(frozen=True)
class LocalCaps:
    """The caps one process enforces."""

    global_cap: int
    provider_caps: dict[str, int]
    min_intervals: dict[str, float]
    max_waiting: int
    workers: int
    # The AI cap: `max_concurrent_ai` and `max_ai_waiting`, shared the same way.
    ai_cap: int
    ai_max_waiting: int

    def describe(self, settings: Settings) -> str:
        """One line for the start-up log: what each worker got out of which total."""
        parts = [f"max_concurrent_wms {self.global_cap} of {settings.max_concurrent_wms}"]
        for name, cap in sorted(self.provider_caps.items()):
            parts.append(f"{name} {cap} of {settings.providers[name].max_concurrency}")
        parts.append(f"max_waiting {self.max_waiting} of {settings.max_waiting}")
        if settings.anthropic_api_key is not None:
            parts.append(f"max_concurrent_ai {self.ai_cap} of {settings.max_concurrent_ai}")
            parts.append(f"max_ai_waiting {self.ai_max_waiting} of {settings.max_ai_waiting}")
        return (
            f"{self.workers} worker processes without redis_url: each enforces its share of "
            "every cap (" + ", ".join(parts) + "); set redis_url for caps shared as one"
        )


def local_caps(settings: Settings) -> LocalCaps:
    """This process's caps: the configured ones, divided by `worker_processes` when > 1."""
    n = settings.worker_processes if settings.redis_url is None else 1

    def share(field: str, total: int) -> int:
        if total // n < 1:
            raise ShareError(
                f"{field} ({total}) cannot be shared by {n} worker processes (each needs at "
                "least 1); lower --workers, raise the cap, or set redis_url"
            )
        return total // n

    return LocalCaps(
        global_cap=share("max_concurrent_wms", settings.max_concurrent_wms),
        provider_caps={
            name: share(f"providers.{name}.max_concurrency", p.max_concurrency)
            for name, p in settings.providers.items()
        },
        min_intervals={name: p.min_interval_s * n for name, p in settings.providers.items()},
        max_waiting=settings.max_waiting // n,
        workers=n,
        # Without an Anthropic key no AI call is made: a small AI cap must not stop the server.
        ai_cap=(
            share("max_concurrent_ai", settings.max_concurrent_ai)
            if settings.anthropic_api_key is not None
            else max(1, settings.max_concurrent_ai // n)
        ),
        ai_max_waiting=settings.max_ai_waiting // n,
    )
