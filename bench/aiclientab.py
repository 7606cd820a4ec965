"""A/B of the HTTP client under the Anthropic SDK: CPU per streamed call, and connections.

    python -m bench.aiclientab [--calls 200] [--rounds 3] [--latency 1.0]

Starts the fake Messages API (`bench.fake_ai`) in its own process, then, in this process, runs
`--rounds` x 2 waves of `--calls` concurrent streamed calls through each client in turn
(rotating which goes first): `default` (the SDK's own httpx2/httpcore2 pool), `sdk-aio` (the
SDK's `DefaultAioHttpClient`, its vendored httpx-aiohttp) and `aiohttp` (satapi's
`AiohttpTransport` under an httpx2 client, as `satapi.app.make_ai_http_client` builds it).
Prints this process's CPU time per call (the client side only: the fake runs elsewhere) and the
TCP connections opened meanwhile (the machine's `ActiveOpens`: run it on an idle machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request

import anthropic
import httpx2

from satapi.app import make_ai_http_client
from satapi.config import Settings


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wave(client: anthropic.AsyncAnthropic, calls: int) -> None:
    async def call() -> None:
        async with client.messages.stream(
            model="m", max_tokens=64, messages=[{"role": "user", "content": "describe"}]
        ) as stream:
            await stream.get_final_text()

    await asyncio.gather(*(call() for _ in range(calls)))


async def _run(variant: str, base_url: str, calls: int) -> tuple[float, int]:
    """CPU seconds per call over two waves, and the connections this process opened."""
    http_client: httpx2.AsyncClient | None = None
    if variant == "aiohttp":
        http_client = make_ai_http_client(Settings(max_concurrent_ai=calls))
    elif variant == "sdk-aio":
        http_client = anthropic.DefaultAioHttpClient()
    client = anthropic.AsyncAnthropic(
        api_key="bench", base_url=base_url, max_retries=0, http_client=http_client
    )
    before_conns = _connects()
    start = _cpu()
    try:
        for _ in range(2):
            await _wave(client, calls)
    finally:
        await client.close()
    return (_cpu() - start) / (2 * calls), _connects() - before_conns


def _connects() -> int:
    # Active opens of this whole machine's TCP stack (Tcp: ActiveOpens in /proc/net/snmp): the
    # run is the only thing connecting to the fake here, and it is counted in both variants.
    with open("/proc/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("ActiveOpens")])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.aiclientab", description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    port = _free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "bench.fake_ai", "--port", str(port), "--latency", str(args.latency)]
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        print(f"load before: {os.getloadavg()[0]:.2f}; {args.calls} concurrent calls x 2 waves")
        for r in range(args.rounds):
            variants = ("default", "sdk-aio", "aiohttp")
            order = variants[r % 3 :] + variants[: r % 3]
            for variant in order:
                per_call, conns = asyncio.run(_run(variant, base, args.calls))
                print(
                    f"round {r + 1} {variant:8s} {per_call * 1000:6.2f} ms CPU per call, "
                    f"{conns} connections opened"
                )
    finally:
        fake.terminate()
        fake.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
