"""CPU per download (`POST /api/images`, a cache miss), in-process: the app's own cost of one.

    .venv/bin/python -m bench.misscost [--rounds 5] [--n 300] [--concurrency 20]

Like `bench.hitcost`, the app is called directly as ASGI and its WMS is respx (no sockets, no
load driver, no upstream process), so what is measured is what satapi does with a download:
the middleware, the route, the store's writer, the image check, the commit, the thread hops
and the log lines. Every request asks for another bbox, so each one downloads. Two sizes: the
64 x 32 PNG of scenario 1 and the 512² scene of scenario 6 (`bench.upstream`, ~400 KB). Each
figure is the best of `--rounds` rounds of `--n` downloads, `--concurrency` at a time (process
CPU time, every thread). Point PYTHONPATH at another checkout's src to measure it the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time

import httpx2

httpx2.alias_httpx()  # before respx, so that it patches httpx2 (as tests/conftest.py does)

from asgi_lifespan import LifespanManager  # noqa: E402

from bench.hitcost import Call, _caller, app_with_fake_wms  # noqa: E402
from bench.upstream import encode_image  # noqa: E402
from satapi.observability.logs import setup_logging  # noqa: E402

SIZES = ((64, 32), (512, 512))


async def measure(rounds: int, n: int, concurrency: int) -> dict[str, float]:
    """Best-of-`rounds` CPU microseconds per download, per image size."""
    best: dict[str, float] = {}
    for width, height in SIZES:
        app = app_with_fake_wms(encode_image(width, height, "image/png"), "satapi-misscost-")
        name = f"{width}x{height}"
        async with LifespanManager(app) as manager:
            downloads = _Downloads(_caller(manager.app), width, height, concurrency)
            await downloads.run(max(10, n // 10))  # warm-up
            for _ in range(rounds):
                started = time.process_time()
                await downloads.run(n)
                cost = (time.process_time() - started) / n * 1e6
                best[name] = min(best.get(name, cost), cost)
    return best


class _Downloads:
    """`POST /api/images` for a new bbox each time, `concurrency` at a time."""

    def __init__(self, call: Call, width: int, height: int, concurrency: int) -> None:
        self.call, self.width, self.height = call, width, height
        self.sem = asyncio.Semaphore(concurrency)
        self.count = 0

    async def one(self) -> None:
        self.count += 1
        west = 10 + self.count * 1e-4  # another bbox: another image, a download
        body = {"bbox": [west, 45, west + 1, 46], "width": self.width, "height": self.height}
        async with self.sem:
            status = await self.call("POST", "/api/images", json.dumps(body).encode())
        assert status == 200, status

    async def run(self, n: int) -> None:
        await asyncio.gather(*(self.one() for _ in range(n)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args(argv)
    setup_logging("text", "info", [])  # as `satapi serve` logs, into the void
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    with open(os.devnull, "w") as void:
        handler.setStream(void)
        best = asyncio.run(measure(args.rounds, args.n, args.concurrency))
    shown = ", ".join(f"{name} PNG {cost:.0f} µs" for name, cost in best.items())
    print(
        f"CPU per download, best of {args.rounds} x {args.n} ({args.concurrency} at a time): "
        f"{shown}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
