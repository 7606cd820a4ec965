"""Requests checked against the layer's capabilities, against the real MapServer WMS.

The `scene` layer (tests/support/mapserver.py) covers lon 10..14, lat 45..47 with TIME
2024-01-01,2024-06-01 in EPSG:4326, CRS:84 and EPSG:3857; `scene_static` has no TIME dimension.
satapi reaches MapServer through a `CountingProxy`, so a test sees every GetMap that arrives:
a refused request must send none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from satapi.config import Settings
from tests.support.counting_proxy import CountingProxy
from tests.support.mapserver import (
    CLEARCUT_BOX,
    LAYER,
    MARKER_BOX,
    SCENE_BBOX,
    STATIC_LAYER,
    MapServerWMS,
    lonlat_to_mercator,
)
from tests.test_comparison import parse_sse
from tests.test_images_api import _app_client
from tests.test_mapserver_clearest import _settings as clearest_settings

pytestmark = pytest.mark.mapserver

SCENE: dict[str, Any] = {"bbox": list(SCENE_BBOX), "width": 200, "height": 100}
# The west half of this box is outside the layer (lon 8..10), the east half is lon 10..12:
# the forest half of the scene, with the marker and (from 2024-06-01) the clear-cut on it.
HALF_WEST: list[float] = [8.0, 45.0, 12.0, 47.0]


def _area(box: tuple[float, float, float, float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


COVERED_AREA = 2.0 * 2.0  # lon 10..12, lat 45..47
MARKER_SHARE = _area(MARKER_BOX) / COVERED_AREA  # red: no land-cover class ("other")
CLEARCUT_SHARE = _area(CLEARCUT_BOX) / COVERED_AREA  # brown: bare


@pytest.fixture
async def proxy(mapserver_wms: MapServerWMS) -> AsyncIterator[CountingProxy]:
    async with CountingProxy("127.0.0.1", mapserver_wms.port) as p:
        yield p


def _settings(
    make_settings: Callable[..., Settings], proxy: CountingProxy, **provider: Any
) -> Settings:
    """Provider `ms` (MapServer behind `proxy`) with `scene` as its default layer."""
    return clearest_settings(make_settings, proxy, provider={"default_layer": LAYER, **provider})


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], proxy: CountingProxy
) -> AsyncIterator[httpx.AsyncClient]:
    async with _app_client(_settings(make_settings, proxy)) as c:
        yield c


async def refused(
    client: httpx.AsyncClient, proxy: CountingProxy, path: str, body: dict[str, Any], code: str
) -> dict[str, Any]:
    """POST `body`, expect 422 `code`, and check that no GetMap reached the server."""
    proxy.reset()
    r = await client.post(path, json=body)
    assert r.status_code == 422, r.text
    error: dict[str, Any] = r.json()
    assert error["code"] == code, error
    assert proxy.queries("GetMap") == [], "a refused request sent a GetMap"
    return error


# --- dates ----------------------------------------------------------------------------------------


async def test_a_date_the_layer_lacks_is_refused_naming_the_nearest(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    error = await refused(
        client, proxy, "/api/images", {**SCENE, "time": "2031-01-01"}, "time_not_available"
    )
    assert error["nearest"] == {"before": "2024-06-01", "after": None}
    assert "2031-01-01" in error["error"] and "2024-06-01" in error["error"]
    between = await refused(
        client, proxy, "/api/images", {**SCENE, "time": "2024-03-01"}, "time_not_available"
    )
    assert between["nearest"] == {"before": "2024-01-01", "after": "2024-06-01"}


async def test_an_offered_date_is_fetched(client: httpx.AsyncClient, proxy: CountingProxy) -> None:
    proxy.reset()
    r = await client.post("/api/images", json={**SCENE, "time": "2024-01-01"})
    assert r.status_code == 200, r.text
    assert r.json()["image"]["coverage"] == 1.0
    assert [q["TIME"] for q in proxy.queries("GetMap")] == ["2024-01-01"]


async def test_a_time_on_a_layer_without_time_dimension_is_refused(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    body = {**SCENE, "layer": STATIC_LAYER, "time": "2024-06-01"}
    error = await refused(client, proxy, "/api/images", body, "time_not_available")
    assert f"layer '{STATIC_LAYER}' has no time dimension; leave time out" in error["error"]
    proxy.reset()
    r = await client.post("/api/images", json={**SCENE, "layer": STATIC_LAYER})
    assert r.status_code == 200, r.text


async def test_vision_and_both_streams_refuse_with_json_before_any_event(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    body = {**SCENE, "time": "2031-01-01", "analyzer": "local"}
    await refused(client, proxy, "/api/vision/analyze_satellite", body, "time_not_available")
    await refused(client, proxy, "/api/vision/analyze_satellite_stream", body, "time_not_available")
    proxy.reset()
    r = await client.get(
        "/api/vision/analyze_satellite_stream",
        params={"bbox": "10,45,14,47", "time": "2031-01-01", "analyzer": "local"},
    )
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["code"] == "time_not_available"
    assert proxy.queries("GetMap") == []


async def test_comparison_names_the_side_whose_date_is_missing(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    body = {
        **SCENE,
        "before": {"time": "2024-01-01"},
        "after": {"time": "2031-01-01"},
        "analyzer": "local",
    }
    download = {k: v for k, v in body.items() if k != "analyzer"}
    for path, sent in (("/api/comparison/analyze", body), ("/api/comparison/download", download)):
        error = await refused(client, proxy, path, sent, "time_not_available")
        assert error["side"] == "after"
        assert "after" in error["error"]
    stream = await refused(
        client, proxy, "/api/comparison/analyze_stream", body, "time_not_available"
    )
    assert stream["side"] == "after"


async def test_tiles_refuse_a_missing_date_and_an_unknown_layer(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    proxy.reset()
    r = await client.get("/api/tiles/ms/5/16/11.png", params={"time": "2031-01-01"})
    assert r.status_code == 422 and r.json()["code"] == "time_not_available"
    r = await client.get("/api/tiles/ms/5/16/11.png", params={"layer": "nope"})
    assert r.status_code == 422 and r.json()["code"] == "unknown_layer"
    assert proxy.queries("GetMap") == []
    r = await client.get("/api/tiles/ms/5/16/11.png", params={"time": "2024-06-01"})
    assert r.status_code == 200
    assert len(proxy.queries("GetMap")) == 1


async def test_check_time_false_sends_the_date_anyway(
    make_settings: Callable[..., Settings], proxy: CountingProxy
) -> None:
    async with _app_client(_settings(make_settings, proxy, check_time=False)) as c:
        proxy.reset()
        r = await c.post("/api/images", json={**SCENE, "time": "2031-01-01"})
        assert r.status_code == 200, r.text
        assert [q["TIME"] for q in proxy.queries("GetMap")] == ["2031-01-01"]


async def test_timeseries_checks_the_layer_and_keeps_per_date_errors(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    body = {**SCENE, "layer": "nope", "times": ["2024-01-01"]}
    await refused(client, proxy, "/api/timeseries", body, "unknown_layer")
    proxy.reset()
    r = await client.post(
        "/api/timeseries", json={**SCENE, "bbox": HALF_WEST, "times": ["2024-01-01", "2031-01-01"]}
    )
    assert r.status_code == 200, r.text
    first, missing = r.json()["points"]
    assert missing["code"] == "time_not_available"
    assert first["image"]["coverage"] == 0.5
    assert first["metrics"]["vegetation_fraction"] == pytest.approx(1 - MARKER_SHARE, abs=0.02)
    assert len(proxy.queries("GetMap")) == 1


# --- layers and CRSs ------------------------------------------------------------------------------


async def test_an_unknown_layer_is_refused_listing_the_layers(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    error = await refused(client, proxy, "/api/images", {**SCENE, "layer": "nope"}, "unknown_layer")
    assert {"scene", "scene_static", "cloudy"} <= set(error["layers"])
    assert error["layers_url"] == "/api/providers/ms/layers"
    assert "'nope'" in error["error"] and "scene" in error["error"]
    await refused(
        client,
        proxy,
        "/api/vision/analyze_satellite_stream",
        {**SCENE, "layer": "nope", "analyzer": "local"},
        "unknown_layer",
    )


async def test_a_crs_the_layer_lacks_is_refused_listing_its_crss(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    body = {**SCENE, "crs": "EPSG:2154", "bbox": [600000, 6000000, 700000, 6100000]}
    error = await refused(client, proxy, "/api/images", body, "unsupported_crs")
    assert set(error["supported"]) == {"CRS:84", "EPSG:3857", "EPSG:4326"}
    assert "EPSG:2154" in error["error"] and "EPSG:3857" in error["error"]


async def test_degrees_sent_as_web_mercator_metres_are_refused(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    body = {**SCENE, "crs": "EPSG:3857", "bbox": [-180, -90, 180, 90]}
    error = await refused(client, proxy, "/api/images", body, "invalid_bbox")
    assert "EPSG:4326" in error["error"] and "metres" in error["error"]


# --- extents --------------------------------------------------------------------------------------


async def test_a_bbox_outside_the_layer_is_refused_naming_its_extent(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    body = {**SCENE, "bbox": [100, 45, 104, 47], "analyzer": "local"}
    error = await refused(client, proxy, "/api/vision/analyze_satellite", body, "outside_layer")
    assert error["layer_extent"] == list(SCENE_BBOX)
    assert "lon 10..14, lat 45..47" in error["error"]
    del body["analyzer"]
    await refused(client, proxy, "/api/images", body, "outside_layer")


@pytest.mark.parametrize(
    ("date", "vegetation", "bare"),
    [
        ("2024-01-01", 1 - MARKER_SHARE, 0.0),
        ("2024-06-01", 1 - MARKER_SHARE - CLEARCUT_SHARE, CLEARCUT_SHARE),
    ],
)
async def test_half_covered_image_is_measured_over_its_covered_half(
    client: httpx.AsyncClient, date: str, vegetation: float, bare: float
) -> None:
    body = {"bbox": HALF_WEST, "width": 400, "height": 200, "time": date, "analyzer": "local"}
    r = await client.post("/api/vision/analyze_satellite", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["image"]["coverage"] == 0.5
    metrics = answer["analysis"]["metrics"]
    # MapServer paints the uncovered half white (cloud-like): it must count as no data.
    assert metrics["nodata_fraction"] == pytest.approx(0.5, abs=0.01)
    assert metrics["cloud_fraction"] == pytest.approx(0.0, abs=0.01)
    assert metrics["vegetation_fraction"] == pytest.approx(vegetation, abs=0.02)
    assert metrics["bare_fraction"] == pytest.approx(bare, abs=0.02)
    assert metrics["water_fraction"] == pytest.approx(0.0, abs=0.01)
    assert "50 % of the frame has no data" in answer["analysis"]["text"]


async def test_half_covered_in_web_mercator(client: httpx.AsyncClient) -> None:
    x0, y0 = lonlat_to_mercator(12.0, 45.0)
    x1, y1 = lonlat_to_mercator(16.0, 47.0)
    body = {
        "bbox": [x0, y0, x1, y1],
        "crs": "EPSG:3857",
        "width": 200,
        "height": 100,
        "analyzer": "local",
    }
    r = await client.post("/api/vision/analyze_satellite", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["image"]["coverage"] == pytest.approx(0.5, abs=0.001)
    metrics = answer["analysis"]["metrics"]
    assert metrics["water_fraction"] == pytest.approx(1.0, abs=0.02)
    assert metrics["cloud_fraction"] == pytest.approx(0.0, abs=0.01)


async def test_half_covered_comparison_counts_the_covered_half(
    client: httpx.AsyncClient,
) -> None:
    body = {
        "bbox": HALF_WEST,
        "width": 400,
        "height": 200,
        "before": {"time": "2024-01-01"},
        "after": {"time": "2024-06-01"},
        "analyzer": "local",
    }
    r = await client.post("/api/comparison/analyze", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["images"]["before"]["coverage"] == 0.5
    assert answer["images"]["after"]["coverage"] == 0.5
    metrics = answer["analysis"]["metrics"]
    assert metrics["valid_fraction"] == pytest.approx(0.5, abs=0.01)
    # Of the covered half, the clear-cut is the change (vegetation to bare).
    assert metrics["changed_fraction"] == pytest.approx(CLEARCUT_SHARE, abs=0.02)
    assert metrics["after"]["bare_fraction"] == pytest.approx(CLEARCUT_SHARE, abs=0.02)


async def test_stream_result_carries_coverage(client: httpx.AsyncClient) -> None:
    body = {"bbox": HALF_WEST, "width": 200, "height": 100, "analyzer": "local"}
    r = await client.post("/api/vision/analyze_satellite_stream", json=body)
    assert r.status_code == 200
    events = dict(parse_sse(r.text))
    assert events["image"]["coverage"] == 0.5
    assert events["result"]["image"]["coverage"] == 0.5
