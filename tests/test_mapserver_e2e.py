"""satapi against the real MapServer WMS: capabilities, versions, CRSs, TIME, errors, analysis.

The app runs in-process; its WMS client makes real HTTP requests to MapServer on 127.0.0.1.
Two providers point at the same server: `ms` speaks WMS 1.3.0 (the default), `ms111` 1.1.1.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from satapi.config import Settings
from tests.support.mapserver import (
    CLEARCUT,
    CLEARCUT_BOX,
    DEFAULT_TIME,
    FOREST,
    SCENE_BBOX,
    SCENE_HEIGHT,
    SCENE_WIDTH,
    STATIC_LAYER,
    TIMES,
    WATER,
    BBox,
    MapServerWMS,
    expected_fractions,
    expected_image,
    lonlat_to_mercator,
)

pytestmark = pytest.mark.mapserver

EARLY, LATE = TIMES
Pixels = NDArray[np.uint8]
# Asymmetric on purpose (3 deg x 1.4 deg, not centred): axis swaps or flips would show.
BBOX: BBox = (10.5, 45.4, 13.5, 46.8)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], mapserver_wms: MapServerWMS) -> Settings:
    """MapServer as the default provider (1.3.0), and the same server again as 1.1.1."""
    common = {"url": mapserver_wms.url, "default_layer": mapserver_wms.layer}
    return make_settings(
        default_provider="ms",
        providers={
            "ms": {**common, "version": "1.3.0", "title": "MapServer (WMS 1.3.0)"},
            "ms111": {**common, "version": "1.1.1", "title": "MapServer (WMS 1.1.1)"},
        },
    )


async def fetch_image(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> tuple[dict[str, Any], Pixels]:
    """POST /api/images, then GET the stored bytes; returns (image metadata, RGB array)."""
    r = await client.post("/api/images", json=body)
    assert r.status_code == 200, r.text
    meta = r.json()["image"]
    got = await client.get(meta["url"])
    assert got.status_code == 200
    assert got.headers["content-type"] == meta["content_type"] == "image/png"
    with Image.open(io.BytesIO(got.content)) as img:
        assert img.size == (body["width"], body["height"])
        pixels = np.asarray(img.convert("RGB"))
    return meta, pixels


def mismatch(actual: Pixels, expected: Pixels, tolerance: int = 0) -> float:
    """Fraction of pixels differing from `expected` by more than `tolerance` levels."""
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16)).max(axis=-1)
    return float((diff > tolerance).mean())


def pixel_at(lon: float, lat: float, bbox: BBox, width: int, height: int) -> tuple[int, int]:
    """(row, col) of the pixel holding lon/lat in an image of lon/lat `bbox`."""
    col = int((lon - bbox[0]) / (bbox[2] - bbox[0]) * width)
    row = int((bbox[3] - lat) / (bbox[3] - bbox[1]) * height)
    return row, col


# --- capabilities ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["ms", "ms111"])
async def test_layers_list_scene_with_both_dates_and_the_default(
    client: httpx.AsyncClient, provider: str
) -> None:
    r = await client.get(f"/api/providers/{provider}/layers")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["provider"] == provider
    layers = {layer["name"]: layer for layer in body["layers"]}
    assert {"scene", STATIC_LAYER} <= set(layers)
    scene = layers["scene"]
    assert scene["times"] == list(TIMES)
    assert scene["default_time"] == DEFAULT_TIME
    assert {"EPSG:4326", "EPSG:3857"} <= set(scene["crs"])
    assert scene["bbox"] == pytest.approx(list(SCENE_BBOX))
    assert layers[STATIC_LAYER]["times"] == []


async def test_providers_list_both_versions(client: httpx.AsyncClient) -> None:
    providers = {p["name"]: p for p in (await client.get("/api/providers")).json()["providers"]}
    assert providers["ms"]["version"] == "1.3.0" and providers["ms"]["default"] is True
    assert providers["ms111"]["version"] == "1.1.1" and providers["ms111"]["default"] is False


# --- GetMap through satapi ------------------------------------------------------------------------


async def test_111_and_130_give_the_same_image_in_epsg4326(client: httpx.AsyncClient) -> None:
    body = {"bbox": list(BBOX), "crs": "EPSG:4326", "width": 300, "height": 140, "time": LATE}
    meta130, v130 = await fetch_image(client, {**body, "provider": "ms"})
    meta111, v111 = await fetch_image(client, {**body, "provider": "ms111"})
    assert meta130["id"] != meta111["id"]  # different requests, stored separately
    assert meta130["provider"] == "ms" and meta111["provider"] == "ms111"
    assert meta130["bbox"] == list(BBOX) == meta111["bbox"]
    assert mismatch(v130, v111, tolerance=3) == 0.0
    expected = expected_image(BBOX, 300, 140, date=LATE)
    assert mismatch(v130, expected, tolerance=3) < 0.02
    # Spot checks away from edges: the clearing is south-west, the water east.
    for lon, lat, colour in [(11.0, 45.7, CLEARCUT), (13.0, 46.0, WATER), (11.5, 46.6, FOREST)]:
        row, col = pixel_at(lon, lat, BBOX, 300, 140)
        assert tuple(v130[row, col]) == colour, (lon, lat)
        assert tuple(v111[row, col]) == colour, (lon, lat)


@pytest.mark.parametrize("provider", ["ms", "ms111"])
async def test_crs84(client: httpx.AsyncClient, provider: str) -> None:
    # CRS:84 is lon/lat in every version; the 1.1.1 server takes it as an SRS too.
    body = {"bbox": list(BBOX), "crs": "CRS:84", "width": 300, "height": 140, "time": LATE}
    _, pixels = await fetch_image(client, {**body, "provider": provider})
    assert mismatch(pixels, expected_image(BBOX, 300, 140, date=LATE), tolerance=3) < 0.02


@pytest.mark.parametrize("provider", ["ms", "ms111"])
async def test_epsg3857_with_a_bbox_in_metres(client: httpx.AsyncClient, provider: str) -> None:
    x0, y0 = lonlat_to_mercator(SCENE_BBOX[0], SCENE_BBOX[1])
    x1, y1 = lonlat_to_mercator(SCENE_BBOX[2], SCENE_BBOX[3])
    bbox = (x0, y0, x1, y1)
    body = {"bbox": list(bbox), "crs": "EPSG:3857", "width": 400, "height": 300, "time": LATE}
    meta, pixels = await fetch_image(client, {**body, "provider": provider})
    assert meta["bbox"] == pytest.approx(list(bbox))
    expected = expected_image(bbox, 400, 300, date=LATE, crs="EPSG:3857")
    assert mismatch(pixels, expected, tolerance=3) < 0.02


@pytest.mark.parametrize("provider", ["ms", "ms111"])
async def test_time_picks_the_date(client: httpx.AsyncClient, provider: str) -> None:
    body = {
        "provider": provider,
        "bbox": list(SCENE_BBOX),
        "width": SCENE_WIDTH,
        "height": SCENE_HEIGHT,
    }
    centre = pixel_at(
        (CLEARCUT_BOX[0] + CLEARCUT_BOX[2]) / 2,
        (CLEARCUT_BOX[1] + CLEARCUT_BOX[3]) / 2,
        SCENE_BBOX,
        SCENE_WIDTH,
        SCENE_HEIGHT,
    )
    for date, colour in [(EARLY, FOREST), (LATE, CLEARCUT)]:
        meta, pixels = await fetch_image(client, {**body, "time": date})
        assert meta["time"] == date
        assert tuple(pixels[centre]) == colour, date
        assert mismatch(pixels, expected_image(date=date)) == 0.0


async def test_unknown_layer_is_422_listing_the_capabilities_layers(
    client: httpx.AsyncClient,
) -> None:
    for provider in ("ms", "ms111"):
        body = {"provider": provider, "layer": "no_such_layer", "bbox": list(BBOX)}
        r = await client.post("/api/images", json=body)
        assert r.status_code == 422, r.text
        error = r.json()
        assert error["code"] == "unknown_layer"
        assert {"scene", "scene_static", "cloudy"} <= set(error["layers"])
        assert "no_such_layer" in error["error"] and "scene" in error["error"]


# --- analysis -------------------------------------------------------------------------------------


@pytest.mark.parametrize("date", TIMES)
async def test_local_analysis_of_the_whole_scene_matches_the_known_fractions(
    client: httpx.AsyncClient, date: str
) -> None:
    body = {
        "bbox": list(SCENE_BBOX),
        "width": SCENE_WIDTH,
        "height": SCENE_HEIGHT,
        "time": date,
        "analyzer": "local",
    }
    r = await client.post("/api/vision/analyze_satellite", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["image"]["provider"] == "ms" and answer["image"]["time"] == date
    metrics = answer["analysis"]["metrics"]
    expected = expected_fractions(date)
    assert metrics["vegetation_fraction"] == pytest.approx(expected[FOREST], abs=0.05)
    assert metrics["water_fraction"] == pytest.approx(expected[WATER], abs=0.05)
    assert metrics["bare_fraction"] == pytest.approx(expected.get(CLEARCUT, 0.0), abs=0.05)
    assert metrics["cloud_fraction"] == 0.0 and metrics["nodata_fraction"] == 0.0
    assert "heuristic" in answer["analysis"]["text"].lower()
