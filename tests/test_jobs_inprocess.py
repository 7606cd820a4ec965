"""Jobs run in-process (no Redis): submit, follow, results equal to the routes', errors,
cancel, events, and jobs interrupted by a restart."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from satapi.config import Settings
from satapi.jobs.model import JobRecord
from satapi.jobs.stores import open_job_store
from tests.conftest import WMS_URL, png_bytes
from tests.support.job_processes import WebhookReceiver, comparable
from tests.test_images_api import _app_client

BASE: dict[str, Any] = {"bbox": [10.0, 45.0, 14.0, 47.0], "width": 32, "height": 16}
SERIES: dict[str, Any] = {**BASE, "times": ["2024-01-01", "2024-02-01", "2024-03-01"]}


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """In-process jobs that save progress often; webhooks may go to hooks.example.com."""
    return make_settings(job_poll_s=0.05, webhook_allowed_hosts=["hooks.example.com"])


def answer_getmap(wms: respx.MockRouter, delay_s: float = 0.0) -> list[str]:
    """Every GetMap gets a PNG of the asked size (after `delay_s`); returns the TIMEs asked."""
    asked: list[str] = []

    async def reply(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if params.get("REQUEST") != "GetMap":
            return httpx.Response(404)
        asked.append(params.get("TIME", ""))
        await asyncio.sleep(delay_s)
        png = png_bytes(int(params["WIDTH"]), int(params["HEIGHT"]))
        return httpx.Response(200, content=png, headers={"Content-Type": "image/png"})

    wms.get(url__startswith=WMS_URL).mock(side_effect=reply)
    return asked


async def wait_final(client: httpx.AsyncClient, url: str, timeout: float = 20) -> dict[str, Any]:
    """Poll the job until it is final."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = (await client.get(url)).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job not final in {timeout} s: {job}")


async def test_timeseries_job_result_equals_the_route(
    client: httpx.AsyncClient, wms: respx.MockRouter
) -> None:
    answer_getmap(wms)
    submitted = await client.post("/api/jobs", json={"kind": "timeseries", "params": SERIES})
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()["job"]
    assert submitted.headers["location"] == job["url"] == f"/api/jobs/{job['id']}"
    assert job["state"] == "queued" and job["progress"] == {"done": 0, "total": 3}
    assert job["events_url"] == f"/api/jobs/{job['id']}/events"
    final = await wait_final(client, job["url"])
    assert final["state"] == "succeeded", final
    assert final["progress"] == {"done": 3, "total": 3}
    assert final["started_at"] and final["finished_at"] and final["created_at"]
    sync = await client.post("/api/timeseries", json=SERIES)
    assert sync.status_code == 200
    assert comparable(final["result"]) == comparable(sync.json())
    metrics = (await client.get("/metrics")).text
    assert 'satapi_jobs_total{kind="timeseries",state="queued"} 1.0' in metrics
    assert 'satapi_jobs_total{kind="timeseries",state="succeeded"} 1.0' in metrics
    assert 'satapi_job_duration_seconds_count{kind="timeseries",state="succeeded"} 1.0' in metrics
    assert "satapi_jobs_queued 0.0" in metrics


async def test_analyze_and_compare_jobs_equal_their_routes(
    client: httpx.AsyncClient, wms: respx.MockRouter
) -> None:
    answer_getmap(wms)
    vision = {**BASE, "time": "2024-01-01", "analyzer": "local"}
    compare = {
        **BASE,
        "before": {"time": "2024-01-01"},
        "after": {"time": "2024-06-01"},
        "analyzer": "local",
    }
    for kind, params, route in (
        ("analyze", vision, "/api/vision/analyze_satellite"),
        ("compare", compare, "/api/comparison/analyze"),
    ):
        submitted = await client.post("/api/jobs", json={"kind": kind, "params": params})
        assert submitted.status_code == 202, submitted.text
        final = await wait_final(client, submitted.headers["location"])
        assert final["state"] == "succeeded", final
        sync = await client.post(route, json=params)
        assert sync.status_code == 200, sync.text
        assert comparable(final["result"]) == comparable(sync.json())


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"kind": "nope", "params": SERIES}, 422, "validation_error"),
        ({"kind": "timeseries", "params": {**BASE}}, 422, "validation_error"),
        ({"kind": "timeseries", "params": {**SERIES, "bbox": [14, 45, 10, 47]}}, 422, None),
        ({"kind": "timeseries", "params": {**SERIES, "provider": "nope"}}, 422, None),
        ({"kind": "analyze", "params": {**BASE, "analyzer": "claude"}}, 400, None),
        (
            {
                "kind": "timeseries",
                "params": SERIES,
                "webhook": {"url": "https://evil.example.com/x", "secret": "s"},
            },
            422,
            "webhook_not_allowed",
        ),
        (
            {
                "kind": "timeseries",
                "params": SERIES,
                "webhook": {"url": "http://169.254.169.254/latest", "secret": "s"},
            },
            422,
            "webhook_not_allowed",
        ),
        (
            {
                "kind": "timeseries",
                "params": SERIES,
                "webhook": {"url": "https://user@hooks.example.com/x", "secret": "s"},
            },
            422,
            "webhook_not_allowed",
        ),
    ],
)
async def test_bad_submissions_get_the_routes_errors(
    client: httpx.AsyncClient,
    wms: respx.MockRouter,
    body: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    answer_getmap(wms)
    response = await client.post("/api/jobs", json=body)
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["code"] == code
    routes = {"timeseries": "/api/timeseries", "analyze": "/api/vision/analyze_satellite"}
    if code is None:  # the route itself answers the same
        direct = await client.post(routes[body["kind"]], json=body["params"])
        assert direct.status_code == status
        assert direct.json()["code"] == response.json()["code"]


async def test_unknown_job_ids_are_404(client: httpx.AsyncClient) -> None:
    for url in (
        "/api/jobs/0123456789abcdef0123456789abcdef",
        "/api/jobs/..%2e..%2eetc",
        "/api/jobs/not-a-job",
    ):
        for method in ("GET", "DELETE"):
            response = await client.request(method, url)
            assert response.status_code == 404, (method, url, response.text)
            assert response.json()["code"] == "job_not_found"
    events = await client.get("/api/jobs/0123456789abcdef0123456789abcdef/events")
    assert events.status_code == 404 and events.json()["code"] == "job_not_found"


def sse(text: str) -> list[tuple[str, Any]]:
    """(event, data) pairs of an SSE body."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((fields["event"], json.loads(fields["data"])))
    return out


async def test_events_then_result_also_for_a_finished_job(
    client: httpx.AsyncClient, wms: respx.MockRouter
) -> None:
    answer_getmap(wms, delay_s=0.2)
    job = (await client.post("/api/jobs", json={"kind": "timeseries", "params": SERIES})).json()
    live = sse((await client.get(job["job"]["events_url"])).text)
    names = [name for name, _ in live]
    assert names[-1] == "result" and set(names[:-1]) == {"progress"}, names
    assert live[-2][1] == {"state": "succeeded", "done": 3, "total": 3}
    assert len(live) >= 3  # queued/running steps before the end
    again = sse((await client.get(job["job"]["events_url"])).text)
    assert [n for n, _ in again] == ["progress", "result"]
    assert again[1][1] == live[-1][1]


async def test_cancel_stops_the_downloads(client: httpx.AsyncClient, wms: respx.MockRouter) -> None:
    many = {**BASE, "times": [f"2024-{m:02d}-01" for m in range(1, 13)]}
    asked = answer_getmap(wms, delay_s=1.0)
    settings = client.app.state.settings  # type: ignore[attr-defined]
    assert settings.max_concurrent_wms >= 12
    job = (await client.post("/api/jobs", json={"kind": "timeseries", "params": many})).json()
    url = job["job"]["url"]
    while not asked:
        await asyncio.sleep(0.02)
    cancelled = await client.delete(url)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    started = time.monotonic()
    await asyncio.sleep(0.5)
    count = len(asked)
    await asyncio.sleep(1.5)
    assert len(asked) == count  # nothing new was asked for
    final = (await client.get(url)).json()
    assert final["state"] == "cancelled" and "result" not in final
    events = sse((await client.get(job["job"]["events_url"])).text)
    assert events[-1] == ("error", {"code": "cancelled", "error": "The job was cancelled."})
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("backend", ["files", "redis"])
async def test_a_job_interrupted_by_a_restart_is_failed_at_start_up(
    make_settings: Callable[..., Settings], request: pytest.FixtureRequest, backend: str
) -> None:
    with WebhookReceiver() as hook:
        extra: dict[str, Any] = {}
        if backend == "redis":  # in-process jobs, records in Redis
            extra = {"redis_url": request.getfixturevalue("redis_server").url}
            extra["jobs_in_process"] = True
        settings = make_settings(webhook_allowed_hosts=[hook.origin], **extra)
        # Left `running` by a process of this host that is gone (kill -9).
        stale = JobRecord(id="ab" * 16, kind="timeseries", params=SERIES, state="running")
        stale.owner = f"{socket.gethostname()}:999999"
        stale.webhook_url, stale.webhook_secret = hook.url, "s"
        store = open_job_store(settings)
        await store.put(stale)
        await store.close()
        async with _app_client(settings) as c:
            job = (await c.get(f"/api/jobs/{stale.id}")).json()
            for _ in range(100):
                if hook.calls:
                    break
                await asyncio.sleep(0.05)
    assert job["state"] == "failed"
    assert job["error"]["code"] == "interrupted"
    assert job["finished_at"] is not None
    assert [body["error"]["code"] for body in hook.bodies()] == ["interrupted"]


async def test_a_shutdown_marks_its_running_jobs_interrupted(
    settings: Settings, wms: respx.MockRouter
) -> None:
    asked = answer_getmap(wms, delay_s=5.0)
    async with _app_client(settings, wms=wms) as c:
        job = (await c.post("/api/jobs", json={"kind": "timeseries", "params": SERIES})).json()
        while not asked:
            await asyncio.sleep(0.02)
    store = open_job_store(settings)
    record = await store.get(job["job"]["id"])
    assert record is not None and record.state == "failed"
    assert record.error is not None and record.error["code"] == "interrupted"
