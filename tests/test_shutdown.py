"""Graceful shutdown of a real `satapi serve` process on SIGTERM.

* A request in flight when SIGTERM arrives (a 1.5 s WMS answer) completes with 200 within the
  grace period; then the process exits with status 0, leaving no temp file.
* A request stuck on a WMS that never answers (`hang`, or `stall`: half a body, then silence)
  is cut off when a short `--graceful-timeout` runs out: the process still exits 0 within
  grace + a few seconds, the WMS connection is closed, and no temp file survives.
* Cut off, it is answered with the envelope (503 `shutting_down`, `Retry-After`), not
  uvicorn's plain-text 500; a cut-off event stream ends with an `error` event.
* `/readyz` answers 503 from the moment SIGTERM arrives (with `shutdown_delay_s` the server
  keeps serving everything else meanwhile).
* With `--workers 2` the supervisor passes SIGTERM on: in-flight requests finish (200), cut-off
  ones get the envelope, and the supervisor exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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


def start_server(
    workdir: Path, upstream: FaultUpstream, grace: float, *, workers: int = 1
) -> SatapiProcess:
    settings = {
        "default_provider": "fault",
        # Without Redis each of N workers gets 1/N of every cap: room for all the test's requests.
        "providers": {
            "fault": {"url": upstream.wms_url, "default_layer": "ok", "max_concurrency": 16}
        },
        # Long WMS timeouts: only the shutdown may end these requests.
        "wms_read_timeout_s": 30.0,
        "wms_total_timeout_s": 60.0,
    }
    args = ["--workers", str(workers)] if workers > 1 else []
    return SatapiProcess(workdir, settings, graceful_timeout=grace, args=args).start()


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
            # A 64x32 image is held in memory until it is checked (no temp file yet).
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
            # A 64x32 image is held in memory until it is checked (no temp file yet).
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


# --- answers during shutdown ------------------------------------------------------


def assert_no_asgi_traceback(server: SatapiProcess) -> None:
    log = server.log()
    assert "Exception in ASGI application" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


async def test_a_request_cut_off_by_the_shutdown_gets_the_envelope(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    grace = 1.0
    upstream.reset()
    server = start_server(tmp_path, upstream, grace)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            request = asyncio.create_task(
                client.post("/api/images", json=body("hang"), headers={"X-Request-ID": "cut-1"})
            )
            assert await upstream.wait_for_async(lambda: upstream.in_flight("hang") == 1)
            server.terminate()
            r = await request
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/json"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-request-id"] == "cut-1"
        assert r.json() == {
            "success": False,
            "error": r.json()["error"],
            "code": "shutting_down",
            "request_id": "cut-1",
        }
        assert "shutting down" in r.json()["error"]
        assert await asyncio.to_thread(server.wait, grace + EXIT_SLACK_S) == 0
        assert server.temp_files() == []
        assert_no_asgi_traceback(server)
    finally:
        server.stop()


async def test_a_stream_cut_off_by_the_shutdown_ends_with_an_error_event(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    grace = 1.0
    upstream.reset()
    server = start_server(tmp_path, upstream, grace)
    events: list[tuple[str, dict[str, object]]] = []

    async def read_stream(client: httpx.AsyncClient) -> None:
        async with client.stream(
            "POST",
            "/api/vision/analyze_satellite_stream",
            json={**body("hang"), "analyzer": "local"},
        ) as r:
            assert r.status_code == 200
            name = ""
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    events.append((name, json.loads(line.split(":", 1)[1])))

    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            reading = asyncio.create_task(read_stream(client))
            assert await upstream.wait_for_async(lambda: upstream.in_flight("hang") == 1)
            server.terminate()
            await reading
            # The stream ended (not broken off): the last event says why.
        assert events, "no events"
        assert events[-1][0] == "error", events
        data = events[-1][1]
        assert data["code"] == "shutting_down"
        assert isinstance(data["retry_after"], int) and data["retry_after"] >= 1
        assert await asyncio.to_thread(server.wait, grace + EXIT_SLACK_S) == 0
        assert server.temp_files() == []
        assert_no_asgi_traceback(server)
    finally:
        server.stop()


async def test_readyz_is_503_from_the_moment_sigterm_arrives(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    upstream.reset()
    server = SatapiProcess(
        tmp_path,
        {
            "default_provider": "fault",
            "providers": {"fault": {"url": upstream.wms_url, "default_layer": "ok"}},
            "shutdown_delay_s": 1.5,
        },
        graceful_timeout=5.0,
    ).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 200
            signalled = time.monotonic()
            server.terminate()
            await asyncio.sleep(0.05)
            ready = await client.get("/readyz")
            assert time.monotonic() - signalled < 1.0
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"] == {"not_shutting_down": False}
            # Meanwhile everything else is still served, on new connections too.
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as fresh:
                assert (await fresh.get("/healthz")).status_code == 200
                r = await fresh.post("/api/images", json=body("ok"))
                assert r.status_code == 200, r.text
        assert await asyncio.to_thread(server.wait, 1.5 + EXIT_SLACK_S) == 0
        assert_no_asgi_traceback(server)
    finally:
        server.stop()


# --- with --workers N -------------------------------------------------------------------------


async def sigterm_two_workers(
    upstream: FaultUpstream, tmp_path: Path, *, grace: float, mode: str, n: int
) -> list[httpx.Response]:
    """`satapi serve --workers 2`, `n` distinct requests on `mode` in flight (each on its own
    connection, so the kernel spreads them over both workers), then SIGTERM: their answers."""
    upstream.reset()
    server = start_server(tmp_path, upstream, grace, workers=2)
    try:
        # Both workers listening before the requests go out (on a busy machine the second
        # starts later, and the kernel would give every connection to the first).
        deadline = time.monotonic() + 30
        while server.log().count(" ready: ") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(httpx.AsyncClient(base_url=server.url, timeout=30))
                for _ in range(n)
            ]
            requests = [
                asyncio.create_task(c.post("/api/images", json={**body(mode), "width": 64 + i}))
                for i, c in enumerate(clients)
            ]
            kind = mode.split(":")[0]
            assert await upstream.wait_for_async(lambda: upstream.in_flight(kind) == n)
            assert server.log().count(" ready: ") == 2  # both workers are up
            server.terminate()
            answers = await asyncio.gather(*requests)
        code = await asyncio.to_thread(server.wait, grace + EXIT_SLACK_S)
        assert code == 0, server.log()[-3000:]
        assert server.temp_files() == []
        assert_no_asgi_traceback(server)
        return answers
    finally:
        server.stop()


async def test_workers_finish_their_requests_on_sigterm_and_exit_0(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    answers = await sigterm_two_workers(upstream, tmp_path, grace=10.0, mode="ok:1.5", n=6)
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]


async def test_workers_answer_cut_off_requests_with_the_envelope(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    answers = await sigterm_two_workers(upstream, tmp_path, grace=1.0, mode="hang", n=4)
    assert [r.status_code for r in answers] == [503] * 4, [r.text for r in answers]
    assert {r.json()["code"] for r in answers} == {"shutting_down"}
