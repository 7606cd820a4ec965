"""A/B of satapi's WMS HTTP transport, in-process: server CPU per download.

    .venv/bin/python -m bench.clientab [--n 600] [--concurrency 200] [--latency 0.5] [--rounds 3]

The same app (`create_app`) serves `POST /api/images` for distinct 64x64 images from the
benchmark's slow WMS upstream (`bench.upstream`, its own process), called as bare ASGI (no load
driver, no sockets on the front), once with each transport behind the same `httpx2.AsyncClient`
(given to `create_app(http_transport=...)`; the client's settings are the service's):

``aiohttp``        satapi's transport (`satapi.providers.transport.AiohttpTransport`: aiohttp's
                   connector under httpx2's API, the SSRF guard as its resolver)
``httpx2``         the transport satapi used before (`bench.sharded.ShardedTransport`: httpcore2
                   pools of 4 kept-alive connections)
``httpx-aiohttp``  the `httpx-aiohttp` package's httpx2 transport, which satapi's follows
                   (only with ``--all``; no SSRF guard, connection errors reported as timeouts)

Each figure is this process's CPU (`time.process_time`, all threads) per download; the
variants alternate round by round, and every round is printed with the best and the median
(on a shared machine single rounds vary by 10-20 %). ``--all`` needs `httpx-aiohttp` (in the
`bench` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
from asgi_lifespan import LifespanManager

from bench.hitcost import _caller
from bench.procs import ServerProcess, free_port
from bench.sharded import ShardedTransport
from bench.upstream import upstream_command
from satapi.app import create_app
from satapi.config import Settings
from satapi.observability.logs import setup_logging

# The transport for an app with these settings; None: the service's own.
Factory = Callable[[Settings], httpx2.AsyncBaseTransport | None]


def package_transport(settings: Settings) -> httpx2.AsyncBaseTransport:
    """The `httpx-aiohttp` package's httpx2 transport, sized like the service's."""
    from httpx_aiohttp.httpx2 import AiohttpTransport

    cap = settings.max_concurrent_wms
    return AiohttpTransport(
        limits=httpx2.Limits(max_connections=cap, max_keepalive_connections=cap),
        trust_env=False,
    )


VARIANTS: dict[str, Factory] = {
    "aiohttp": lambda settings: None,
    "httpx2": lambda settings: ShardedTransport(max_connections=settings.max_concurrent_wms),
}
EXTRA: dict[str, Factory] = {"httpx-aiohttp": package_transport}


async def _round(factory: Factory, wms: str, n: int, concurrency: int, seed: int) -> float:
    """CPU ms per download for `n` distinct downloads at `concurrency`."""
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="satapi-clientab-")),
        providers={
            "bench": {
                "url": wms,
                "version": "1.3.0",
                "default_layer": "bench",
                "max_concurrency": 200,
            }
        },
        default_provider="bench",
        max_concurrent_wms=200,
        max_waiting=100_000,
    )
    app = create_app(settings, http_transport=factory(settings))
    gate = asyncio.Semaphore(concurrency)
    async with LifespanManager(app) as manager:
        call = _caller(manager.app)

        async def one(i: int) -> int:
            lon = -170.0 + (seed * n + i) % 3000 * 0.1
            body = {
                "layer": "bench",
                "bbox": [lon, 10.0, lon + 0.05, 10.05],
                "crs": "EPSG:4326",
                "time": "2024-06-01",
                "width": 64,
                "height": 64,
                "format": "image/png",
            }
            async with gate:
                return await call("POST", "/api/images", json.dumps(body).encode())

        await asyncio.gather(*(one(-1 - i) for i in range(10)))  # warm-up: connections open
        started = time.process_time()
        statuses = await asyncio.gather(*(one(i) for i in range(n)))
        cpu = time.process_time() - started
    bad = [s for s in statuses if s != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} downloads failed: {bad[:5]}")
    return cpu / n * 1000


async def measure(
    n: int, concurrency: int, latency: float, rounds: int, variants: dict[str, Factory]
) -> dict[str, list[float]]:
    """CPU ms per download of every round, per variant (the variants alternate)."""
    port = free_port()
    upstream = ServerProcess(
        f"clientab-upstream-{port}",
        upstream_command(port, latency),
        f"http://127.0.0.1:{port}/healthz",
    ).start()
    costs: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for r in range(rounds):
            # Alternate which variant goes first, so neither always runs on a warmer process.
            order = list(variants.items())
            for name, factory in order if r % 2 == 0 else order[::-1]:
                cost = await _round(factory, f"http://127.0.0.1:{port}/wms", n, concurrency, r)
                costs[name].append(cost)
    finally:
        upstream.stop(grace=5.0)
    return costs


def main(argv: list[str] | None = None) -> int:
    """Print CPU ms per download for each transport."""
    parser = argparse.ArgumentParser(prog="python -m bench.clientab", description=__doc__)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--all", action="store_true", help="also measure the httpx-aiohttp package's transport"
    )
    args = parser.parse_args(argv)
    variants = {**VARIANTS, **(EXTRA if args.all else {})}
    setup_logging("text", "info", [])  # as `satapi serve` logs: a line per download, to nowhere
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    with open(os.devnull, "w") as void:
        handler.setStream(void)
        costs = asyncio.run(measure(args.n, args.concurrency, args.latency, args.rounds, variants))
    print(
        f"server CPU ms per download, {args.rounds} rounds x {args.n} at C={args.concurrency} "
        "(best / median; every round):"
    )
    for name, values in costs.items():
        print(
            f"  {name:13s} {min(values):.2f} / {statistics.median(values):.2f}  "
            + " ".join(f"{v:.2f}" for v in values)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
