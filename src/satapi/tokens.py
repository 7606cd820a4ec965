"""The token-cache seam: OAuth access tokens shared per credentials, issued by one caller at a time.

`TokenCache.get(key, issue)` returns a token that is still good, or runs `issue()` once for all
concurrent callers (single flight) and keeps its result. `LocalTokenCache` (in
`satapi.coordination.local`) does this in one process; `SharedTokenCache` keeps the token in a
fleet-wide shared value (the Redis coordinator's, when `redis_url` is set), so the whole fleet
asks the token endpoint once per expiry. `make_token_cache` picks one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

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


# --- a fleet-wide token cache over shared values (Redis) ---------------------------------------

FetchShared = Callable[[], Awaitable[tuple[bytes, float]]]


class SharedValue(Protocol):
    """One value shared by the fleet, fetched by one process at a time (`RedisCoordinator`)."""

    async def get_or_fetch(self, fetch: FetchShared) -> bytes:
        """The stored value, else `fetch()` -> (value, ttl seconds), run once and stored."""
        ...

    async def invalidate(self, seen: bytes) -> None:
        """Forget the value if it is still `seen`."""
        ...


class SharedValues(Protocol):
    """Where shared values live (the Redis coordinator of the scale-out work)."""

    def shared_value(self, name: str) -> SharedValue:
        """The shared value called `name`."""
        ...


class SharedTokenCache:
    """`TokenCache` for a fleet: the token lives in a shared value (Redis) until its refresh time.

    The whole fleet asks the token endpoint once per expiry: a process that finds no token
    fetches one under the shared value's fleet-wide mutex while the others wait and read it.
    A token the Process API refused is invalidated only if it is still the stored one, so
    refusals of the same token anywhere in the fleet share one refresh. Each process keeps the
    last token it read, so a usable token costs no round trip.
    """

    def __init__(self, values: SharedValues) -> None:
        self._values = values
        self._held: dict[str, Token] = {}
        # The stored form of tokens handed out lately, to invalidate one exactly (bounded).
        self._stored: dict[str, bytes] = {}

    async def get(self, key: str, issue: IssueToken, *, stale: str | None = None) -> Token:
        """See `TokenCache.get`."""
        held = self._held.get(key)
        if held is not None and held.value != stale and held.usable():
            return held
        shared = self._values.shared_value(key)
        if stale is not None and (seen := self._stored.get(stale)) is not None:
            # Every refused caller deletes the token if it is still the stored one, and only
            # then reads: none can be handed the refused token again (compare-and-delete, so
            # the refusals share the one fetch that follows).
            await shared.invalidate(seen)

        async def fetch() -> tuple[bytes, float]:
            token = await issue()
            # Stored until its refresh time, so nobody is handed a token about to run out.
            return encode_token(token), max(0.001, token.refresh_at - time.time())

        raw = await shared.get_or_fetch(fetch)
        token = decode_token(raw)
        self._held[key] = token
        self._stored[token.value] = raw
        while len(self._stored) > 16:
            del self._stored[next(iter(self._stored))]
        return token


def encode_token(token: Token) -> bytes:
    """A token as stored in a shared value."""
    return json.dumps({"value": token.value, "refresh_at": token.refresh_at}).encode()


def decode_token(raw: bytes) -> Token:
    """The token `encode_token` stored."""
    doc = json.loads(raw)
    return Token(value=str(doc["value"]), refresh_at=float(doc["refresh_at"]))
