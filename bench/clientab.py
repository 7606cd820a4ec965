"""A/B of satapi's WMS HTTP transport, in-process: server CPU per download (issue 14, part 4).

    .venv/bin/python -m bench.clientab [--n 600] [--concurrency 200] [--latency 0.5] [--rounds 3]

The same app (`create_app`) serves `POST /api/images` for distinct 64x64 images from the
benchmark's slow WMS upstream (`bench.upstream`, its own process), called as bare ASGI (no load
driver, no sockets on the front), once with each transport behind the same `httpx2.AsyncClient`:

``httpx2``     today's `ShardedTransport` (httpcore2 pools of 4 kept-alive connections)
``aiohttp``    `httpx_aiohttp.httpx2.AiohttpTransport` (aiohttp's connector under httpx2's API;
               the package's httpx 0.28 transport is the same code for the other client).
               A measurement only: it has no connect-time SSRF guard (`providers/netguard.py`)

Each figure is this process's CPU (`time.process_time`, all threads) per download; the
variants alternate round by round, and every round is printed with the best and the median
(on a shared machine single rounds vary by 10-20 %). Needs `httpx-aiohttp` (in the `bench`
extra); the service itself does not use it.
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

import satapi.app
from bench.hitcost import _caller
from bench.procs import ServerProcess, free_port
from bench.upstream import upstream_command
from satapi import __version__
from satapi.app import create_app
from satapi.config import Settings
from satapi.observability.logs import setup_logging

Factory = Callable[[Settings], httpx2.AsyncClient]


def _timeout(settings: Settings) -> httpx2.Timeout:
    return httpx2.Timeout(
        connect=settings.wms_connect_timeout_s,
        read=settings.wms_read_timeout_s,
        write=settings.wms_read_timeout_s,
        pool=settings.wms_total_timeout_s,
    )


def aiohttp_client(settings: Settings) -> httpx2.AsyncClient:
    """satapi's WMS client with aiohttp doing the I/O."""
    from httpx_aiohttp.httpx2 import AiohttpTransport

    cap = settings.max_concurrent_wms
    return httpx2.AsyncClient(
        timeout=_timeout(settings),
        transport=AiohttpTransport(
            limits=httpx2.Limits(max_connections=cap, max_keepalive_connections=cap),
            trust_env=False,
        ),
        follow_redirects=False,
        headers={"User-Agent": f"satapi/{__version__}"},
        trust_env=False,
    )


VARIANTS: dict[str, Factory] = {
    "httpx2": satapi.app.make_http_client,
    "aiohttp": aiohttp_client,
}


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
    satapi.app.make_http_client = factory  # the factory open_resources calls
    app = create_app(settings)
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


async def measure(n: int, concurrency: int, latency: float, rounds: int) -> dict[str, list[float]]:
    """CPU ms per download of every round, per variant (the variants alternate)."""
    port = free_port()
    upstream = ServerProcess(
        f"clientab-upstream-{port}",
        upstream_command(port, latency),
        f"http://127.0.0.1:{port}/healthz",
    ).start()
    original = satapi.app.make_http_client
    costs: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        for r in range(rounds):
            for name, factory in VARIANTS.items():
                cost = await _round(factory, f"http://127.0.0.1:{port}/wms", n, concurrency, r)
                costs[name].append(cost)
    finally:
        satapi.app.make_http_client = original
        upstream.stop(grace=5.0)
    return costs


def main(argv: list[str] | None = None) -> int:
    """Print CPU ms per download for each transport."""
    parser = argparse.ArgumentParser(prog="python -m bench.clientab", description=__doc__)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    setup_logging("text", "info", [])  # as `satapi serve` logs: a line per download, to nowhere
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    with open(os.devnull, "w") as void:
        handler.setStream(void)
        costs = asyncio.run(measure(args.n, args.concurrency, args.latency, args.rounds))
    print(
        f"server CPU ms per download, {args.rounds} rounds x {args.n} at C={args.concurrency} "
        "(best / median; every round):"
    )
    for name, values in costs.items():
        print(
            f"  {name:8s} {min(values):.2f} / {statistics.median(values):.2f}  "
            + " ".join(f"{v:.2f}" for v in values)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
