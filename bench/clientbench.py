"""Scenario 0 helper: one async HTTP client, C concurrent GETs of a URL, N in all; prints JSON.

``python -m bench.clientbench {httpx,httpx2,aiohttp} URL [--concurrency 200] [--total 400]
[--time-limit 60] [--loop asyncio|uvloop]``

Each client runs in its own process (``bench.scenarios`` starts one per client) so that no
client's imports, pools or garbage slow another one. ``httpx`` here is the real httpx package
(0.28): only the test suite aliases it to httpx2. Every client gets one pooled keep-alive client
object with ``concurrency`` connections, the same timeouts and proxies off; the C tasks share
it. Prints one JSON object: ``{"client", "version", "concurrency", "total", "ok", "errors",
"wall_s", "rps", "cpu_s"}`` where ``rps`` counts successful answers per wall second and
``cpu_s`` is the CPU time this process used (the client's own cost per request).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

CLIENTS = ("httpx", "httpx2", "aiohttp")
Getter = Callable[[], Awaitable[int]]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _drive(get: Getter, concurrency: int, total: int, time_limit: float) -> dict[str, Any]:
    next_index = 0
    ok = 0
    errors: Counter[str] = Counter()

    async def worker() -> None:
        nonlocal next_index, ok
        while next_index < total:
            next_index += 1
            try:
                status = await get()
            except Exception as exc:  # every transport error is a result
                errors[type(exc).__name__] += 1
            else:
                if status == 200:
                    ok += 1
                else:
                    errors[f"HTTP {status}"] += 1

    t0 = time.perf_counter()
    cpu0 = _cpu_s()
    hit_limit = False
    try:
        async with asyncio.timeout(time_limit):
            await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    except TimeoutError:
        hit_limit = True
    wall = time.perf_counter() - t0
    return {
        "ok": ok,
        "errors": dict(errors),
        "wall_s": round(wall, 3),
        "rps": round(ok / wall, 1) if wall > 0 else 0.0,
        "cpu_s": round(_cpu_s() - cpu0, 3),
        "hit_time_limit": hit_limit,
    }


async def run(
    client: str, url: str, concurrency: int, total: int, time_limit: float
) -> dict[str, Any]:
    """Run the load with ``client`` and return the JSON-ready result."""
    timeout = max(time_limit, 30.0)
    result: dict[str, Any]
    if client == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as session:

            async def get_aiohttp() -> int:
                async with session.get(url) as resp:
                    await resp.read()
                    return resp.status

            result = await _drive(get_aiohttp, concurrency, total, time_limit)
    elif client in ("httpx", "httpx2"):
        mod: Any = __import__(client)
        limits = mod.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with mod.AsyncClient(
            limits=limits, timeout=mod.Timeout(timeout), trust_env=False
        ) as http:

            async def get_httpx() -> int:
                resp = await http.get(url)
                return int(resp.status_code)

            result = await _drive(get_httpx, concurrency, total, time_limit)
    else:
        raise ValueError(f"unknown client {client!r}")
    return {
        "client": client,
        "version": importlib.metadata.version(client),
        "concurrency": concurrency,
        "total": total,
        **result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("client", choices=CLIENTS)
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--total", type=int, default=400)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args(argv)
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(
            run(args.client, args.url, args.concurrency, args.total, args.time_limit)
        )
    result["loop"] = args.loop
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
