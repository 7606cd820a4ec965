"""Two `satapi serve` replicas sharing one Redis and one data dir, against a slow upstream.

Everything is real and on 127.0.0.1: redis-server, the fault-injecting WMS, the satapi processes
(and moto_server for the S3-store case). Each test is bounded by explicit timeouts.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fault_upstream import FaultUpstream, SatapiProcess
from tests.support.redis_server import RedisServer, running_redis
from tests.support.s3server import MotoServer, aws_env

CAP = 6
LEASE_S = 3.0


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultUpstream]:
    with FaultUpstream() as server:
        yield server


@pytest.fixture
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def settings(upstream: FaultUpstream, data_dir: Path, **more: Any) -> dict[str, Any]:
    return {
        "data_dir": str(data_dir),
        "default_provider": "fault",
        "providers": {"fault": {"url": upstream.wms_url, "default_layer": "ok"}},
        "max_concurrent_wms": CAP,
        "wms_total_timeout_s": 60.0,
        "wms_read_timeout_s": 30.0,
        "retry_attempts": 1,
        **more,
    }


@pytest.fixture
def replicas(
    tmp_path: Path, upstream: FaultUpstream, redis: RedisServer
) -> Iterator[list[SatapiProcess]]:
    """Replicas A and B: one Redis, one data dir, lease 3 s."""
    shared = tmp_path / "shared-data"
    conf = settings(upstream, shared, redis_url=redis.url, redis_lease_s=LEASE_S)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    made = [SatapiProcess(tmp_path / name, conf) for name in ("a", "b")]
    try:
        for process in made:
            process.start()
        yield made
    finally:
        for process in made:
            process.stop()


def body(layer: str, n: int) -> dict[str, Any]:
    """An image request; a distinct `n` is a distinct image."""
    return {
        "layer": layer,
        "bbox": [10, 40 + n * 0.01, 11, 41 + n * 0.01],
        "width": 32,
        "height": 16,
    }


async def post_split(
    urls: list[str], bodies: list[dict[str, Any]], timeout: float = 60
) -> list[httpx.Response]:
    """POST /api/images for each body, alternating between the replicas, all at once."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await asyncio.gather(
            *(
                client.post(f"{urls[i % len(urls)]}/api/images", json=b)
                for i, b in enumerate(bodies)
            )
        )


async def test_the_cap_holds_across_replicas(
    replicas: list[SatapiProcess], upstream: FaultUpstream
) -> None:
    upstream.reset()
    started = time.monotonic()
    responses = await post_split([r.url for r in replicas], [body("ok:0.5", n) for n in range(24)])
    assert [r.status_code for r in responses] == [200] * 24, responses[0].text
    assert upstream.max_in_flight() == CAP  # never more, and the cap was used
    assert upstream.requests() == 24
    assert time.monotonic() - started >= 24 / CAP * 0.5 - 0.1
    # Both replicas downloaded (the requests really were split).
    downloads = [r.log().count("download ok event=download") for r in replicas]
    assert sum(downloads) == 24 and min(downloads) > 0, downloads
    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"{replicas[0].url}/metrics")).text
    # The fleet's gauges (read from Redis every second) beside this process's own.
    assert re.search(r"^satapi_fleet_wms_global_permits_in_use \d", metrics, re.M)
    assert re.search(r'^satapi_fleet_wms_permits_waiting\{provider="fault"\} \d', metrics, re.M)
    assert re.search(r"^satapi_wms_global_permits_in_use \d", metrics, re.M)


async def test_identical_requests_make_one_upstream_request(
    replicas: list[SatapiProcess], upstream: FaultUpstream
) -> None:
    upstream.reset()
    responses = await post_split([r.url for r in replicas], [body("ok:1", 7)] * 20)
    assert [r.status_code for r in responses] == [200] * 20
    assert upstream.requests() == 1
    # One replica downloaded; the other waited for it and read the stored image.
    logs = [r.log() for r in replicas]
    assert sorted(log.count("download ok event=download") for log in logs) == [0, 1]
    assert all("shared" in log for log in logs if "download ok" not in log)
    ids = {r.json()["image"]["id"] for r in responses}
    assert len(ids) == 1
    # Replica B serves what A (or B) fetched, from the shared data dir.
    image_id = ids.pop()
    async with httpx.AsyncClient(timeout=10) as client:
        for replica in replicas:
            r = await client.get(f"{replica.url}/api/images/{image_id}")
            assert r.status_code == 200 and r.content.startswith(b"\x89PNG")


async def test_a_killed_replica_gives_its_permits_back_within_the_lease(
    replicas: list[SatapiProcess], upstream: FaultUpstream
) -> None:
    a, b = replicas
    upstream.reset()
    async with httpx.AsyncClient(timeout=30) as client:
        # A holds every permit with downloads that never finish.
        stuck = [
            asyncio.create_task(client.post(f"{a.url}/api/images", json=body("hang", 100 + n)))
            for n in range(CAP)
        ]
        assert await upstream.wait_for_async(lambda: upstream.in_flight("hang") == CAP, 15)
        # B's requests wait for the permits A holds.
        waiting = [
            asyncio.create_task(client.post(f"{b.url}/api/images", json=body("ok:0.2", 200 + n)))
            for n in range(CAP)
        ]
        await asyncio.sleep(1.0)
        assert upstream.requests("ok") == 0
        killed = time.monotonic()
        await asyncio.to_thread(a.kill)
        done = await asyncio.wait_for(asyncio.gather(*waiting), LEASE_S + 10)
        took = time.monotonic() - killed
        await asyncio.gather(*stuck, return_exceptions=True)
    assert [r.status_code for r in done] == [200] * CAP
    assert took < LEASE_S + 3, took
    # They ran together: B got the full cap back, not one permit at a time.
    assert upstream.max_in_flight("ok") == CAP


async def test_redis_down_is_503_then_recovers_by_itself(
    replicas: list[SatapiProcess], upstream: FaultUpstream, redis: RedisServer
) -> None:
    a = replicas[0]
    async with httpx.AsyncClient(timeout=20) as client:
        r = await client.post(f"{a.url}/api/images", json=body("ok", 300))
        assert r.status_code == 200
        cached_id = r.json()["image"]["id"]
        redis.stop()
        for replica in replicas:
            started = time.monotonic()
            r = await client.post(f"{replica.url}/api/images", json=body("ok", 301))
            assert time.monotonic() - started < 10
            assert r.status_code == 503, r.text
            assert r.json()["code"] == "backend_unavailable"
            assert int(r.headers["Retry-After"]) >= 1
            ready = await client.get(f"{replica.url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["redis_reachable"] is False
            assert (await client.get(f"{replica.url}/healthz")).status_code == 200
            # What needs no permit still works: the stored image.
            assert (await client.get(f"{replica.url}/api/images/{cached_id}")).status_code == 200
        metrics = (await client.get(f"{a.url}/metrics")).text
        assert 'satapi_redis_errors_total{operation="acquire"}' in metrics
        redis.start()  # the same port, empty
        deadline = time.monotonic() + 15
        statuses: list[int] = []
        for replica in replicas:
            while True:
                r = await client.post(f"{replica.url}/api/images", json=body("ok", 302))
                statuses.append(r.status_code)
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert r.status_code == 200, statuses
            ready = await client.get(f"{replica.url}/readyz")
            assert ready.status_code == 200, ready.text


async def test_workers_without_redis_share_the_cap(tmp_path: Path, upstream: FaultUpstream) -> None:
    upstream.reset()
    server = SatapiProcess(tmp_path, settings(upstream, tmp_path / "data"), args=["--workers", "2"])
    try:
        server.start(ready_timeout=60)
        responses = await post_split([server.url], [body("ok:0.5", 400 + n) for n in range(24)])
    finally:
        server.stop()
    assert [r.status_code for r in responses] == [200] * 24
    assert upstream.max_in_flight() <= CAP
    assert "2 worker processes without redis_url" in server.log()
    assert "max_concurrent_wms 3 of 6" in server.log()


async def test_with_an_s3_store_identical_requests_make_one_upstream_request(
    tmp_path: Path, upstream: FaultUpstream, redis: RedisServer, moto_s3: MotoServer
) -> None:
    # The production shape: separate data dirs, one bucket, one Redis.
    bucket = moto_s3.create_bucket()
    made = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        conf = settings(
            upstream,
            tmp_path / name / "data",
            redis_url=redis.url,
            redis_lease_s=LEASE_S,
            store_url=f"s3://{bucket}/fleet",
        )
        made.append(SatapiProcess(tmp_path / name, conf, env=aws_env(moto_s3)))
    upstream.reset()
    try:
        for process in made:
            process.start()
        responses = await post_split([r.url for r in made], [body("ok:1", 900)] * 20)
        assert [r.status_code for r in responses] == [200] * 20
        assert upstream.requests() == 1
        downloads = [r.log().count("download ok event=download") for r in made]
        assert sorted(downloads) == [0, 1]
    finally:
        for process in made:
            process.stop()
