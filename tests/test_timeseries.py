"""POST /api/timeseries in-process against a mocked WMS (respx): concurrency, dates, errors, CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import respx
from PIL import Image

from satapi.config import Settings
from satapi.routers.timeseries import METRIC_COLUMNS
from tests.conftest import WMS_URL
from tests.test_images_api import SERVICE_EXCEPTION, SlowWMS, _app_client, permits_back

BBOX = [10.0, 45.0, 14.0, 47.0]
BASE: dict[str, Any] = {"bbox": BBOX, "width": 40, "height": 20}
GREEN = (34, 139, 34)
BROWN = (150, 110, 70)

CAPABILITIES = b"""<?xml version="1.0" encoding="UTF-8"?>
<WMS_Capabilities version="1.3.0" xmlns="http://www.opengis.net/wms"
    xmlns:xlink="http://www.w3.org/1999/xlink">
  <Service>
    <Name>WMS</Name>
    <Title>mocked WMS</Title>
    <OnlineResource xlink:href="http://wms.test/wms"/>
  </Service>
  <Capability>
    <Request>
      <GetCapabilities>
        <Format>text/xml</Format>
        <DCPType><HTTP><Get><OnlineResource xlink:href="http://wms.test/wms?"/></Get></HTTP>
        </DCPType>
      </GetCapabilities>
      <GetMap>
        <Format>image/png</Format>
        <DCPType><HTTP><Get><OnlineResource xlink:href="http://wms.test/wms?"/></Get></HTTP>
        </DCPType>
      </GetMap>
    </Request>
    <Exception><Format>XML</Format></Exception>
    <Layer>
      <Title>root</Title>
      <CRS>EPSG:4326</CRS>
      <Layer queryable="0">
        <Name>scene</Name>
        <Title>A scene with two dates</Title>
        <CRS>EPSG:4326</CRS>
        <EX_GeographicBoundingBox>
          <westBoundLongitude>10</westBoundLongitude>
          <eastBoundLongitude>14</eastBoundLongitude>
          <southBoundLatitude>45</southBoundLatitude>
          <northBoundLatitude>47</northBoundLatitude>
        </EX_GeographicBoundingBox>
        <Dimension name="time" units="ISO8601">2024-01-01,2024-06-01</Dimension>
      </Layer>
    </Layer>
  </Capability>
</WMS_Capabilities>
"""


def scene_png(width: int, height: int, when: str) -> bytes:
    """Green; the left half brown from June 2024 on."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[...] = GREEN
    if when >= "2024-06":
        img[:, : width // 2] = BROWN
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def scene_response(request: httpx.Request, _n: int) -> httpx.Response:
    params = request.url.params
    data = scene_png(int(params["WIDTH"]), int(params["HEIGHT"]), params.get("TIME", ""))
    return httpx.Response(200, content=data, headers={"content-type": "image/png"})


def getmap_times(route: respx.Route) -> list[str]:
    return [call.request.url.params["TIME"] for call in route.calls]


@pytest.fixture
def caps(wms: respx.Router) -> respx.Route:
    """GetCapabilities, answered 404 unless a test says otherwise (so dates are not checked)."""
    return wms.get(WMS_URL, params__contains={"REQUEST": "GetCapabilities"}, name="caps").mock(
        return_value=httpx.Response(404, content=b"no capabilities here")
    )


@pytest.fixture
def upstream(wms: respx.Router, caps: respx.Route) -> SlowWMS:
    """GetMap: the scene at once, as respx route `getmap`."""
    side_effect = SlowWMS(responder=scene_response)
    wms.get(WMS_URL, name="getmap").mock(side_effect=side_effect)
    return side_effect


# --- concurrency ---------------------------------------------------------------------------------


async def test_twelve_dates_four_at_a_time(
    make_settings: Callable[..., Settings], wms: respx.Router, caps: respx.Route
) -> None:
    settings = make_settings(max_concurrent_wms=4)  # the provider allows 50
    slow = SlowWMS(latency=0.5, responder=scene_response)
    wms.get(WMS_URL, name="getmap").mock(side_effect=slow)
    times = [f"2024-{month:02d}-01" for month in range(1, 13)]
    async with _app_client(settings, wms=wms) as c:
        started = time.perf_counter()
        r = await c.post("/api/timeseries", json={**BASE, "times": times})
        elapsed = time.perf_counter() - started
        assert r.status_code == 200, r.text
        assert permits_back(c)
    body = r.json()
    assert body["success"] is True and body["partial"] is False
    assert [p["time"] for p in body["points"]] == times
    # 12 dates, 4 at a time, 0.5 s each: at least three rounds, and fewer than twelve (the
    # in-flight count below is the exact check; wall time only rules out serial downloads).
    assert 1.3 <= elapsed < 6.0
    assert slow.calls == 12 and slow.max_in_flight == 4
    for point in body["points"]:
        assert point["error"] is None and point["code"] is None
        assert point["image"]["time"] == point["time"]
        assert set(METRIC_COLUMNS) <= set(point["metrics"])
        expected_bare = 0.5 if point["time"] >= "2024-06" else 0.0
        assert point["metrics"]["bare_fraction"] == pytest.approx(expected_bare, abs=0.03)
        assert point["metrics"]["vegetation_fraction"] == pytest.approx(1 - expected_bare, abs=0.03)


async def test_repeat_series_is_served_from_the_store(
    client: httpx.AsyncClient, upstream: SlowWMS
) -> None:
    body = {**BASE, "times": ["2024-01-01", "2024-06-01"]}
    first = (await client.post("/api/timeseries", json=body)).json()
    second = (await client.post("/api/timeseries", json=body)).json()
    assert upstream.calls == 2
    assert [p["image"]["cached"] for p in second["points"]] == [True, True]
    assert [p["metrics"] for p in second["points"]] == [p["metrics"] for p in first["points"]]


# --- dates ---------------------------------------------------------------------------------------


async def test_monthly_range_keeps_month_ends_in_order(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS
) -> None:
    body = {**BASE, "start": "2024-01-31", "end": "2024-06-30", "step": "P1M"}
    r = await client.post("/api/timeseries", json=body)
    assert r.status_code == 200, r.text
    expected = ["2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30", "2024-05-31", "2024-06-30"]
    assert [p["time"] for p in r.json()["points"]] == expected
    assert sorted(getmap_times(wms["getmap"])) == expected


async def test_sub_day_steps_work_with_date_times(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS
) -> None:
    body = {**BASE, "start": "2024-01-01T00:00:00Z", "end": "2024-01-01T12:00:00Z", "step": "PT6H"}
    r = await client.post("/api/timeseries", json=body)
    assert r.status_code == 200, r.text
    expected = ["2024-01-01T00:00:00Z", "2024-01-01T06:00:00Z", "2024-01-01T12:00:00Z"]
    assert [p["time"] for p in r.json()["points"]] == expected
    assert sorted(getmap_times(wms["getmap"])) == expected


async def test_range_end_is_inclusive_and_not_overshot(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS
) -> None:
    body = {**BASE, "start": "2024-01-01", "end": "2024-03-15", "step": "P1M"}
    r = await client.post("/api/timeseries", json=body)
    assert r.status_code == 200, r.text
    assert [p["time"] for p in r.json()["points"]] == ["2024-01-01", "2024-02-01", "2024-03-01"]


@pytest.mark.parametrize(
    "dates",
    [
        {"times": [f"2024-01-{day:02d}" for day in range(1, 6)]},
        {"start": "2024-01-01", "end": "2024-12-01", "step": "P1M"},
    ],
    ids=["times", "range"],
)
async def test_too_many_dates_is_422_before_any_request(
    make_settings: Callable[..., Settings],
    wms: respx.Router,
    upstream: SlowWMS,
    caps: respx.Route,
    dates: dict[str, Any],
) -> None:
    async with _app_client(make_settings(max_timeseries_dates=4), wms=wms) as c:
        r = await c.post("/api/timeseries", json={**BASE, **dates})
    assert r.status_code == 422, r.text
    error = r.json()
    assert error["success"] is False and error["code"] == "too_many_dates"
    assert "4" in error["error"] and "dates" in error["error"]
    assert not wms["getmap"].called and not caps.called


async def test_the_limit_itself_is_allowed(
    make_settings: Callable[..., Settings], upstream: SlowWMS, wms: respx.Router
) -> None:
    async with _app_client(make_settings(max_timeseries_dates=4), wms=wms) as c:
        body = {**BASE, "start": "2024-01-01", "end": "2024-04-01", "step": "P1M"}
        r = await c.post("/api/timeseries", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["points"]) == 4


@pytest.mark.parametrize(
    "extra",
    [
        {"times": ["2024-01-01"], "start": "2024-01-01"},
        {"times": ["2024-01-01"], "start": "2024-01-01", "end": "2024-02-01", "step": "P1M"},
        {"start": "2024-01-01", "end": "2024-02-01"},  # no step
        {},  # neither
        {"times": ["January"]},
        {"start": "2024-01-01", "end": "2024-02-01", "step": "monthly"},
    ],
)
async def test_bad_date_selection_is_422(
    client: httpx.AsyncClient,
    wms: respx.Router,
    upstream: SlowWMS,
    caps: respx.Route,
    extra: dict[str, Any],
) -> None:
    r = await client.post("/api/timeseries", json={**BASE, **extra})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error"
    assert not wms["getmap"].called and not caps.called


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"start": "2024-03-01", "end": "2024-01-01", "step": "P1M"}, "end"),
        ({"start": "2024-01-01", "end": "2024-03-01", "step": "P0D"}, "positive"),
        ({"times": []}, "at least one"),
        # Regression: a date plus 12 hours is the same date, so every date came twice.
        ({"start": "2024-01-01", "end": "2024-01-03", "step": "PT12H"}, "whole days"),
        ({"start": "2024-01-01", "end": "2024-01-03", "step": "P1DT12H"}, "whole days"),
    ],
)
async def test_impossible_ranges_are_422(
    client: httpx.AsyncClient,
    wms: respx.Router,
    upstream: SlowWMS,
    extra: dict[str, Any],
    needle: str,
) -> None:
    r = await client.post("/api/timeseries", json={**BASE, **extra})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_request" and needle in r.json()["error"]
    assert not wms["getmap"].called


# --- partial failure -----------------------------------------------------------------------------


def _failing_on(bad: str, kind: str) -> Callable[[httpx.Request, int], httpx.Response]:
    def respond(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.params.get("TIME") != bad:
            return scene_response(request, n)
        if kind == "http500":
            return httpx.Response(500, content=b"boom", headers={"content-type": "text/plain"})
        return httpx.Response(200, content=SERVICE_EXCEPTION, headers={"content-type": "text/xml"})

    return respond


@pytest.mark.parametrize(
    ("kind", "code"), [("http500", "upstream_error"), ("service_exception", "wms_exception")]
)
async def test_one_failed_date_makes_a_partial_series_in_date_order(
    client: httpx.AsyncClient, wms: respx.Router, caps: respx.Route, kind: str, code: str
) -> None:
    upstream = SlowWMS(latency=0.05, responder=_failing_on("2024-03-01", kind))
    wms.get(WMS_URL, name="getmap").mock(side_effect=upstream)
    times = ["2024-06-01", "2024-03-01", "2024-01-01", "2024-12-01"]  # out of order
    r = await client.post("/api/timeseries", json={**BASE, "times": times})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["partial"] is True
    assert [p["time"] for p in body["points"]] == sorted(times)
    for point in body["points"]:
        if point["time"] == "2024-03-01":
            assert point["code"] == code and point["error"]
            assert point["image"] is None and point["metrics"] is None
        else:
            assert point["error"] is None and point["code"] is None
            assert point["image"]["time"] == point["time"]
            assert point["metrics"]["vegetation_fraction"] > 0.4
    assert upstream.calls == 4
    assert permits_back(client)


async def test_duplicate_dates_are_fetched_once(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS
) -> None:
    times = ["2024-02-01", "2024-01-01", "2024-02-01"]
    r = await client.post("/api/timeseries", json={**BASE, "times": times})
    assert r.status_code == 200, r.text
    assert [p["time"] for p in r.json()["points"]] == ["2024-01-01", "2024-02-01"]
    assert upstream.calls == 2


# --- capabilities TIME values --------------------------------------------------------------------


async def test_dates_the_layer_lacks_are_reported_not_fetched(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS, caps: respx.Route
) -> None:
    caps.mock(
        return_value=httpx.Response(200, content=CAPABILITIES, headers={"content-type": "text/xml"})
    )
    times = ["2024-01-01", "2024-03-01", "2024-06-01"]
    r = await client.post("/api/timeseries", json={**BASE, "times": times})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["partial"] is True
    points = {p["time"]: p for p in body["points"]}
    missing = points["2024-03-01"]
    assert missing["code"] == "time_not_available"
    assert "scene" in missing["error"] and "2024-03-01" in missing["error"]
    assert missing["image"] is None and missing["metrics"] is None
    for t in ("2024-01-01", "2024-06-01"):
        assert points[t]["error"] is None and points[t]["metrics"] is not None
    assert sorted(getmap_times(wms["getmap"])) == ["2024-01-01", "2024-06-01"]  # none for March
    assert caps.call_count == 1
    sent = caps.calls.last.request.url.params
    assert sent["SERVICE"] == "WMS" and sent["VERSION"] == "1.3.0"

    # Capabilities are cached: the next series does not ask again.
    again = await client.post("/api/timeseries", json={**BASE, "times": ["2024-02-01"]})
    assert again.json()["points"][0]["code"] == "time_not_available"
    assert caps.call_count == 1


async def test_a_date_time_on_an_offered_day_is_available(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS, caps: respx.Route
) -> None:
    caps.mock(
        return_value=httpx.Response(200, content=CAPABILITIES, headers={"content-type": "text/xml"})
    )
    r = await client.post("/api/timeseries", json={**BASE, "times": ["2024-06-01T10:30:00Z"]})
    assert r.status_code == 200, r.text
    assert r.json()["partial"] is False
    assert getmap_times(wms["getmap"]) == ["2024-06-01T10:30:00Z"]


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(404, content=b"not found"),
        httpx.Response(200, content=SERVICE_EXCEPTION, headers={"content-type": "text/xml"}),
        httpx.Response(200, content=b"<html>nope</html>", headers={"content-type": "text/html"}),
    ],
    ids=["http404", "service_exception", "not_xml"],
)
async def test_without_capabilities_dates_are_not_checked(
    client: httpx.AsyncClient,
    wms: respx.Router,
    upstream: SlowWMS,
    caps: respx.Route,
    failure: httpx.Response,
) -> None:
    caps.mock(return_value=failure)
    times = ["2024-01-01", "2024-03-01"]
    r = await client.post("/api/timeseries", json={**BASE, "times": times})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["partial"] is False
    assert [p["code"] for p in body["points"]] == [None, None]
    assert sorted(getmap_times(wms["getmap"])) == times
    assert caps.call_count == 1
    # The failure is remembered for a while: the next series does not ask again.
    again = await client.post("/api/timeseries", json={**BASE, "times": ["2024-05-01"]})
    assert again.status_code == 200, again.text
    assert caps.call_count == 1


# --- CSV -----------------------------------------------------------------------------------------


async def test_csv_has_the_metric_columns_and_marks_error_rows(
    client: httpx.AsyncClient, wms: respx.Router, caps: respx.Route
) -> None:
    upstream = SlowWMS(responder=_failing_on("2024-02-01", "http500"))
    wms.get(WMS_URL, name="getmap").mock(side_effect=upstream)
    times = ["2024-03-01", "2024-01-01", "2024-02-01"]
    r = await client.post(
        "/api/timeseries", json={**BASE, "times": times}, headers={"Accept": "text/csv"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(r.text))
    assert reader.fieldnames is not None
    assert set(METRIC_COLUMNS) <= set(reader.fieldnames)
    assert {"time", "status", "image_id", "code", "error"} <= set(reader.fieldnames)
    rows = list(reader)
    assert [row["time"] for row in rows] == sorted(times)
    by_time = {row["time"]: row for row in rows}
    bad = by_time["2024-02-01"]
    assert bad["status"] == "error" and bad["code"] == "upstream_error" and bad["error"]
    assert bad["image_id"] == "" and all(bad[c] == "" for c in METRIC_COLUMNS)
    for t in ("2024-01-01", "2024-03-01"):
        row = by_time[t]
        assert row["status"] == "ok" and row["code"] == "" and row["error"] == ""
        assert len(row["image_id"]) == 64
        assert float(row["vegetation_fraction"]) == pytest.approx(1.0)
        assert all(0.0 <= float(row[c]) <= 1.0 for c in METRIC_COLUMNS)

    # Without the header the same request answers JSON.
    plain = await client.post("/api/timeseries", json={**BASE, "times": times})
    assert plain.headers["content-type"].startswith("application/json")
    assert plain.json()["partial"] is True


async def test_series_and_image_requests_share_downloads(
    client: httpx.AsyncClient, wms: respx.Router, caps: respx.Route
) -> None:
    slow = SlowWMS(latency=0.3, responder=scene_response)
    wms.get(WMS_URL, name="getmap").mock(side_effect=slow)
    series, single = await asyncio.gather(
        client.post("/api/timeseries", json={**BASE, "times": ["2024-01-01", "2024-06-01"]}),
        client.post("/api/images", json={**BASE, "time": "2024-06-01"}),
    )
    assert series.status_code == 200 and single.status_code == 200
    assert slow.calls == 2
    june = next(p for p in series.json()["points"] if p["time"] == "2024-06-01")
    assert june["image"]["id"] == single.json()["image"]["id"]
