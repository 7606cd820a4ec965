"""Areas against the real MapServer: polygons, resolution in metres, tiles beyond MaxWidth,
GeoTIFF out.

A second MapServer serves the same scene (tests/support/mapserver.py) with MAXSIZE 300, so its
capabilities say MaxWidth/MaxHeight 300 and a larger GetMap is refused ("Image size out of
range"): satapi must fetch larger images in tiles. It is reached through a `CountingProxy`,
so a test sees every GetMap; the session's MapServer (MAXSIZE 4096) answers the one direct
GetMap a stitched mosaic is compared with.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import shapely
from PIL import Image
from pyproj import Geod
from shapely.geometry import box, shape

from satapi.config import Settings
from tests.support.counting_proxy import CountingProxy
from tests.support.mapserver import (
    CLEARCUT_BOX,
    CLOUDY_LAYER,
    FOREST_BOX,
    LAYER,
    MARKER_BOX,
    STATIC_LAYER,
    WATER_BOX,
    MapServerWMS,
)
from tests.test_comparison import parse_sse
from tests.test_images_api import _app_client
from tests.test_mapserver_clearest import _settings as clearest_settings

pytestmark = pytest.mark.mapserver

MAX = 300  # the small server's MAXSIZE
CAP = 3  # the provider's max_concurrency
# A right triangle whose inside is mostly east (water) while its bbox is half west (forest).
TRIANGLE: dict[str, Any] = {
    "type": "Polygon",
    "coordinates": [[[10.2, 45.1], [13.9, 45.1], [13.9, 46.9], [10.2, 45.1]]],
}


@pytest.fixture(scope="module")
def small_wms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MapServerWMS]:
    with MapServerWMS(tmp_path_factory.mktemp("mapserver-small"), max_size=MAX) as wms:
        yield wms


@pytest.fixture
async def proxy(small_wms: MapServerWMS) -> AsyncIterator[CountingProxy]:
    async with CountingProxy("127.0.0.1", small_wms.port, delay=0.02) as p:
        yield p


def _settings(
    make_settings: Callable[..., Settings], proxy: CountingProxy, **overrides: Any
) -> Settings:
    """Provider `ms` (the small MapServer behind `proxy`), `scene` its default layer."""
    return clearest_settings(
        make_settings, proxy, CAP, provider={"default_layer": LAYER}, **overrides
    )


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], proxy: CountingProxy
) -> AsyncIterator[httpx.AsyncClient]:
    async with _app_client(_settings(make_settings, proxy)) as c:
        yield c


def _getmaps(proxy: CountingProxy) -> list[dict[str, str]]:
    return proxy.queries("GetMap")


def _rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _inside_share(geometry: dict[str, Any], part: tuple[float, float, float, float]) -> float:
    """The share of the polygon's area (in lon/lat, as pixels of an EPSG:4326 image) in `part`."""
    poly = shape(geometry)
    return float(poly.intersection(box(*part)).area / poly.area)


async def test_a_large_bbox_is_fetched_in_tiles_that_stitch_into_one_getmap(
    client: httpx.AsyncClient, proxy: CountingProxy, mapserver_wms: MapServerWMS
) -> None:
    body = {"layer": STATIC_LAYER, "bbox": [10, 45, 14, 47], "width": 800, "height": 400}
    r = await client.post("/api/images", json=body)
    assert r.status_code == 200, r.text
    image = r.json()["image"]
    assert (image["width"], image["height"]) == (800, 400)
    assert image["area"]["tiles"] == 6  # 3 columns of <= 300 px, 2 rows of <= 300 px
    getmaps = _getmaps(proxy)
    assert len(getmaps) == 6
    assert all(int(q["WIDTH"]) <= MAX and int(q["HEIGHT"]) <= MAX for q in getmaps)
    assert sum(int(q["WIDTH"]) * int(q["HEIGHT"]) for q in getmaps) == 800 * 400
    assert proxy.max_in_flight <= CAP

    mosaic = _rgb((await client.get(image["url"])).content)
    async with httpx.AsyncClient() as direct:
        one = await direct.get(
            mapserver_wms.url,
            params={
                "SERVICE": "WMS",
                "VERSION": "1.3.0",
                "REQUEST": "GetMap",
                "LAYERS": STATIC_LAYER,
                "STYLES": "",
                "CRS": "EPSG:4326",
                "BBOX": "45,10,47,14",
                "WIDTH": "800",
                "HEIGHT": "400",
                "FORMAT": "image/png",
            },
        )
    assert one.headers["content-type"] == "image/png"
    assert np.array_equal(mosaic, _rgb(one.content))

    proxy.reset()
    again = await client.post("/api/images", json=body)
    assert again.json()["image"]["cached"] is True
    assert _getmaps(proxy) == []  # a repeat costs no GetMap


async def test_a_polygon_is_measured_inside_only(
    client: httpx.AsyncClient, proxy: CountingProxy
) -> None:
    body = {"geometry": TRIANGLE, "time": "2024-01-01", "resolution": 1000, "analyzer": "local"}
    r = await client.post("/api/vision/analyze_satellite", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    metrics = answer["analysis"]["metrics"]
    west = _inside_share(TRIANGLE, FOREST_BOX)
    assert metrics["vegetation_fraction"] == pytest.approx(west, abs=0.02)
    assert metrics["water_fraction"] == pytest.approx(_inside_share(TRIANGLE, WATER_BOX), abs=0.02)
    # The bbox would be half forest: the polygon's inside is not.
    assert abs(west - 0.5) > 0.2
    assert metrics["nodata_fraction"] == 0.0  # the outside of the polygon is not "no data"

    area = answer["image"]["area"]
    assert area["resolution_m"] == 1000
    assert area["bbox"] == [10.2, 45.1, 13.9, 46.9]
    km2 = abs(Geod(ellps="WGS84").geometry_area_perimeter(shape(TRIANGLE))[0]) / 1e6
    assert area["area_km2"] == pytest.approx(km2, rel=1e-6)
    # Half the bbox's pixels, give or take the diagonal's.
    assert area["pixels"] == pytest.approx(area["width"] * area["height"] / 2, rel=0.02)
    # ~290 km wide at 46 N, 200 km high: 290 x 200 px at 1 km/px, in one GetMap.
    assert (area["width"], area["height"]) == (287, 200)
    assert area["tiles"] == 1 and len(_getmaps(proxy)) == 1

    # The other half of the same bbox: the same image, another polygon, other figures (not
    # the first polygon's stored analysis).
    other = {
        "type": "Polygon",
        "coordinates": [[[10.2, 45.1], [10.2, 46.9], [13.9, 46.9], [10.2, 45.1]]],
    }
    second = await client.post("/api/vision/analyze_satellite", json={**body, "geometry": other})
    assert second.json()["image"]["id"] == answer["image"]["id"]
    assert second.json()["analysis"]["cached"] is False
    # (the red marker in the north-west corner is on the forest, and no land cover)
    west2 = _inside_share(other, FOREST_BOX) - _inside_share(other, MARKER_BOX)
    assert second.json()["analysis"]["metrics"]["vegetation_fraction"] == pytest.approx(
        west2, abs=0.02
    )
    assert abs(west2 - west) > 0.2


async def test_a_polygon_and_its_bbox_mask_both_sides_of_a_comparison(
    client: httpx.AsyncClient,
) -> None:
    field = {
        "type": "Feature",
        "properties": {"name": "forest plot"},
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[10.1, 45.1], [11.9, 45.1], [10.1, 46.4], [10.1, 45.1]]],
        },
    }
    body = {
        "geometry": field,
        "resolution": 2000,
        "before": "2024-01-01",
        "after": "2024-06-01",
        "analyzer": "local",
    }
    r = await client.post("/api/comparison/analyze", json=body)
    assert r.status_code == 200, r.text
    metrics = r.json()["analysis"]["metrics"]
    # Forest turned clear-cut exactly where the polygon overlaps the clear-cut box.
    expected = _inside_share(field["geometry"], CLEARCUT_BOX)
    assert metrics["changed_fraction"] == pytest.approx(expected, abs=0.04)
    assert metrics["valid_fraction"] == 1.0
    assert metrics["before"]["nodata_fraction"] == 0.0


async def test_clearest_measures_cloud_inside_the_polygon(
    make_settings: Callable[..., Settings], proxy: CountingProxy
) -> None:
    # 2024-07-03 has cloud over lon 13.2..14, 2024-07-18 over lon 10..12. The triangle's bbox
    # is less cloudy on 07-03; the triangle itself (mostly east) is less cloudy on 07-18.
    settings = _settings(make_settings, proxy)
    async with _app_client(settings) as client:
        r = await client.post(
            "/api/images",
            json={
                "layer": CLOUDY_LAYER,
                "geometry": TRIANGLE,
                "clearest": {"window": "2024-07-01/2024-07-31"},
            },
        )
    assert r.status_code == 200, r.text
    selection = r.json()["selection"]
    assert selection["chosen"] == "2024-07-18"
    clouds = {c["time"]: c["cloud_fraction"] for c in selection["candidates"]}
    assert clouds["2024-07-18"] == pytest.approx(
        _inside_share(TRIANGLE, (10, 45, 12, 47)), abs=0.03
    )
    assert clouds["2024-07-03"] == pytest.approx(
        _inside_share(TRIANGLE, (13.2, 45, 14, 47)), abs=0.03
    )


async def test_a_time_series_of_a_polygon(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/timeseries",
        json={"geometry": TRIANGLE, "times": ["2024-01-01", "2024-06-01"], "resolution": 4000},
    )
    assert r.status_code == 200, r.text
    points = r.json()["points"]
    west = _inside_share(TRIANGLE, FOREST_BOX)
    for point in points:
        assert point["image"]["area"]["pixels"] > 0
        assert point["metrics"]["nodata_fraction"] == 0.0
    jan = points[0]["metrics"]
    assert jan["vegetation_fraction"] == pytest.approx(west, abs=0.03)
    # June: the part of the triangle on the clear-cut turned bare.
    june = points[1]["metrics"]
    cut = _inside_share(TRIANGLE, CLEARCUT_BOX)
    assert june["bare_fraction"] == pytest.approx(cut, abs=0.03)


async def test_geotiff_out_of_a_stitched_mosaic(
    make_settings: Callable[..., Settings], proxy: CountingProxy, tmp_path: Path
) -> None:
    settings = _settings(make_settings, proxy)
    async with _app_client(settings) as client:
        r, got = await _geotiff(client)
    # A restarted service finds it in its store (a .tif file that looks like a TIFF).
    assert list(settings.data_dir.rglob("*.tif"))
    async with _app_client(settings) as restarted:
        again = await restarted.get(r.json()["image"]["url"])
    assert again.status_code == 200 and again.content == got.content
    _check_geotiff(r.json()["image"], got.content, tmp_path)


async def _geotiff(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
    r = await client.post(
        "/api/images",
        json={
            "layer": STATIC_LAYER,
            "geometry": TRIANGLE,
            "resolution": 500,
            "format": "image/tiff",
        },
    )
    assert r.status_code == 200, r.text
    image = r.json()["image"]
    assert image["content_type"] == "image/tiff"
    assert image["area"]["tiles"] > 1
    got = await client.get(image["url"])
    assert got.headers["content-type"] == "image/tiff"
    return r, got


def _check_geotiff(image: dict[str, Any], content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "area.tif"
    path.write_bytes(content)

    import rasterio

    with rasterio.open(path) as ds:
        assert (ds.width, ds.height) == (image["width"], image["height"])
        assert ds.crs.to_epsg() == 4326
        west, south, east, north = ds.bounds
        assert (west, south, east, north) == pytest.approx((10.2, 45.1, 13.9, 46.9))
        assert ds.transform.a == pytest.approx(3.7 / ds.width)
        assert ds.count == 4 and ds.compression is not None and ds.compression.value == "DEFLATE"
        assert ds.profile["tiled"] is True
        rgb = ds.read([1, 2, 3])
    # The north-east corner is water, the south-west forest.
    assert tuple(rgb[:, 1, -2]) == (20, 50, 120)
    assert tuple(rgb[:, -2, 1]) == (34, 139, 34)
    if shutil.which("gdalinfo"):
        info = json.loads(
            subprocess.run(
                ["gdalinfo", "-json", str(path)], capture_output=True, check=True, text=True
            ).stdout
        )
        assert info["size"] == [image["width"], image["height"]]
        assert info["coordinateSystem"]["wkt"].count("WGS 84") >= 1
        assert info["geoTransform"][0] == pytest.approx(10.2)


async def test_bad_areas_are_refused_before_any_getmap(
    make_settings: Callable[..., Settings], proxy: CountingProxy
) -> None:
    settings = _settings(make_settings, proxy, max_area_pixels=1_000_000, max_geometry_vertices=6)
    unclosed = [[10.2, 45.1], [13.9, 45.1], [13.9, 46.9], [10.5, 46.9]]
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"geometry": {"type": "Point", "coordinates": [11, 46]}}, "invalid_geometry", "Point"),
        (
            {"geometry": {"type": "Polygon", "coordinates": [unclosed]}},
            "invalid_geometry",
            "same start and end",
        ),
        (
            {
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[10, 45], [11, 46], [11, 45], [10, 46], [10, 45]]],
                }
            },
            "invalid_geometry",
            "self-intersection at lon 10.5, lat 45.5",
        ),
        (
            {
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[10, 45], [11, 95], [12, 45], [10, 45]]],
                }
            },
            "invalid_geometry",
            "[11, 95] is out of range",
        ),
        (
            {
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [list(shapely.Point(12, 46).buffer(0.5, 3).exterior.coords)],
                }
            },
            "invalid_geometry",
            "at most 6",
        ),
        ({"geometry": TRIANGLE, "resolution": 100}, "area_too_large", "m/px or coarser"),
        ({"geometry": TRIANGLE, "bbox": [10, 45, 11, 46]}, "validation_error", "not both"),
        (
            {"bbox": [10, 45, 11, 46], "resolution": 100, "width": 10},
            "validation_error",
            "not both",
        ),
    ]
    async with _app_client(settings) as client:
        for body, code, words in cases:
            for path in ("/api/images", "/api/vision/analyze_satellite_stream"):
                r = await client.post(
                    path, json={**body, "analyzer": "local"} if "vision" in path else body
                )
                assert r.status_code == 422, (body, r.text)
                assert r.headers["content-type"] == "application/json"
                assert r.json()["code"] == code, r.text
                assert words in r.json()["error"], r.text
        too_large = await client.post("/api/images", json={"geometry": TRIANGLE, "resolution": 100})
        fits = too_large.json()["resolution_fits_m"]
        ok = await client.post("/api/images", json={"geometry": TRIANGLE, "resolution": fits})
        assert ok.status_code == 200, ok.text
        assert ok.json()["image"]["width"] * ok.json()["image"]["height"] <= 1_000_000
    assert len(_getmaps(proxy)) == ok.json()["image"]["area"]["tiles"]


async def test_the_stream_sends_progress_while_tiles_arrive(client: httpx.AsyncClient) -> None:
    body = {
        "layer": STATIC_LAYER,
        "bbox": [10, 45, 14, 47],
        "width": 700,
        "height": 350,
        "analyzer": "local",
    }
    r = await client.post("/api/vision/analyze_satellite_stream", json=body)
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    names = [name for name, _ in events]
    progress = [data for name, data in events if name == "progress"]
    assert progress[0] == {"done": 0, "total": 6}
    assert progress[-1] == {"done": 6, "total": 6}
    assert [p["done"] for p in progress] == list(range(7))
    assert names.index("progress") < names.index("image")
    assert max(i for i, n in enumerate(names) if n == "progress") < names.index("image")
    assert events[-1][0] == "result"
    assert events[-1][1]["image"]["area"]["tiles"] == 6


def test_the_example_polygon_is_valid() -> None:
    from satapi.models import EXAMPLE_POLYGON

    assert shapely.is_valid(shape(EXAMPLE_POLYGON))
