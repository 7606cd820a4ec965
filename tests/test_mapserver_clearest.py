"""Clearest date against the real MapServer WMS.

The layer `cloudy` (tests/support/mapserver.py) has 13 dates under clouds of known extent, one
of them with 40 % no-data and one whose file is corrupt (MapServer answers a ServiceException).
satapi reaches MapServer through a `CountingProxy`, which records every request that arrives at
the server and the most that were in flight at once.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from satapi.config import Settings
from satapi.selection import CapabilitiesDates, ClearestSpec, Selector
from satapi.wms_client import GetMapRequest
from tests.support.counting_proxy import CountingProxy
from tests.support.mapserver import (
    CLOUDY_BROKEN,
    CLOUDY_LAYER,
    CLOUDY_TIMES,
    SCENE_BBOX,
    BBox,
    MapServerWMS,
    expected_cloud_fraction,
    expected_nodata_fraction,
)
from tests.support.s3server import MotoServer
from tests.test_comparison import parse_sse
from tests.test_images_api import _app_client, permits_back

pytestmark = pytest.mark.mapserver

WEST: BBox = (10.0, 45.0, 12.0, 47.0)
EAST: BBox = (12.0, 45.0, 14.0, 47.0)
# 400 x 200 asked for: previews are 256 x 128 (long edge 256).
FULL: dict[str, Any] = {"bbox": list(SCENE_BBOX), "width": 400, "height": 200}
CAP = 2


def score(date: str, bbox: BBox = SCENE_BBOX) -> float:
    """The known score of a date: cloud + no-data share of the bbox."""
    return expected_cloud_fraction(date, bbox) + expected_nodata_fraction(date, bbox)


@pytest.fixture
async def proxy(mapserver_wms: MapServerWMS) -> AsyncIterator[CountingProxy]:
    async with CountingProxy("127.0.0.1", mapserver_wms.port) as p:
        yield p


def _settings(
    make_settings: Callable[..., Settings],
    proxy: CountingProxy,
    max_concurrency: int = CAP,
    provider: dict[str, Any] | None = None,
    **overrides: Any,
) -> Settings:
    """satapi with MapServer (behind `proxy`; MapServerWMS serves /wms) as provider `ms`;
    `provider` adds to (or replaces) its settings."""
    return make_settings(
        default_provider="ms",
        providers={
            "ms": {
                "url": f"{proxy.url}/wms",
                "version": "1.3.0",
                "default_layer": CLOUDY_LAYER,
                "max_concurrency": max_concurrency,
                **(provider or {}),
            }
        },
        **overrides,
    )


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], proxy: CountingProxy
) -> AsyncIterator[httpx.AsyncClient]:
    async with _app_client(_settings(make_settings, proxy)) as c:
        yield c


async def clearest(
    client: httpx.AsyncClient, window: str, status: int = 200, **fields: Any
) -> dict[str, Any]:
    spec = {
        "window": window,
        **{k: fields.pop(k) for k in ("max_candidates", "max_cloud") if k in fields},
    }
    r = await client.post("/api/images", json={**FULL, **fields, "clearest": spec})
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


def in_window(window: str) -> list[str]:
    start, end = window.split("/")
    return [t for t in CLOUDY_TIMES if start <= t <= end]


# --- choosing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "bbox", "expected"),
    [
        ("2024-05-01/2024-09-30", SCENE_BBOX, "2024-08-02"),  # the one clear date
        ("2024-05-01/2024-06-30", SCENE_BBOX, "2024-06-18"),
        ("2024-07-01/2024-07-31", SCENE_BBOX, "2024-07-03"),
        ("2024-07-01/2024-07-31", WEST, "2024-07-03"),  # its cloud is all in the east
        ("2024-07-01/2024-07-31", EAST, "2024-07-18"),  # ...and this one's all in the west
        ("2024-09-01/2024-09-30", SCENE_BBOX, "2024-09-01"),
    ],
)
async def test_the_chosen_date_is_the_known_clearest(
    client: httpx.AsyncClient, proxy: CountingProxy, window: str, bbox: BBox, expected: str
) -> None:
    body = await clearest(client, window, bbox=list(bbox))
    selection = body["selection"]
    assert selection["window"] == window
    assert selection["chosen"] == expected
    assert body["image"]["time"] == expected  # the full-size image is of the chosen date
    assert (body["image"]["width"], body["image"]["height"]) == (400, 200)
    times = [c["time"] for c in selection["candidates"]]
    assert times == in_window(window)  # every date of the window, sorted
    for c in selection["candidates"]:
        assert c["status"] == "ok" and c["code"] is None
        # Measured on 256 x 128 previews: within a pixel column of the truth.
        assert c["cloud_fraction"] == pytest.approx(
            expected_cloud_fraction(c["time"], bbox), abs=0.01
        )
        assert c["nodata_fraction"] == pytest.approx(
            expected_nodata_fraction(c["time"], bbox), abs=0.01
        )
        assert c["score"] == pytest.approx(c["cloud_fraction"] + c["nodata_fraction"], abs=1e-4)
    best = min(score(t, bbox) for t in times)
    assert score(expected, bbox) == pytest.approx(best)
    # One preview per candidate and one full-size image, all at the server.
    getmaps = proxy.queries("GetMap")
    previews = [q for q in getmaps if q["WIDTH"] == "256"]
    assert sorted(q["TIME"] for q in previews) == times
    assert all(q["HEIGHT"] == "128" and q["LAYERS"] == CLOUDY_LAYER for q in previews)
    assert [q["TIME"] for q in getmaps if q["WIDTH"] == "400"] == [expected]
    assert permits_back(client)


async def test_no_data_counts_like_cloud(client: httpx.AsyncClient) -> None:
    # 2024-08-17 has no cloud but 40 % no-data: 2024-08-02 (clear) wins.
    body = await clearest(client, "2024-08-01/2024-08-31")
    scores = {c["time"]: c["score"] for c in body["selection"]["candidates"]}
    assert scores["2024-08-17"] == pytest.approx(0.4, abs=0.01)
    assert body["selection"]["chosen"] == "2024-08-02"


async def test_a_window_with_one_date(client: httpx.AsyncClient) -> None:
    body = await clearest(client, "2024-08-10/2024-08-20")
    assert [c["time"] for c in body["selection"]["candidates"]] == ["2024-08-17"]
    assert body["selection"]["chosen"] == "2024-08-17"


@pytest.mark.parametrize(
    ("window", "nearest"),
    [
        ("2024-03-01/2024-03-31", ["2024-05-04"]),
        ("2024-08-20/2024-08-30", ["2024-08-17", "2024-09-01"]),
        ("2025-01-01/2025-12-31", ["2024-10-20"]),
    ],
)
async def test_a_window_without_dates_is_422_naming_the_nearest(
    client: httpx.AsyncClient, proxy: CountingProxy, window: str, nearest: list[str]
) -> None:
    body = await clearest(client, window, status=422)
    assert body["code"] == "no_dates_in_window"
    assert body["window"] == window and body["nearest"] == nearest
    assert window in body["error"] and all(t in body["error"] for t in nearest)
    said = "its nearest date is" if len(nearest) == 1 else "its nearest dates are"
    assert f"; {said} {' and '.join(nearest)}." in body["error"]
    assert proxy.queries("GetMap") == []  # nothing was downloaded


async def test_max_cloud_below_every_candidate_is_too_cloudy(client: httpx.AsyncClient) -> None:
    body = await clearest(client, "2024-09-01/2024-09-30", status=422, max_cloud=0.5)
    assert body["code"] == "too_cloudy"
    scores = {c["time"]: c["score"] for c in body["candidates"]}
    assert scores == {
        "2024-09-01": pytest.approx(0.9, abs=0.01),
        "2024-09-16": pytest.approx(1.0, abs=0.01),
    }
    assert "2024-09-01" in body["error"]
    # The same window with a max_cloud the best date meets is fine (and costs no download).
    ok = await clearest(client, "2024-09-01/2024-09-30", max_cloud=0.95)
    assert ok["selection"]["chosen"] == "2024-09-01"


async def test_a_failing_candidate_is_reported_and_the_others_decide(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    window = "2024-10-01/2024-10-31"
    body = await clearest(client, window)
    candidates = {c["time"]: c for c in body["selection"]["candidates"]}
    broken = candidates[CLOUDY_BROKEN]
    assert broken["status"] == "failed" and broken["code"] == "wms_exception"
    assert broken["score"] is None and broken["error"]
    assert body["selection"]["chosen"] == "2024-10-20"  # 30 % beats 70 %
    assert candidates["2024-10-10"]["score"] == pytest.approx(0.7, abs=0.01)
    # A selection with a failure is not cached: a repeat asks again for the failed preview
    # only (the others are stored) and not for the full image.
    proxy.reset()
    again = await clearest(client, window)
    assert again["selection"]["cached"] is False
    assert [q["TIME"] for q in proxy.queries("GetMap")] == [CLOUDY_BROKEN]
    metrics = (await client.get("/metrics")).text
    assert 'satapi_selection_candidates_total{provider="ms",status="failed"} 2.0' in metrics


async def test_max_candidates_thins_evenly(client: httpx.AsyncClient, proxy: CountingProxy) -> None:
    window = "2024-05-01/2024-10-31"  # all 13 dates
    body = await clearest(client, window, max_candidates=4)
    times = [c["time"] for c in body["selection"]["candidates"]]
    # Indices 0, 4, 8 and 12 of the 13: the first, the last and evenly between.
    assert times == ["2024-05-04", "2024-07-03", "2024-09-01", "2024-10-20"]
    assert body["selection"]["chosen"] == "2024-07-03"  # 20 %; 2024-08-02 was not a candidate
    previews = [q["TIME"] for q in proxy.queries("GetMap") if q["WIDTH"] == "256"]
    assert sorted(previews) == times


async def test_time_and_clearest_together_are_422(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/images",
        json={**FULL, "time": "2024-06-18", "clearest": {"window": "2024-05-01/2024-09-30"}},
    )
    assert r.status_code == 422
    assert r.json()["code"] == "validation_error"
    assert "not both" in r.json()["error"]
    for bad in (
        {"window": "2024-05-01"},
        {"window": "2024-09-30/2024-05-01"},
        {"window": "2024-05-01/2024-09-30", "max_candidates": 51},
    ):
        r = await client.post("/api/images", json={**FULL, "clearest": bad})
        assert r.status_code == 422, bad


# --- repeats, storage, caps -----------------------------------------------------------------------


async def test_a_repeat_costs_no_download(
    client: httpx.AsyncClient, proxy: CountingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="satapi.selection")
    window = "2024-05-01/2024-09-30"
    first = await clearest(client, window)
    assert first["selection"]["cached"] is False
    assert len(proxy.queries("GetMap")) == len(in_window(window)) + 1
    proxy.reset()
    second = await clearest(client, window)
    assert proxy.targets == []  # not a single request reached the server
    assert second["selection"]["cached"] is True
    assert second["image"]["cached"] is True
    assert second["selection"]["candidates"] == first["selection"]["candidates"]
    assert second["selection"]["chosen"] == first["selection"]["chosen"] == "2024-08-02"
    metrics = (await client.get("/metrics")).text
    assert 'satapi_selections_total{outcome="ok",provider="ms"} 1.0' in metrics
    assert 'satapi_selections_total{outcome="cached",provider="ms"} 1.0' in metrics
    assert 'satapi_selection_candidates_total{provider="ms",status="ok"} 10.0' in metrics
    assert 'satapi_selection_candidates_total{provider="ms",status="cached"} 10.0' in metrics
    lines = [r for r in caplog.records if r.name == "satapi.selection"]
    assert [(r.outcome, r.chosen, r.candidates) for r in lines] == [  # type: ignore[attr-defined]
        ("ok", "2024-08-02", 10),
        ("cached", "2024-08-02", 10),
    ]


async def test_identical_concurrent_selections_score_once(
    make_settings: Callable[..., Settings], mapserver_wms: MapServerWMS
) -> None:
    async with (
        CountingProxy("127.0.0.1", mapserver_wms.port, delay=0.1) as slow,
        _app_client(_settings(make_settings, slow)) as c,
    ):
        window = "2024-05-01/2024-06-30"
        bodies = await asyncio.gather(*(clearest(c, window) for _ in range(5)))
        assert {b["selection"]["chosen"] for b in bodies} == {"2024-06-18"}
        assert sorted(b["selection"]["cached"] for b in bodies) == [False] + [True] * 4
        # Four previews and one full image: each downloaded once, however many asked.
        assert len(slow.queries("GetMap")) == len(in_window(window)) + 1
        metrics = (await c.get("/metrics")).text
        assert 'satapi_selections_total{outcome="ok",provider="ms"} 1.0' in metrics
        assert 'satapi_selections_total{outcome="cached",provider="ms"} 4.0' in metrics
        assert not c.app.state.resources.selector._locks  # type: ignore[attr-defined]


async def test_previews_are_stored_like_any_image(client: httpx.AsyncClient) -> None:
    body = await clearest(client, "2024-06-01/2024-06-30")
    for c in body["selection"]["candidates"]:
        got = await client.get(f"/api/images/{c['preview_id']}")
        assert got.status_code == 200 and got.headers["etag"] == f'"{c["preview_id"]}"'
        with Image.open(io.BytesIO(got.content)) as img:
            assert img.size == (256, 128)
        meta = (await client.get(f"/api/images/{c['preview_id']}/meta")).json()
        assert meta["image"]["time"] == c["time"] and meta["expires_at"] is None


async def test_preview_fetches_respect_the_provider_cap(
    make_settings: Callable[..., Settings], mapserver_wms: MapServerWMS
) -> None:
    async with (
        CountingProxy("127.0.0.1", mapserver_wms.port, delay=0.2) as slow,
        _app_client(_settings(make_settings, slow)) as c,
    ):
        body = await clearest(c, "2024-05-01/2024-09-30", max_candidates=10)
        assert len(body["selection"]["candidates"]) == 10
        assert len(slow.queries("GetMap")) == 11
        # Concurrent (more than one at once), and never more than the cap at the server.
        assert slow.max_in_flight == CAP
        assert permits_back(c)


async def test_preview_fetches_respect_the_global_cap(
    make_settings: Callable[..., Settings], mapserver_wms: MapServerWMS
) -> None:
    async with CountingProxy("127.0.0.1", mapserver_wms.port, delay=0.2) as slow:
        settings = _settings(make_settings, slow, max_concurrency=8, max_concurrent_wms=3)
        async with _app_client(settings) as c:
            await clearest(c, "2024-05-01/2024-10-31", max_candidates=13)
            assert slow.max_in_flight == 3


async def test_selection_cache_keeps_recent_windows_for_cache_ttl_s_and_old_ones_for_good(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    resources = client.app.state.resources  # type: ignore[attr-defined]
    now = [dt.datetime(2024, 10, 20, 12, tzinfo=dt.UTC).timestamp()]  # "today" is 2024-10-20
    selector = Selector(
        images=resources.images,
        cpu=resources.cpu,
        dates=CapabilitiesDates(resources.images),
        cache_ttl_s=3600,
        clock=lambda: now[0],
    )
    request = GetMapRequest(layer=CLOUDY_LAYER, bbox=SCENE_BBOX, width=256, height=128)
    recent = ClearestSpec(window="2024-10-10/2024-10-20")
    old = ClearestSpec(window="2024-06-01/2024-06-30")
    assert (await selector.plan(None, request, recent)).cache_ttl_s == 3600
    assert (await selector.plan(None, request, old)).cache_ttl_s is None
    first = [await selector.select(None, request, s) for s in (recent, old)]
    assert [c.selection.cached for c in first] == [False, False]
    now[0] += 1800
    assert [(await selector.select(None, request, s)).selection.cached for s in (recent, old)] == [
        True,
        True,
    ]
    now[0] += 1801  # past the TTL: the recent window is scored again (from stored previews)
    proxy.reset()
    assert [(await selector.select(None, request, s)).selection.cached for s in (recent, old)] == [
        False,
        True,
    ]
    assert proxy.queries("GetMap") == []
    now[0] += 10 * 365 * 86400
    assert (await selector.select(None, request, old)).selection.cached is True


# --- vision, streams, comparison, time series -----------------------------------------------------


async def test_vision_analysis_carries_the_selection(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/vision/analyze_satellite",
        json={**FULL, "analyzer": "local", "clearest": {"window": "2024-05-01/2024-06-30"}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["selection"]["chosen"] == body["image"]["time"] == "2024-06-18"
    assert body["analysis"]["metrics"]["cloud_fraction"] == pytest.approx(0.1, abs=0.01)


async def test_vision_stream_sends_selection_before_image(client: httpx.AsyncClient) -> None:
    body = {**FULL, "analyzer": "local", "clearest": {"window": "2024-07-01/2024-07-31"}}
    async with client.stream("POST", "/api/vision/analyze_satellite_stream", json=body) as r:
        assert r.status_code == 200
        events = parse_sse("".join([chunk async for chunk in r.aiter_text()]))
    names = [name for name, _ in events]
    assert names.index("selection") < names.index("image") < names.index("result")
    assert {"stage": "selecting", "candidates": 2} in [d for n, d in events if n == "status"]
    selection = dict(events)["selection"]
    assert selection["chosen"] == "2024-07-03"
    assert [c["time"] for c in selection["candidates"]] == ["2024-07-03", "2024-07-18"]
    assert dict(events)["image"]["time"] == "2024-07-03"
    assert dict(events)["result"]["selection"] == selection


async def test_vision_stream_get_takes_clearest_as_query(client: httpx.AsyncClient) -> None:
    params = {
        "bbox": "10,45,14,47",
        "width": "400",
        "height": "200",
        "analyzer": "local",
        "clearest": "2024-09-01/2024-09-30",
        "max_cloud": "0.5",
    }
    async with client.stream("GET", "/api/vision/analyze_satellite_stream", params=params) as r:
        events = parse_sse("".join([chunk async for chunk in r.aiter_text()]))
    # The window has dates, so the stream starts; the scores are too high: an error event.
    assert [n for n, _ in events][-1] == "error"
    assert events[-1][1]["code"] == "too_cloudy"
    r = await client.get(
        "/api/vision/analyze_satellite_stream",
        params={**params, "clearest": "2023-01-01/2023-12-31"},
    )
    assert r.status_code == 422 and r.json()["code"] == "no_dates_in_window"  # before streaming
    alone = {k: v for k, v in params.items() if k != "clearest"}
    r = await client.get("/api/vision/analyze_satellite_stream", params=alone)
    assert r.status_code == 422 and "max_cloud" in r.json()["error"]


async def test_comparison_resolves_both_windows_concurrently(
    make_settings: Callable[..., Settings], mapserver_wms: MapServerWMS
) -> None:
    body = {
        **FULL,
        "before": {"clearest": {"window": "2024-05-19/2024-05-19"}},
        "after": {"clearest": {"window": "2024-08-17/2024-08-17"}},
    }
    async with (
        CountingProxy("127.0.0.1", mapserver_wms.port, delay=0.3) as slow,
        _app_client(_settings(make_settings, slow)) as c,
    ):
        r = await c.post("/api/comparison/download", json=body)
        assert r.status_code == 200, r.text
        previews = [q for q in slow.queries("GetMap") if q["WIDTH"] == "256"]
        assert sorted(q["TIME"] for q in previews) == ["2024-05-19", "2024-08-17"]
        assert slow.max_in_flight == 2  # the two windows' previews were in flight together
    got = r.json()
    assert got["selection"]["before"]["chosen"] == got["images"]["before"]["time"] == "2024-05-19"
    assert got["selection"]["after"]["chosen"] == got["images"]["after"]["time"] == "2024-08-17"


async def test_comparison_analysis_with_clearest_sides(client: httpx.AsyncClient) -> None:
    body = {
        **FULL,
        "analyzer": "local",
        "before": {"clearest": {"window": "2024-05-01/2024-06-30"}},
        "after": {"time": "2024-08-02"},
    }
    r = await client.post("/api/comparison/analyze", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got["selection"]) == {"before"}
    assert got["selection"]["before"]["chosen"] == got["images"]["before"]["time"] == "2024-06-18"
    assert got["images"]["after"]["time"] == "2024-08-02"
    # A side's failure names the side.
    bad = {**body, "after": {"clearest": {"window": "2023-01-01/2023-01-31"}}}
    r = await client.post("/api/comparison/analyze", json=bad)
    assert r.status_code == 422
    assert r.json()["code"] == "no_dates_in_window" and r.json()["side"] == "after"
    both = {
        **body,
        "after": {"time": "2024-08-02", "clearest": {"window": "2024-05-01/2024-06-30"}},
    }
    assert (await client.post("/api/comparison/analyze", json=both)).status_code == 422


async def test_comparison_stream_sends_a_selection_per_side_before_images(
    client: httpx.AsyncClient,
) -> None:
    body = {
        **FULL,
        "analyzer": "local",
        "before": {"clearest": {"window": "2024-05-01/2024-06-30"}},
        "after": {"clearest": {"window": "2024-07-01/2024-08-31"}},
    }
    async with client.stream("POST", "/api/comparison/analyze_stream", json=body) as r:
        assert r.status_code == 200
        events = parse_sse("".join([chunk async for chunk in r.aiter_text()]))
    names = [name for name, _ in events]
    selections = [d for n, d in events if n == "selection"]
    assert sorted((s["side"], s["chosen"]) for s in selections) == [
        ("after", "2024-08-02"),
        ("before", "2024-06-18"),
    ]
    last_selection = max(i for i, n in enumerate(names) if n == "selection")
    assert last_selection < names.index("image")
    result = dict(events)["result"]
    assert result["selection"]["before"]["chosen"] == "2024-06-18"
    assert result["images"]["after"]["time"] == "2024-08-02"


async def test_monthly_time_series_of_the_clearest_dates(client: httpx.AsyncClient) -> None:
    body = {**FULL, "start": "2024-04-01", "end": "2024-09-30", "clearest_per": "P1M"}
    r = await client.post("/api/timeseries", json=body)
    assert r.status_code == 200, r.text
    points = r.json()["points"]
    assert [p["time"] for p in points] == [f"2024-{m:02d}-01" for m in range(4, 10)]
    assert [p.get("chosen_time") for p in points] == [
        None,  # April has no date
        "2024-05-19",
        "2024-06-18",
        "2024-07-03",
        "2024-08-02",
        "2024-09-01",
    ]
    assert points[0]["code"] == "no_data" and "2024-04-01/2024-04-30" in points[0]["error"]
    assert r.json()["partial"] is True
    for p in points[1:]:
        assert p["image"]["time"] == p["chosen_time"]
        assert p["metrics"]["cloud_fraction"] == pytest.approx(
            expected_cloud_fraction(p["chosen_time"]), abs=0.01
        )
        assert p["selection"]["window"].startswith(p["time"])
    csv_r = await client.post("/api/timeseries", json=body, headers={"Accept": "text/csv"})
    rows = list(csv.DictReader(io.StringIO(csv_r.text)))
    assert [row["chosen_time"] for row in rows] == [
        "",
        "2024-05-19",
        "2024-06-18",
        "2024-07-03",
        "2024-08-02",
        "2024-09-01",
    ]
    assert rows[0]["code"] == "no_data" and rows[0]["status"] == "error"


async def test_time_series_clearest_per_needs_start_and_end(client: httpx.AsyncClient) -> None:
    for bad in (
        {"start": "2024-04-01", "clearest_per": "P1M"},
        {"start": "2024-04-01", "end": "2024-09-30", "step": "P1M", "clearest_per": "P1M"},
        {"times": ["2024-05-04"], "clearest_per": "P1M"},
    ):
        r = await client.post("/api/timeseries", json={**FULL, **bad})
        assert r.status_code == 422, bad


async def test_clearest_on_the_s3_store(
    make_settings: Callable[..., Settings], proxy: CountingProxy, moto_s3: MotoServer
) -> None:
    s3 = {
        "store_url": f"s3://{moto_s3.create_bucket()}/satapi",
        "aws_endpoint_url": moto_s3.url,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing-secret",
        "aws_region": "us-east-1",
        "aws_allow_http": True,
    }
    window = "2024-07-01/2024-07-31"
    async with _app_client(_settings(make_settings, proxy, **s3)) as c:
        first = await clearest(c, window)
        assert first["selection"]["chosen"] == "2024-07-03"
        preview = first["selection"]["candidates"][0]["preview_id"]
        assert (await c.get(f"/api/images/{preview}")).status_code == 200
    # A new process on the same bucket: the previews and the image are there, so the
    # selection (not cached in this process) is scored again without a download.
    proxy.reset()
    async with _app_client(_settings(make_settings, proxy, **s3)) as c:
        again = await clearest(c, window)
    assert again["selection"]["cached"] is False
    assert again["selection"]["candidates"] == first["selection"]["candidates"]
    assert proxy.queries("GetMap") == []
