"""CPU per request of `GET /healthz` and of a cache-hit `POST /api/images`, in-process.

    .venv/bin/python -m bench.hitcost [--rounds 5] [--n 1500]

The app is called directly as ASGI (no sockets, no load driver), so the numbers are the app's
own cost: what a change to the middleware, the routes or the store does to a request, with far
less noise than a load test on a shared machine. Scenario 4's ratio (cache hits ÷ /healthz)
follows these numbers. The image is seeded through a mocked WMS (respx); nothing leaves the
process. Each figure is the best of `--rounds` rounds of `--n` requests (process CPU time).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2

httpx2.alias_httpx()  # before respx, so that it patches httpx2 (as tests/conftest.py does)

import httpx  # noqa: E402  (httpx2 under the alias; respx's types are httpx's)
import respx  # noqa: E402
from asgi_lifespan import LifespanManager  # noqa: E402
from PIL import Image  # noqa: E402

from satapi.app import create_app  # noqa: E402
from satapi.config import Settings  # noqa: E402
from satapi.observability.logs import setup_logging  # noqa: E402

WMS = "http://127.0.0.1:9/wms"
BODY = json.dumps({"bbox": [10, 45, 14, 47], "width": 64, "height": 32}).encode()

Call = Callable[[str, str, bytes], Awaitable[int]]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _caller(app: Any) -> Call:
    async def call(method: str, path: str, body: bytes) -> int:
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # no disconnect: the watcher is cancelled at the end
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"bench"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        await app(scope, receive, send)
        return int(sent[0]["status"])

    return call


def app_with_fake_wms(png: bytes, prefix: str) -> Any:
    """The app, its data in a new temp dir, its WMS answered in-process by respx with `png`."""
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix=prefix)),
        providers={"test": {"url": WMS, "default_layer": "scene"}},
        default_provider="test",
    )
    router = respx.Router(assert_all_called=False)
    router.get(url__startswith=WMS).mock(
        return_value=httpx.Response(200, content=png, headers={"content-type": "image/png"})
    )
    return create_app(settings, http_transport=httpx.MockTransport(router.async_handler))


async def measure(rounds: int, n: int) -> dict[str, float]:
    """Best-of-`rounds` CPU microseconds per request, for /healthz and a cache hit."""
    app = app_with_fake_wms(_png(64, 32), "satapi-hitcost-")
    async with LifespanManager(app) as manager:
        call = _caller(manager.app)
        assert await call("POST", "/api/images", BODY) == 200  # the download
        best: dict[str, float] = {}
        loads = [("healthz", "GET", "/healthz", b""), ("cache_hit", "POST", "/api/images", BODY)]
        for _ in range(rounds):
            for name, method, path, body in loads:
                for _ in range(n // 10):  # warm-up
                    await call(method, path, body)
                started = time.process_time()
                for _ in range(n):
                    assert await call(method, path, body) == 200
                cost = (time.process_time() - started) / n * 1e6
                best[name] = min(best.get(name, cost), cost)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=1500)
    args = parser.parse_args(argv)
    # As `satapi serve` logs (a cache hit writes its INFO request line), into the void.
    setup_logging("text", "info", [])
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    with open(os.devnull, "w") as void:
        handler.setStream(void)
        best = asyncio.run(measure(args.rounds, args.n))
    ratio = best["healthz"] / best["cache_hit"]
    print(
        f"CPU per request, best of {args.rounds} x {args.n}: /healthz {best['healthz']:.0f} µs, "
        f"cache hit {best['cache_hit']:.0f} µs (hit ÷ /healthz throughput ≈ {ratio:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
