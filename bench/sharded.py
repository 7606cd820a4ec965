"""satapi's former WMS transport, kept for the A/B (`bench.clientab`): small httpcore2 pools.

The service now does its I/O with aiohttp (`satapi.providers.transport`). This is the transport
it used before, as it was, without its SSRF network backend: for a configured provider's
origin (the benchmark's upstream) that backend connected straight through, so the CPU measured
is the same.

httpcore2's pool checks every idle connection (`has_expired()`: a `poll()` per connection)
each time a request starts and each time a response is closed, so one pool sized to a cap of
200 costs O(200) per request. Requests are spread round-robin over pools of about
`POOL_SHARD_SIZE` kept-alive connections each; the limiter, not the pools, enforces the cap.
At a cap of 200 (bench scenario 1), server CPU per download was 7.8 ms with pools of 10,
6.5-6.9 ms with pools of 4, and 7.8-8.1 ms with pools of 2 (surplus connections get closed).
"""

from __future__ import annotations

import itertools
import math
import ssl
from types import TracebackType

import httpx2

POOL_SHARD_SIZE = 4


class ShardedTransport(httpx2.AsyncBaseTransport):
    """Round-robin over `shards` `AsyncHTTPTransport`s, each with its share of kept-alive
    connections (and room to open up to `max_connections` when the others are busy)."""

    def __init__(
        self,
        *,
        max_connections: int,
        shards: int | None = None,
    ) -> None:
        count = shards if shards is not None else shard_count(max_connections)
        keepalive = math.ceil(max_connections / count)
        # One TLS context for all: each loads the CA bundle, ~45 ms and ~0.9 MB apiece (50
        # shards for a cap of 200 took 2.6 s and 43 MB at start-up with a context each).
        tls = httpx2.create_ssl_context(trust_env=False)
        self.shards = [_transport(tls, max_connections, keepalive) for _ in range(count)]
        self._next = itertools.cycle(self.shards)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await next(self._next).handle_async_request(request)

    async def __aenter__(self) -> ShardedTransport:
        for shard in self.shards:
            await shard.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


def _transport(
    tls: ssl.SSLContext, max_connections: int, keepalive: int
) -> httpx2.AsyncHTTPTransport:
    return httpx2.AsyncHTTPTransport(
        verify=tls,
        limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=keepalive),
        trust_env=False,
    )


def shard_count(max_connections: int) -> int:
    """Pools for a cap: one up to `POOL_SHARD_SIZE` connections, then one per that many."""
    return max(1, math.ceil(max_connections / POOL_SHARD_SIZE))
