"""The token-cache seam: OAuth access tokens shared per credentials, issued by one caller at a time.

`TokenCache.get(key, issue)` returns a token that is still good, or runs `issue()` once for all
concurrent callers (single flight) and keeps its result. `LocalTokenCache` (in
`satapi.coordination.local`) does this in one process. With several processes (`redis_url`, the
scale-out work) a Redis implementation of the same protocol shares the token, so the whole fleet
asks the token endpoint once per expiry; `make_token_cache` is where it plugs in.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from satapi.config import Settings

# Refresh this long before a token runs out (at most; a tenth of a short token's life).
REFRESH_MARGIN_S = 60.0


@dataclass(frozen=True)
class Token:
    """An access token and when to stop using it (wall-clock seconds, so processes can share it)."""

    value: str = field(repr=False)  # never printed: a token is a secret
    refresh_at: float

    @classmethod
    def issued(cls, value: str, expires_in: float, *, now: float | None = None) -> Token:
        """A token that lasts `expires_in` seconds, to be refreshed shortly before it runs out."""
        now = time.time() if now is None else now
        margin = min(REFRESH_MARGIN_S, max(0.0, expires_in) * 0.1)
        return cls(value=value, refresh_at=now + max(0.0, expires_in) - margin)

    def usable(self, now: float | None = None) -> bool:
        """True until shortly before the token expires."""
        return (time.time() if now is None else now) < self.refresh_at


IssueToken = Callable[[], Awaitable[Token]]


class TokenCache(Protocol):
    """Tokens by key (one per provider credentials), each issued by one caller at a time."""

    async def get(self, key: str, issue: IssueToken, *, stale: str | None = None) -> Token:
        """A usable token for `key`, calling `issue()` (once for all waiters) when there is none.

        `stale` is a token the server refused (401): if the cache still holds it, it is replaced
        by a new one; if someone already replaced it, the newer token is returned as it is, so
        many requests refused for the same token share one refresh. An `issue()` failure is
        raised to every waiter.
        """
        ...


def make_token_cache(settings: Settings) -> TokenCache:
    """The token cache for these settings.

    Hook for the Redis backend (scale-out): when `redis_url` is configured, return a cache that
    keeps the token under the same key in Redis and single-flights `issue()` across processes
    (the shared-value + single-flight helper of `satapi.coordination.redis`). Until that lands,
    every process keeps its own token.
    """
    from satapi.coordination.local import LocalTokenCache

    del settings  # only the in-process backend exists so far
    return LocalTokenCache()
