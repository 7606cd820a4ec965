"""Graceful shutdown of a real `satapi serve` process on SIGTERM.

* A request in flight when SIGTERM arrives (a 1.5 s WMS answer) completes with 200 within the
  grace period; then the process exits with status 0, leaving no temp file.
* A request stuck on a WMS that never answers (`hang`, or `stall`: half a body, then silence)
  is cut off when a short `--graceful-timeout` runs out: the process still exits 0 within
  grace + a few seconds, the WMS connection is closed, and no temp file survives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fault_upstream import FaultUpstream, SatapiProcess

EXIT_SLACK_S = 5.0  # start-up of the shutdown, lifespan close, interpreter exit


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultUpstream]:
    with FaultUpstream() as server:
        yield server


def start_server(workdir: Path, upstream: FaultUpstream, grace: float) -> SatapiProcess:
    settings = {
        "default_provider": "fault",
        "providers": {"fault": {"url": upstream.wms_url, "default_layer": "ok"}},
        # Long WMS timeouts: only the shutdown may end these requests.
        "wms_read_timeout_s": 30.0,
        "wms_total_timeout_s": 60.0,
    }
    return SatapiProcess(workdir, settings, graceful_timeout=grace).start()


def body(layer: str) -> dict[str, object]:
    return {"layer": layer, "bbox": [10, 45, 14, 47], "width": 64, "height": 32}


async def test_sigterm_lets_the_in_flight_request_finish(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    grace = 10.0
    upstream.reset()
    server = start_server(tmp_path, upstream, grace)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            request = asyncio.create_task(client.post("/api/images", json=body("ok:1.5")))
            assert await upstream.wait_for_async(lambda: upstream.in_flight("ok") == 1)
            assert server.temp_files(), "the download should be writing its temp file"
            signalled = time.monotonic()
            server.terminate()
            r = await request
            answered = time.monotonic() - signalled
        assert r.status_code == 200, r.text
        assert answered < grace
        code = await asyncio.to_thread(server.wait, grace + EXIT_SLACK_S)
        assert code == 0, server.log()[-3000:]
        assert server.temp_files() == []
        image_id = r.json()["image"]["id"]
        kept = {p.name for p in server.files()}
        assert {f"{image_id}.png", f"{image_id}.json"} <= kept  # committed, not lost
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["hang", "stall"])
async def test_sigterm_with_a_stuck_download_exits_within_the_grace_period(
    upstream: FaultUpstream, tmp_path: Path, mode: str
) -> None:
    grace = 1.0
    upstream.reset()
    server = start_server(tmp_path, upstream, grace)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            request = asyncio.create_task(client.post("/api/images", json=body(mode)))
            assert await upstream.wait_for_async(lambda: upstream.in_flight(mode) == 1)
            assert server.temp_files(), "the download should be writing its temp file"
            signalled = time.monotonic()
            server.terminate()
            code = await asyncio.to_thread(server.wait, grace + EXIT_SLACK_S)
            exited = time.monotonic() - signalled
            try:
                r = await request
            except httpx.TransportError:
                pass  # the connection was closed without an answer: acceptable
            else:
                assert r.status_code != 200
        assert code == 0, server.log()[-3000:]
        assert exited < grace + EXIT_SLACK_S
        assert server.temp_files() == []
        assert await upstream.wait_for_async(lambda: upstream.closed_by_client(mode) == 1)
    finally:
        server.stop()
