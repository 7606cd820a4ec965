"""GET /metrics: download outcomes, cache hits, route templates, gauges, tokens, several apps."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from prometheus_client.parser import text_string_to_metric_families

from satapi.app import create_app
from satapi.config import Settings
from satapi.observability.metrics import Metrics
from tests.conftest import WMS_URL, png_bytes
from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.support.wms_mock import mock_transport

BODY = {"bbox": [10, 45, 14, 47], "width": 64, "height": 32}
SERVICE_EXCEPTION = b"""<?xml version="1.0" encoding="UTF-8"?>
<ServiceExceptionReport version="1.3.0" xmlns="http://www.opengis.net/ogc">
  <ServiceException code="LayerNotDefined">Invalid layer(s) given.</ServiceException>
</ServiceExceptionReport>"""


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by (name, labels)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample, or None when it is absent."""
    return samples(text).get((name, frozenset(labels.items())))


async def scrape(client: httpx.AsyncClient) -> str:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def wms_answer(request: httpx.Request) -> httpx.Response:
    """A PNG of the requested size, or a ServiceException for LAYERS=broken."""
    if request.url.params["LAYERS"] == "broken":
        return httpx.Response(
            200, content=SERVICE_EXCEPTION, headers={"content-type": "application/vnd.ogc.se_xml"}
        )
    w, h = int(request.url.params["WIDTH"]), int(request.url.params["HEIGHT"])
    return httpx.Response(200, content=png_bytes(w, h), headers={"content-type": "image/png"})


@asynccontextmanager
async def app_client(
    settings: Settings, wms: respx.Router | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, http_transport=mock_transport(wms))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://satapi.test"
        ) as c,
    ):
        c.app = app  # type: ignore[attr-defined]
        yield c


async def test_miss_hit_and_service_exception_are_counted(
    client: httpx.AsyncClient, wms: respx.Router
) -> None:
    wms.get(WMS_URL).mock(side_effect=wms_answer)
    first = await client.post("/api/images", json=BODY)
    second = await client.post("/api/images", json=BODY)
    broken = await client.post("/api/images", json={**BODY, "layer": "broken"})
    assert (first.status_code, second.status_code, broken.status_code) == (200, 200, 502)
    size = first.json()["image"]["bytes"]

    text = await scrape(client)
    downloads = "satapi_wms_downloads_total"
    assert value(text, downloads, provider="test", outcome="ok") == 1
    assert value(text, downloads, provider="test", outcome="cache_hit") == 1
    assert value(text, downloads, provider="test", outcome="wms_exception") == 1
    assert value(text, downloads, provider="test", outcome="shared") is None
    assert value(text, "satapi_wms_download_bytes_total", provider="test") == size
    # Two downloads went upstream (the hit did not): both waited for a permit, both timed.
    assert value(text, "satapi_wms_queue_wait_seconds_count", provider="test") == 2
    assert (
        value(text, "satapi_wms_download_duration_seconds_count", provider="test", outcome="ok")
        == 1
    )
    http = "satapi_http_requests_total"
    assert value(text, http, method="POST", route="/api/images", status="200") == 2
    assert value(text, http, method="POST", route="/api/images", status="502") == 1
    assert (
        value(
            text, "satapi_http_request_duration_seconds_count", method="POST", route="/api/images"
        )
        == 3
    )
    # Scrape-time state: the store holds one image; the permits are all back.
    assert value(text, "satapi_store_files") == 1
    assert value(text, "satapi_store_size_bytes") == size
    assert value(text, "satapi_store_evictions_total") == 0
    assert value(text, "satapi_wms_permits_capacity", provider="test") == 50
    assert value(text, "satapi_wms_permits_in_use", provider="test") == 0
    assert value(text, "satapi_wms_global_permits_capacity") == 20
    assert value(text, "satapi_wms_global_permits_in_use") == 0
    assert value(text, "satapi_wms_global_permits_waiting") == 0


async def test_route_labels_are_templates_never_raw_paths(
    client: httpx.AsyncClient, wms: respx.Router
) -> None:
    wms.get(WMS_URL).mock(side_effect=wms_answer)
    image_id = (await client.post("/api/images", json=BODY)).json()["image"]["id"]
    assert (await client.get(f"/api/images/{image_id}")).status_code == 200
    assert (await client.get(f"/api/images/{image_id}/meta")).status_code == 200
    assert (await client.get("/api/images/" + "a" * 64)).status_code == 404
    assert (await client.get("/no/such/path/12345")).status_code == 404
    assert (await client.get("/docs/assets/swagger/swagger-ui.css")).status_code == 200

    text = await scrape(client)
    routes = {
        dict(labels)["route"]
        for (name, labels) in samples(text)
        if name == "satapi_http_requests_total"
    }
    assert {
        "/api/images",
        "/api/images/{image_id}",
        "/api/images/{image_id}/meta",
        "<unmatched>",
        "/docs/assets/swagger/{path}",
    } <= routes
    assert (
        value(
            text,
            "satapi_http_requests_total",
            method="GET",
            route="/api/images/{image_id}",
            status="404",
        )
        == 1
    )
    assert image_id not in text and "a" * 64 not in text and "12345" not in text


async def test_two_apps_in_one_process_do_not_collide(
    make_settings: Callable[..., Settings], wms: respx.Router
) -> None:
    wms.get(WMS_URL).mock(side_effect=wms_answer)
    async with (
        app_client(make_settings(), wms=wms) as one,
        app_client(make_settings(data_dir=make_settings().data_dir / "two"), wms=wms) as two,
    ):
        assert (await one.post("/api/images", json=BODY)).status_code == 200
        first, second = await scrape(one), await scrape(two)
    downloads = "satapi_wms_downloads_total"
    assert value(first, downloads, provider="test", outcome="ok") == 1
    assert value(second, downloads, provider="test", outcome="ok") is None
    assert value(second, "satapi_store_files") == 0


async def test_gauges_show_permits_and_waiters_at_scrape_time(
    make_settings: Callable[..., Settings], wms: respx.Router
) -> None:
    release = asyncio.Event()
    started = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal started
        started += 1
        await release.wait()
        return wms_answer(request)

    wms.get(WMS_URL).mock(side_effect=slow)
    async with app_client(make_settings(max_concurrent_wms=1), wms=wms) as c:
        bodies = [{**BODY, "bbox": [10, 45, 14, 47 - i * 0.01]} for i in range(3)]
        tasks = [asyncio.create_task(c.post("/api/images", json=b)) for b in bodies]
        for _ in range(500):
            text = await scrape(c)
            if started == 1 and value(text, "satapi_wms_global_permits_waiting") == 2:
                break
            await asyncio.sleep(0.01)
        assert value(text, "satapi_wms_global_permits_in_use") == 1
        assert value(text, "satapi_wms_global_permits_waiting") == 2
        assert value(text, "satapi_wms_permits_in_use", provider="test") == 1
        # Provider permits are plentiful: its two waiters wait for the global one.
        assert value(text, "satapi_wms_permits_waiting", provider="test") == 2
        assert value(text, "satapi_wms_downloads_in_progress") == 3
        release.set()
        assert {r.status_code for r in await asyncio.gather(*tasks)} == {200}
        text = await scrape(c)
    assert value(text, "satapi_wms_global_permits_in_use") == 0
    assert value(text, "satapi_wms_downloads_in_progress") == 0
    # Two of the three waited for the single global permit.
    assert value(text, "satapi_wms_queue_wait_seconds_count", provider="test") == 3
    assert value(text, "satapi_wms_queue_wait_seconds_bucket", provider="test", le="0.01") == 1


async def test_shed_requests_and_shared_downloads_are_counted(
    make_settings: Callable[..., Settings], wms: respx.Router
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.2)
        return wms_answer(request)

    wms.get(WMS_URL).mock(side_effect=slow)
    async with app_client(make_settings(max_concurrent_wms=1, max_waiting=1), wms=wms) as c:
        bodies = [{**BODY, "bbox": [10, 45, 14, 47 - i * 0.01]} for i in range(4)]
        results = await asyncio.gather(*(c.post("/api/images", json=b) for b in bodies))
        shed = sum(r.status_code == 503 for r in results)
        assert shed >= 1
        same = await asyncio.gather(
            *(c.post("/api/images", json=BODY | {"width": 65}) for _ in range(3))
        )
        assert {r.status_code for r in same} == {200}
        text = await scrape(c)
    assert value(text, "satapi_wms_shed_total", provider="test") == shed
    assert value(text, "satapi_wms_downloads_total", provider="test", outcome="shed") == shed
    assert value(text, "satapi_wms_downloads_total", provider="test", outcome="shared") == 2
    ok = value(text, "satapi_wms_downloads_total", provider="test", outcome="ok")
    assert ok == len(bodies) - shed + 1


async def test_analyses_and_ai_tokens_are_counted(
    make_settings: Callable[..., Settings], wms: respx.Router, fake_anthropic: FakeAnthropic
) -> None:
    wms.get(WMS_URL).mock(side_effect=wms_answer)
    wms.route(host="127.0.0.1").pass_through()
    settings = make_settings(
        anthropic_api_key="sk-ant-metrics-test-key",
        anthropic_base_url=fake_anthropic.base_url,
        anthropic_max_retries=0,
    )
    fake_anthropic.script(Reply(input_tokens=1500, output_tokens=321, model="claude-fake-1"))
    analyze = "/api/vision/analyze_satellite"
    async with app_client(settings, wms=wms) as c:
        for _ in range(2):  # the second is served from the result store
            r = await c.post(analyze, json={**BODY, "analyzer": "claude"})
            assert r.status_code == 200, r.text
        assert (await c.post(analyze, json={**BODY, "analyzer": "local"})).status_code == 200
        text = await scrape(c)
    claude = {"analyzer": "claude", "model": "claude-fake-1"}
    assert value(text, "satapi_analyses_total", **claude, outcome="ok") == 1
    assert value(text, "satapi_analyses_total", **claude, outcome="cached") == 1
    assert value(text, "satapi_ai_input_tokens_total", **claude) == 1500
    assert value(text, "satapi_ai_output_tokens_total", **claude) == 321
    assert value(text, "satapi_analyses_total", analyzer="local", model="", outcome="ok") == 1
    assert value(text, "satapi_ai_input_tokens_total", analyzer="local", model="") is None
    assert value(text, "satapi_analysis_duration_seconds_count", **claude) == 2


async def test_metrics_route_is_open_and_not_in_the_schema(
    make_settings: Callable[..., Settings],
) -> None:
    async with app_client(make_settings(api_keys="k1")) as c:
        assert (await c.get("/api/providers")).status_code == 401
        assert (await c.get("/metrics")).status_code == 200
        assert "/metrics" not in (await c.get("/openapi.json")).json()["paths"]


def test_multiprocess_mode_sums_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings]
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert make_settings().prometheus_multiproc_dir == tmp_path
    worker = textwrap.dedent(
        """
        import os
        from pathlib import Path
        from satapi.observability.events import DownloadSettled, RequestFinished
        from satapi.observability.metrics import Metrics
        m = Metrics(multiprocess_dir=Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        m.observe(DownloadSettled(provider="test", layer="scene", outcome="ok", duration_s=0.2,
                                  nbytes=100, queue_wait_s=0.01))
        m.observe(RequestFinished(method="GET", route="/api/images/{image_id}", status=200,
                                  duration_s=0.01))
        """
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for _ in range(2):  # two "workers", each its own process and files
        subprocess.run([sys.executable, "-c", worker], env=env, check=True, timeout=60)
    assert len(list(tmp_path.glob("*.db"))) >= 2
    body, content_type = Metrics(multiprocess_dir=tmp_path).render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert value(text, "satapi_wms_downloads_total", provider="test", outcome="ok") == 2
    assert value(text, "satapi_wms_download_bytes_total", provider="test") == 200
    assert (
        value(
            text,
            "satapi_http_requests_total",
            method="GET",
            route="/api/images/{image_id}",
            status="200",
        )
        == 2
    )
