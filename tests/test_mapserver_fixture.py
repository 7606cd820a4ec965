"""The real MapServer WMS test fixture, exercised with plain httpx (no satapi code)."""

from __future__ import annotations

import io
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.mapserver import (
    BACKGROUND,
    CLEARCUT,
    CLEARCUT_BOX,
    DEFAULT_TIME,
    FOREST,
    MARKER,
    SCENE_BBOX,
    SCENE_HEIGHT,
    SCENE_WIDTH,
    STATIC_DATE,
    STATIC_LAYER,
    TIMES,
    WATER,
    BBox,
    MapServerWMS,
    colour_fractions,
    expected_colour,
    expected_fractions,
    expected_image,
    lonlat_to_mercator,
    scene_pixels,
)

pytest_plugins = ["tests.support.mapserver_plugin"]

mapserver = pytest.mark.mapserver

WMS_NS = {"wms": "http://www.opengis.net/wms"}
EARLY, LATE = TIMES


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def get_image(
    client: httpx.Client, wms: MapServerWMS, params: dict[str, str], mode: str = "RGB"
) -> np.ndarray:
    """GET ``params`` and decode the image; fails with MapServer's message if it is not one."""
    resp = client.get(wms.url, params=params)
    assert resp.status_code == 200
    ctype = resp.headers["content-type"]
    assert ctype.startswith("image/"), f"{ctype}: {resp.text[:1000]}"
    with Image.open(io.BytesIO(resp.content)) as img:
        assert img.format == ("JPEG" if "jpeg" in ctype else "PNG")
        return np.asarray(img.convert(mode))


def mismatch(actual: np.ndarray, expected: np.ndarray, tolerance: int = 0) -> float:
    """Fraction of pixels differing from ``expected`` by more than ``tolerance`` levels."""
    diff = np.abs(actual[..., :3].astype(np.int16) - expected.astype(np.int16)).max(axis=-1)
    return float((diff > tolerance).mean())


def pixel_of(lon: float, lat: float, bbox: BBox, w: int, h: int) -> tuple[int, int]:
    """(row, col) of the pixel containing lon/lat in an image of ``bbox`` (x/y order)."""
    col = int((lon - bbox[0]) / (bbox[2] - bbox[0]) * w)
    row = int((bbox[3] - lat) / (bbox[3] - bbox[1]) * h)
    return row, col


# --------------------------------------------------------------------------- #
# The scene description itself (no server needed)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("date", TIMES)
def test_scene_constants_are_consistent(date: str) -> None:
    pixels = scene_pixels(date)
    assert pixels.shape == (SCENE_HEIGHT, SCENE_WIDTH, 3)
    assert np.array_equal(expected_image(date=date), pixels)
    fractions = colour_fractions(pixels, [FOREST, WATER, MARKER, CLEARCUT])
    for colour, fraction in expected_fractions(date).items():
        assert fractions[colour] == pytest.approx(fraction)
    assert fractions[CLEARCUT] == pytest.approx(0.2 if date >= LATE else 0.0)
    assert expected_colour(10.1, 46.9, date) == MARKER  # north-west corner
    assert expected_colour(10.1, 45.1, date) == FOREST  # south-west corner
    assert expected_colour(13.9, 46.9, date) == WATER
    assert expected_colour(9.0, 46.0, date) == BACKGROUND


# --------------------------------------------------------------------------- #
# GetCapabilities
# --------------------------------------------------------------------------- #


@mapserver
def test_capabilities_130_advertise_time_dimension(
    mapserver_wms: MapServerWMS, client: httpx.Client
) -> None:
    resp = client.get(
        mapserver_wms.url,
        params={"SERVICE": "WMS", "REQUEST": "GetCapabilities", "VERSION": "1.3.0"},
    )
    assert resp.status_code == 200
    root = ET.fromstring(resp.content)
    assert root.tag == "{http://www.opengis.net/wms}WMS_Capabilities"
    layers = {
        layer.findtext("wms:Name", namespaces=WMS_NS): layer
        for layer in root.iterfind(".//wms:Layer", WMS_NS)
    }
    assert {"scene", STATIC_LAYER} <= set(layers)
    dim = layers["scene"].find("wms:Dimension", WMS_NS)
    assert dim is not None
    assert dim.get("name") == "time"
    assert dim.get("default") == DEFAULT_TIME
    assert (dim.text or "").strip().split(",") == list(TIMES)
    assert layers[STATIC_LAYER].find("wms:Dimension", WMS_NS) is None

    crs = {e.text for e in root.iterfind(".//wms:Layer/wms:CRS", WMS_NS)}
    assert {"EPSG:4326", "CRS:84", "EPSG:3857"} <= crs
    formats = [e.text for e in root.iterfind(".//wms:GetMap/wms:Format", WMS_NS)]
    assert {"image/png", "image/jpeg"} <= set(formats)
    href = root.find(".//wms:GetMap//wms:OnlineResource", WMS_NS)
    assert href is not None
    assert href.get("{http://www.w3.org/1999/xlink}href", "").startswith(mapserver_wms.url)
    geo = layers["scene"].find("wms:EX_GeographicBoundingBox", WMS_NS)
    assert geo is not None
    box = tuple(
        float(geo.findtext(f"wms:{tag}", namespaces=WMS_NS) or "nan")
        for tag in (
            "westBoundLongitude",
            "southBoundLatitude",
            "eastBoundLongitude",
            "northBoundLatitude",
        )
    )
    assert box == SCENE_BBOX


@mapserver
def test_capabilities_111_advertise_time_extent(
    mapserver_wms: MapServerWMS, client: httpx.Client
) -> None:
    resp = client.get(
        mapserver_wms.url,
        params={"SERVICE": "WMS", "REQUEST": "GetCapabilities", "VERSION": "1.1.1"},
    )
    assert resp.status_code == 200
    root = ET.fromstring(resp.content)
    assert root.tag == "WMT_MS_Capabilities"
    scene = next(lyr for lyr in root.iter("Layer") if lyr.findtext("Name") == "scene")
    extent = scene.find("Extent")
    assert extent is not None
    assert extent.get("name") == "time"
    assert (extent.text or "").strip() == ",".join(TIMES)


# --------------------------------------------------------------------------- #
# GetMap: axis order, CRSs, formats
# --------------------------------------------------------------------------- #


@mapserver
def test_getmap_111_full_scene_is_pixel_exact(
    mapserver_wms: MapServerWMS, client: httpx.Client
) -> None:
    params = mapserver_wms.getmap_params(version="1.1.1", width=SCENE_WIDTH, height=SCENE_HEIGHT)
    assert params["BBOX"] == "10.0,45.0,14.0,47.0"
    img = get_image(client, mapserver_wms, params)
    assert np.array_equal(img, scene_pixels(DEFAULT_TIME))


@mapserver
def test_getmap_111_and_130_agree(mapserver_wms: MapServerWMS, client: httpx.Client) -> None:
    bbox = (10.5, 45.5, 13.5, 46.8)
    v111 = get_image(client, mapserver_wms, mapserver_wms.getmap_params(version="1.1.1", bbox=bbox))
    params = mapserver_wms.getmap_params(version="1.3.0", bbox=bbox)
    assert params["CRS"] == "EPSG:4326"
    assert params["BBOX"] == "45.5,10.5,46.8,13.5"  # lat/lon in 1.3.0
    v130 = get_image(client, mapserver_wms, params)
    assert mismatch(v130, v111, tolerance=3) == 0.0
    assert mismatch(v111, expected_image(bbox, 256, 256)) < 0.02
    # Known positions: the marker is north-west, water east, the clearing south-west.
    bbox_w, bbox_h = 256, 256
    for lon, lat, colour in [
        (10.7, 46.7, MARKER),
        (13.0, 46.0, WATER),
        (11.0, 45.7, CLEARCUT),
        (11.5, 46.6, FOREST),
    ]:
        row, col = pixel_of(lon, lat, bbox, bbox_w, bbox_h)
        assert tuple(v130[row, col]) == colour, (lon, lat)


@mapserver
def test_getmap_130_lonlat_order_is_silently_wrong(
    mapserver_wms: MapServerWMS, client: httpx.Client
) -> None:
    """The classic client bug: EPSG:4326 in 1.3.0 with lon/lat order -> no error, empty map."""
    params = mapserver_wms.getmap_params(version="1.3.0")
    params["BBOX"] = "10.0,45.0,14.0,47.0"  # lon/lat, wrong for 1.3.0 EPSG:4326
    img = get_image(client, mapserver_wms, params)
    assert colour_fractions(img, [BACKGROUND])[BACKGROUND] == 1.0


@mapserver
def test_getmap_crs84_uses_lonlat_order(mapserver_wms: MapServerWMS, client: httpx.Client) -> None:
    params = mapserver_wms.getmap_params(
        version="1.3.0", crs="CRS:84", width=SCENE_WIDTH, height=SCENE_HEIGHT
    )
    assert params["BBOX"] == "10.0,45.0,14.0,47.0"
    img = get_image(client, mapserver_wms, params)
    assert np.array_equal(img, scene_pixels(DEFAULT_TIME))


@mapserver
@pytest.mark.parametrize("version", ["1.1.1", "1.3.0"])
def test_getmap_epsg3857(mapserver_wms: MapServerWMS, client: httpx.Client, version: str) -> None:
    x0, y0 = lonlat_to_mercator(SCENE_BBOX[0], SCENE_BBOX[1])
    x1, y1 = lonlat_to_mercator(SCENE_BBOX[2], SCENE_BBOX[3])
    bbox = (x0, y0, x1, y1)
    params = mapserver_wms.getmap_params(
        version=version, crs="EPSG:3857", bbox=bbox, width=400, height=300
    )
    img = get_image(client, mapserver_wms, params)
    expected = expected_image(bbox, 400, 300, crs="EPSG:3857")
    assert mismatch(img, expected) < 0.02
    fractions = colour_fractions(img, [CLEARCUT, WATER])
    assert fractions[WATER] == pytest.approx(0.5, abs=0.01)
    assert fractions[CLEARCUT] > 0.15  # mercator stretches northern rows


@mapserver
def test_getmap_jpeg(mapserver_wms: MapServerWMS, client: httpx.Client) -> None:
    params = mapserver_wms.getmap_params(fmt="image/jpeg", width=SCENE_WIDTH, height=SCENE_HEIGHT)
    resp = client.get(mapserver_wms.url, params=params)
    assert resp.headers["content-type"] == "image/jpeg"
    img = get_image(client, mapserver_wms, params)
    # Lossy: compare away from edges only, with a tolerance.
    assert mismatch(img, scene_pixels(DEFAULT_TIME), tolerance=12) < 0.05
    for lon, lat, colour in [(10.3, 46.8, MARKER), (13.0, 46.0, WATER), (11.0, 45.7, CLEARCUT)]:
        row, col = pixel_of(lon, lat, SCENE_BBOX, SCENE_WIDTH, SCENE_HEIGHT)
        assert np.abs(img[row, col].astype(int) - colour).max() <= 8


@mapserver
@pytest.mark.parametrize(
    ("fmt", "extra"),
    [("image/png", {"TRANSPARENT": "TRUE"}), ("image/png; mode=32bit", {})],
)
def test_getmap_rgba_is_transparent_outside_the_scene(
    mapserver_wms: MapServerWMS, client: httpx.Client, fmt: str, extra: dict[str, str]
) -> None:
    bbox = (8.0, 44.0, 16.0, 48.0)  # the scene is the middle half in each direction
    params = {**mapserver_wms.getmap_params(bbox=bbox, fmt=fmt, width=400, height=200), **extra}
    img = get_image(client, mapserver_wms, params, mode="RGBA")
    alpha = img[..., 3]
    assert alpha[:40].max() == 0 and alpha[:, :90].max() == 0  # north and west margins
    assert alpha[60:140, 110:290].min() == 255
    assert tuple(img[100, 250, :3]) == WATER


# --------------------------------------------------------------------------- #
# TIME
# --------------------------------------------------------------------------- #


@mapserver
@pytest.mark.parametrize("version", ["1.1.1", "1.3.0"])
@pytest.mark.parametrize("date", TIMES)
def test_getmap_time_selects_the_scene(
    mapserver_wms: MapServerWMS, client: httpx.Client, version: str, date: str
) -> None:
    params = mapserver_wms.getmap_params(
        version=version, time=date, width=SCENE_WIDTH, height=SCENE_HEIGHT
    )
    img = get_image(client, mapserver_wms, params)
    assert np.array_equal(img, scene_pixels(date))
    fractions = colour_fractions(img, [FOREST, WATER, MARKER, CLEARCUT])
    expected = expected_fractions(date)
    for colour in (FOREST, WATER, MARKER, CLEARCUT):
        assert fractions[colour] == pytest.approx(expected.get(colour, 0.0))
    centre = pixel_of(
        (CLEARCUT_BOX[0] + CLEARCUT_BOX[2]) / 2,
        (CLEARCUT_BOX[1] + CLEARCUT_BOX[3]) / 2,
        SCENE_BBOX,
        SCENE_WIDTH,
        SCENE_HEIGHT,
    )
    assert tuple(img[centre]) == (CLEARCUT if date == LATE else FOREST)


@mapserver
def test_getmap_without_time_uses_the_default(
    mapserver_wms: MapServerWMS, client: httpx.Client
) -> None:
    img = get_image(client, mapserver_wms, mapserver_wms.getmap_params())
    late = get_image(client, mapserver_wms, mapserver_wms.getmap_params(time=DEFAULT_TIME))
    assert np.array_equal(img, late)


@mapserver
@pytest.mark.parametrize("bad_time", ["2023-01-01", "2024-03-01", f"{EARLY}/{LATE}"])
def test_getmap_time_outside_the_extent_falls_back_to_default(
    mapserver_wms: MapServerWMS, client: httpx.Client, bad_time: str
) -> None:
    """MapServer behaviour (with wms_timedefault): no InvalidDimensionValue, default scene."""
    img = get_image(client, mapserver_wms, mapserver_wms.getmap_params(time=bad_time))
    default = get_image(client, mapserver_wms, mapserver_wms.getmap_params())
    assert np.array_equal(img, default)


@mapserver
def test_static_layer_ignores_time(mapserver_wms: MapServerWMS, client: httpx.Client) -> None:
    params = mapserver_wms.getmap_params(
        layer=STATIC_LAYER, time=EARLY, width=SCENE_WIDTH, height=SCENE_HEIGHT
    )
    img = get_image(client, mapserver_wms, params)
    assert np.array_equal(img, scene_pixels(STATIC_DATE))


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


@mapserver
@pytest.mark.parametrize("version", ["1.1.1", "1.3.0"])
def test_unknown_layer_is_http_200_service_exception(
    mapserver_wms: MapServerWMS, client: httpx.Client, version: str
) -> None:
    params = mapserver_wms.getmap_params(version=version, layer="no_such_layer")
    resp = client.get(mapserver_wms.url, params=params)
    assert resp.status_code == 200
    assert "xml" in resp.headers["content-type"]
    root = ET.fromstring(resp.content)
    assert root.tag.endswith("ServiceExceptionReport")
    codes = [e.get("code") for e in root.iter() if e.tag.endswith("ServiceException")]
    assert codes == ["LayerNotDefined"]


# --------------------------------------------------------------------------- #
# Speed (a smoke bound; the real numbers are a few ms per request)
# --------------------------------------------------------------------------- #


@mapserver
def test_sequential_getmap_speed(mapserver_wms: MapServerWMS, client: httpx.Client) -> None:
    assert mapserver_wms.startup_seconds is not None
    assert mapserver_wms.startup_seconds < 20
    started = time.perf_counter()
    for i in range(50):
        bbox = (10.0 + i * 0.02, 45.0, 12.0 + i * 0.02, 47.0)
        get_image(client, mapserver_wms, mapserver_wms.getmap_params(bbox=bbox))
    assert time.perf_counter() - started < 20
