"""Areas without a server: geometry checks, sizes on the ground, tile grids, masks, mosaics,
a failing tile named, the Claude image dimmed outside the polygon, and the CLI's --geometry."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import respx
from PIL import Image

from satapi.analyzers.base import ImageInput
from satapi.analyzers.imageprep import OUTSIDE_BRIGHTNESS, prepare_for_claude
from satapi.analyzers.prompts import describe_context
from satapi.areas import (
    Region,
    check_pixels,
    ground_size_m,
    parse_geometry,
    size_for_resolution,
    tile_grid,
)
from satapi.client.commands import read_geometry
from satapi.client.errors import SatapiError as ClientError
from satapi.errors import AreaTooLarge, InvalidGeometry
from satapi.mosaic import build_mosaic
from tests.conftest import WMS_URL

SQUARE_WITH_HOLE: dict[str, Any] = {
    "type": "Polygon",
    "coordinates": [
        [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]],
        [[1, 1], [1, 3], [3, 3], [3, 1], [1, 1]],
    ],
}


def test_holes_and_parts_are_honoured_by_the_mask() -> None:
    two = {
        "type": "MultiPolygon",
        "coordinates": [SQUARE_WITH_HOLE["coordinates"], [[[6, 0], [8, 0], [8, 2], [6, 0]]]],
    }
    region = Region.of(two, "EPSG:4326")
    assert region.bbox == (0, 0, 8, 4)
    mask = region.mask((4, 8))  # one pixel per degree, centres at .5
    expected = np.zeros((4, 8), dtype=bool)
    expected[:, :4] = True
    expected[1:3, 1:3] = False  # the hole
    expected[3, 7] = True  # the triangle's one pixel centre (7.5, 0.5) inside it
    assert np.array_equal(mask, expected)


@pytest.mark.parametrize(
    ("geometry", "words"),
    [
        ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "not 'LineString'"),
        ({"type": "Feature", "properties": {}, "geometry": None}, "has no geometry"),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]},
            "self-intersection at lon 1, lat 1",
        ),
        ({"type": "Polygon", "coordinates": [[[0, 0], [0, 91], [1, 0], [0, 0]]]}, "[0, 91]"),
    ],
)
def test_bad_geometries_are_said_in_words(geometry: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidGeometry) as caught:
        parse_geometry(geometry)
    assert words in caught.value.message
    assert caught.value.code == "invalid_geometry"


def test_a_feature_and_a_vertex_limit() -> None:
    feature = {"type": "Feature", "properties": {"name": "x"}, "geometry": SQUARE_WITH_HOLE}
    assert parse_geometry(feature).area == 12
    with pytest.raises(InvalidGeometry, match="10 vertices; at most 9"):
        parse_geometry(SQUARE_WITH_HOLE, max_vertices=9)


def test_sizes_on_the_ground_follow_the_centre_latitude() -> None:
    width_m, height_m = ground_size_m((10, 45, 11, 46), "EPSG:4326")
    # One degree of longitude at 45.5 N on the ellipsoid: pi/180 a cos(lat) / sqrt(1 - e² sin²)
    assert width_m == pytest.approx(78_159, rel=1e-4)
    assert height_m == pytest.approx(111_141, rel=1e-4)  # one degree of latitude there
    assert size_for_resolution((10, 45, 11, 46), "EPSG:4326", 100) == (782, 1111)
    # The same box given in Web Mercator metres has the same ground size.
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    merc = (*t.transform(10, 45), *t.transform(11, 46))
    assert ground_size_m(merc, "EPSG:3857") == pytest.approx((width_m, height_m), rel=1e-6)


def test_area_too_large_names_a_resolution_that_fits() -> None:
    with pytest.raises(AreaTooLarge) as caught:
        check_pixels((10, 45, 11, 46), "EPSG:4326", 7816, 11114, 1_000_000)
    fits = caught.value.extra["resolution_fits_m"]
    width, height = size_for_resolution((10, 45, 11, 46), "EPSG:4326", fits)
    assert width * height <= 1_000_000
    assert fits == 94  # sqrt(78.2 km x 111.1 km / 1 MP) = 93.2, up to two digits


@pytest.mark.parametrize(
    ("width", "height", "limit"), [(800, 400, 300), (1000, 1000, 1000), (7, 5, 2)]
)
def test_tiles_cover_every_pixel_once_within_the_limit(width: int, height: int, limit: int) -> None:
    tiles = tile_grid((0.0, 0.0, 8.0, 4.0), width, height, limit, limit)
    cover = np.zeros((height, width), dtype=int)
    for tile in tiles:
        assert tile.width <= limit and tile.height <= limit
        cover[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] += 1
        # Each tile's bbox has exactly its pixels' size.
        minx, miny, maxx, maxy = tile.bbox
        assert (maxx - minx) / tile.width == pytest.approx(8.0 / width)
        assert (maxy - miny) / tile.height == pytest.approx(4.0 / height)
        assert minx == pytest.approx(tile.x * 8.0 / width)
        assert maxy == pytest.approx(4.0 - tile.y * 4.0 / height)
    assert (cover == 1).all()


def _png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def test_a_geotiff_mosaic_is_georeferenced(tmp_path: Path) -> None:
    import rasterio

    bbox = (10.0, 45.0, 14.0, 47.0)
    tiles = tile_grid(bbox, 600, 300, 256, 256)
    colors = [(i * 40, 100, 200 - i * 30) for i in range(len(tiles))]
    data = build_mosaic(
        [(t, _png(t.width, t.height, colors[t.index])) for t in tiles],
        width=600,
        height=300,
        fmt="image/tiff",
        bbox=bbox,
        crs="EPSG:4326",
    )
    path = tmp_path / "m.tif"
    path.write_bytes(data)
    with rasterio.open(path) as ds:
        assert (ds.width, ds.height, ds.count) == (600, 300, 4)
        assert ds.crs.to_epsg() == 4326
        assert ds.bounds == pytest.approx(bbox)
        assert ds.block_shapes[0] == (256, 256)
        pixels = ds.read()
    for tile in tiles:
        assert tuple(pixels[:3, tile.y, tile.x]) == colors[tile.index]
        assert pixels[3, tile.y, tile.x] == 255


async def test_a_failing_tile_fails_the_request_naming_it(
    make_settings: Any, wms: respx.Router
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        width, height = int(params["WIDTH"]), int(params["HEIGHT"])
        if params["BBOX"].startswith("45.5,"):  # lat 45.5..46 first (1.3.0): the top row
            return httpx.Response(503, text="down")
        return httpx.Response(
            200, content=_png(width, height, (1, 2, 3)), headers={"content-type": "image/png"}
        )

    wms.get(url__startswith=WMS_URL, params__contains={"REQUEST": "GetMap"}).mock(
        side_effect=answer
    )
    settings = make_settings(
        providers={
            "test": {"url": WMS_URL, "default_layer": "scene", "max_size": 200},
        },
        retry_attempts=1,
    )
    from tests.test_images_api import _app_client

    async with _app_client(settings, wms) as client:
        r = await client.post(
            "/api/images", json={"bbox": [10, 45, 11, 46], "width": 400, "height": 400}
        )
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["tiles"] == 4 and body["tile"] in (1, 2)  # the top row (lat 45.5..46)
    assert f"tile {body['tile']} of 4 (columns" in body["error"]


def test_claude_sees_the_area_and_its_outside_dimmed() -> None:
    region = Region.of(
        {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 4], [0, 4], [0, 0]]]},
        "EPSG:4326",
    )
    # The image covers lon 0..4 (the polygon's left half of a wider bbox).
    full = Region(
        lonlat=region.lonlat, geometry=region.geometry, crs="EPSG:4326", bbox=(0, 0, 4, 4)
    )
    prepared = prepare_for_claude(_png(64, 64, (200, 100, 50)), inside=full.mask)
    import base64

    with Image.open(io.BytesIO(base64.b64decode(prepared.base64_data))) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert tuple(rgb[32, 10]) == pytest.approx((200, 100, 50), abs=3)
    dim = tuple(round(v * OUTSIDE_BRIGHTNESS) for v in (200, 100, 50))
    assert tuple(rgb[32, 50]) == pytest.approx(dim, abs=3)
    lines = describe_context(
        ImageInput(data=b"", content_type="image/png", region=full, bbox=(0, 0, 4, 4))
    )
    assert any(line.startswith("Area of interest") and "km²" in line for line in lines)


def test_the_cli_reads_a_geometry_file(tmp_path: Path) -> None:
    feature = {"type": "Feature", "properties": {}, "geometry": SQUARE_WITH_HOLE}
    path = tmp_path / "field.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    assert read_geometry(path) == feature
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature, feature]}))
    with pytest.raises(ClientError, match="holds 2 features"):
        read_geometry(path)
    with pytest.raises(ClientError, match="cannot read"):
        read_geometry(tmp_path / "missing.geojson")


def test_every_request_example_validates_and_one_has_a_polygon() -> None:
    from satapi.models import (
        ComparisonAnalyzeRequest,
        ComparisonRequest,
        ImageRequest,
        TimeseriesRequest,
        VisionRequest,
    )

    for model in (
        ImageRequest,
        VisionRequest,
        ComparisonRequest,
        ComparisonAnalyzeRequest,
        TimeseriesRequest,
    ):
        examples = model.model_json_schema()["examples"]
        assert any("geometry" in e for e in examples), model
        for example in examples:
            request = model.model_validate(example)
            getmap = request.getmap("layer", time="2024-06-01")
            if "geometry" in example:
                assert getmap.region is not None and getmap.resolution_m == 10.0
                assert 500 < getmap.width < 700 and 500 < getmap.height < 700  # ~6 km a side


def test_a_stitched_image_measured_tile_by_tile_equals_it_measured_whole() -> None:
    from satapi.analyzers.base import DataWindow, ImagePart
    from satapi.analyzers.local import _analyse_one, _analyse_parts

    rng = np.random.default_rng(7)
    # Blocks of the local analyzer's classes (forest, water, soil, cloud, black) at random.
    palette = np.array(
        [(34, 139, 34), (20, 50, 120), (150, 110, 70), (240, 240, 240), (0, 0, 0)], np.uint8
    )
    blocks = rng.integers(0, len(palette), size=(12, 20))
    whole = palette[np.kron(blocks, np.ones((25, 25), dtype=int))]  # 300 x 500
    bbox = (10.0, 45.0, 14.0, 47.0)
    region = Region.of(
        {
            "type": "Polygon",
            "coordinates": [[[10.3, 45.2], [13.8, 45.6], [11.0, 46.9], [10.3, 45.2]]],
        },
        "EPSG:4326",
    )
    region = Region(lonlat=region.lonlat, geometry=region.geometry, crs="EPSG:4326", bbox=bbox)
    parts = []
    for tile in tile_grid(bbox, 500, 300, 128, 128):
        buf = io.BytesIO()
        Image.fromarray(whole[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]).save(
            buf, "PNG"
        )
        parts.append(
            ImagePart(
                data=buf.getvalue(),
                x=tile.x,
                y=tile.y,
                width=tile.width,
                height=tile.height,
                bbox=tile.bbox,
            )
        )
    buf = io.BytesIO()
    Image.fromarray(whole).save(buf, "PNG")
    window = DataWindow(0.1, 0.0, 0.9, 0.8)
    common: dict[str, Any] = {"data": buf.getvalue(), "content_type": "image/png", "region": region}
    one = ImageInput(**common, data_window=window)
    tiled = ImageInput(**common, data_window=window, parts=tuple(parts), size=(500, 300))
    assert len(parts) == 12
    assert _analyse_parts(tiled, 10**8) == _analyse_one(one, 10**8)


async def test_a_failing_tile_fails_its_time_series_point_only(
    make_settings: Any, wms: respx.Router
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if params.get("TIME") == "2024-06-01" and params["BBOX"].startswith("45.5,"):
            return httpx.Response(503, text="down")
        width, height = int(params["WIDTH"]), int(params["HEIGHT"])
        return httpx.Response(
            200, content=_png(width, height, (34, 139, 34)), headers={"content-type": "image/png"}
        )

    wms.get(url__startswith=WMS_URL, params__contains={"REQUEST": "GetMap"}).mock(
        side_effect=answer
    )
    settings = make_settings(
        providers={"test": {"url": WMS_URL, "default_layer": "scene", "max_size": 200}},
        retry_attempts=1,
    )
    from tests.test_images_api import _app_client

    async with _app_client(settings, wms) as client:
        r = await client.post(
            "/api/timeseries",
            json={
                "bbox": [10, 45, 11, 46],
                "width": 400,
                "height": 400,
                "times": ["2024-01-01", "2024-06-01"],
            },
        )
    assert r.status_code == 200, r.text
    series = r.json()
    assert series["partial"] is True
    ok, failed = series["points"]
    assert ok["metrics"]["vegetation_fraction"] == 1.0 and ok["image"]["area"]["tiles"] == 4
    assert failed["code"] == "upstream_error" and "of 4 (columns" in failed["error"]
