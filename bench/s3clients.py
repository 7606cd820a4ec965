"""Which async S3 client: obstore vs aiobotocore, PUT and GET of 100 KB objects against moto.

    .venv/bin/python -m bench.s3clients [--n 300] [--concurrency 1,16] [--rounds 3]

Starts `moto_server` on 127.0.0.1 (nothing leaves the machine), then for each client and each
concurrency does `--n` PUTs (create-if-absent, as the store writes) and `--n` GETs (whole body
read, as a stream to a client) of distinct 100 KB objects. It reports wall time per operation
and this process's CPU time per operation (the client's own cost; moto's is its own process).
Each figure is the best of `--rounds` rounds. The result picked the client in satapi.stores.s3.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SIZE = 100 * 1024
BUCKET = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(port: int) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/{BUCKET}", method="PUT")
            urllib.request.urlopen(req, timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


Op = Callable[[str, bytes | None], Awaitable[Any]]


async def run_ops(op: Op, keys: list[str], data: bytes | None, concurrency: int) -> float:
    queue = list(keys)

    async def worker() -> None:
        while queue:
            await op(queue.pop(), data)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def measure(name: str, put: Op, get: Op, n: int, concurrency: int) -> dict[str, float]:
    data = os.urandom(SIZE)
    keys = [f"{name}/{uuid.uuid4().hex}" for _ in range(n)]
    out: dict[str, float] = {}
    for label, op, payload in (("put", put, data), ("get", get, None)):
        cpu0 = time.process_time()
        wall = await run_ops(op, keys, payload, concurrency)
        cpu = time.process_time() - cpu0
        out[f"{label}_ms"] = wall / n * 1000
        out[f"{label}_cpu_ms"] = cpu / n * 1000
    return out


async def obstore_client(endpoint: str) -> tuple[Op, Op, Callable[[], Awaitable[None]]]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        config={
            "endpoint": endpoint,
            "access_key_id": "bench",
            "secret_access_key": "bench",
            "region": "us-east-1",
            "conditional_put": "etag",
        },
        client_options={"allow_http": True},
    )

    async def put(key: str, data: bytes | None) -> None:
        assert data is not None
        await obstore.put_async(store, key, data, mode="create")

    async def get(key: str, _data: bytes | None) -> None:
        result = await obstore.get_async(store, key)
        async for _chunk in result.stream(min_chunk_size=64 * 1024):
            pass

    async def close() -> None:
        await asyncio.sleep(0.05)  # obstore: let its runtime settle before the loop ends

    return put, get, close


async def aiobotocore_client(endpoint: str) -> tuple[Op, Op, Callable[[], Awaitable[None]]]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    session = get_session()
    ctx = session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=AioConfig(max_pool_connections=64, s3={"addressing_style": "path"}),
    )
    client = await ctx.__aenter__()

    async def put(key: str, data: bytes | None) -> None:
        await client.put_object(Bucket=BUCKET, Key=key, Body=data, IfNoneMatch="*")

    async def get(key: str, _data: bytes | None) -> None:
        response = await client.get_object(Bucket=BUCKET, Key=key)
        async with response["Body"] as body:
            while await body.read(64 * 1024):
                pass

    async def close() -> None:
        await ctx.__aexit__(None, None, None)

    return put, get, close


async def main_async(n: int, concurrencies: list[int], rounds: int, port: int) -> None:
    endpoint = f"http://127.0.0.1:{port}"
    results: dict[tuple[str, int], dict[str, float]] = {}
    for name, make in (("obstore", obstore_client), ("aiobotocore", aiobotocore_client)):
        put, get, close = await make(endpoint)
        try:
            await measure(name, put, get, 20, 4)  # warm up: connections, imports, signing
            for c in concurrencies:
                best: dict[str, float] = {}
                for _ in range(rounds):
                    got = await measure(name, put, get, n, c)
                    best = {k: min(v, best.get(k, v)) for k, v in got.items()}
                results[(name, c)] = best
        finally:
            await close()
    print(f"{n} objects of {SIZE // 1024} KB, best of {rounds} rounds (ms per operation)")
    print(f"{'client':<12} {'C':>3} {'PUT':>7} {'PUT cpu':>8} {'GET':>7} {'GET cpu':>8}")
    for (name, c), r in results.items():
        print(
            f"{name:<12} {c:>3} {r['put_ms']:>7.2f} {r['put_cpu_ms']:>8.2f}"
            f" {r['get_ms']:>7.2f} {r['get_cpu_ms']:>8.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    port = free_port()
    proc = start_moto(port)
    try:
        asyncio.run(
            main_async(args.n, [int(c) for c in args.concurrency.split(",")], args.rounds, port)
        )
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
