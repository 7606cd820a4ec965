"""XYZ tiles: the Web Mercator maths, and GET /api/tiles against the real MapServer WMS."""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from satapi.config import Settings
from satapi.errors import InvalidRequest
from satapi.tiles import ORIGIN, lonlat_tile, tile_bounds, tile_request
from satapi.wms_client import WEB_MERCATOR_LIMIT
from tests.support.mapserver import MapServerWMS, expected_image, lonlat_to_mercator
from tests.test_images_api import _app_client
from tests.test_mapserver_comparison import Recorder
from tests.test_mapserver_e2e import mismatch

LATE = "2024-06-01"

# --- maths ---


def test_zoom_zero_is_the_whole_square() -> None:
    assert pytest.approx(WEB_MERCATOR_LIMIT, abs=1e-6) == ORIGIN
    assert tile_bounds(0, 0, 0) == (-ORIGIN, -ORIGIN, ORIGIN, ORIGIN)


def test_tiles_split_into_quadrants_rows_from_the_north() -> None:
    assert tile_bounds(1, 0, 0) == (-ORIGIN, 0.0, 0.0, ORIGIN)  # north-west
    assert tile_bounds(1, 1, 1) == (0.0, -ORIGIN, ORIGIN, 0.0)  # south-east
    minx, miny, maxx, maxy = tile_bounds(10, 533, 358)
    assert maxx - minx == pytest.approx(2 * ORIGIN / 1024)
    assert maxy - miny == pytest.approx(2 * ORIGIN / 1024)
    # neighbours share edges exactly
    assert tile_bounds(10, 534, 358)[0] == maxx
    assert tile_bounds(10, 533, 359)[3] == miny


@pytest.mark.parametrize(
    ("lon", "lat", "z"),
    [(12.0, 46.0, 6), (-73.98, 40.75, 12), (151.2, -33.9, 9), (0.0, 0.0, 3), (179.9, 85.0, 4)],
)
def test_a_point_lies_in_its_tile(lon: float, lat: float, z: int) -> None:
    x, y = lonlat_tile(lon, lat, z)
    minx, miny, maxx, maxy = tile_bounds(z, x, y)
    mx, my = lonlat_to_mercator(lon, lat)
    assert minx <= mx < maxx and miny <= my < maxy


def test_known_tile_numbers() -> None:
    # OpenStreetMap's numbering: zoom 6 tile of Trento (11.1 E, 46.1 N) is 33/22
    assert lonlat_tile(11.1, 46.1, 6) == (33, 22)
    assert lonlat_tile(-180.0, 85.05, 2) == (0, 0)
    assert lonlat_tile(180.0, -85.05, 2) == (3, 3)


@pytest.mark.parametrize(("z", "x", "y"), [(-1, 0, 0), (25, 0, 0), (2, 4, 0), (2, 0, 4), (0, 1, 0)])
def test_out_of_range_tiles_are_refused(z: int, x: int, y: int) -> None:
    with pytest.raises(InvalidRequest):
        tile_bounds(z, x, y)


def test_the_getmap_request() -> None:
    req = tile_request(3, 4, 2, layer="scene", time=LATE)
    assert (req.crs, req.width, req.height, req.format, req.time) == (
        "EPSG:3857",
        256,
        256,
        "image/png",
        LATE,
    )
    assert req.bbox == tile_bounds(3, 4, 2)


# --- the endpoint (real MapServer) ---


@pytest.fixture
def recorded() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], mapserver_wms: MapServerWMS, recorded: Recorder
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        default_provider="mapserver",
        providers={
            "mapserver": {
                "url": mapserver_wms.url,
                "version": "1.3.0",
                "default_layer": mapserver_wms.layer,
                "max_concurrency": 8,
            }
        },
    )
    async with _app_client(settings) as c:
        c.app.state.resources.http.event_hooks["request"].append(recorded)  # type: ignore[attr-defined]
        yield c


def tile_pixels(body: bytes) -> Any:
    """The tile's RGB over white: satapi asks for TRANSPARENT=TRUE, so where the layer has no
    data the tile is transparent (the expected image paints MapServer's white background)."""
    with Image.open(io.BytesIO(body)) as image:
        assert image.size == (256, 256)
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, image.convert("RGBA")).convert("RGB"))


@pytest.mark.mapserver
async def test_a_tile_shows_the_scene_in_web_mercator(
    client: httpx.AsyncClient, recorded: Recorder
) -> None:
    z, x, y = 7, *lonlat_tile(11.0, 46.0, 7)
    response = await client.get(f"/api/tiles/mapserver/{z}/{x}/{y}.png", params={"time": LATE})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    expected = expected_image(tile_bounds(z, x, y), 256, 256, date=LATE, crs="EPSG:3857")
    assert mismatch(tile_pixels(response.content), expected, tolerance=3) < 0.02
    with Image.open(io.BytesIO(response.content)) as image:
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
    assert alpha.min() == 0 and alpha.max() == 255  # no data outside the scene: transparent
    (getmap,) = recorded.requests("GetMap")
    assert (getmap["CRS"], getmap["WIDTH"], getmap["HEIGHT"], getmap["TIME"]) == (
        "EPSG:3857",
        "256",
        "256",
        LATE,
    )
    assert getmap["LAYERS"] == "scene"  # the provider's default layer
    bbox = [float(v) for v in getmap["BBOX"].split(",")]
    assert bbox == pytest.approx(list(tile_bounds(z, x, y)), abs=1e-3)


@pytest.mark.mapserver
async def test_dates_differ_and_repeats_are_stored(
    client: httpx.AsyncClient, recorded: Recorder
) -> None:
    z, x, y = 8, *lonlat_tile(11.0, 45.7, 8)  # inside the clearcut
    path = f"/api/tiles/mapserver/{z}/{x}/{y}.png"
    early = await client.get(path, params={"time": "2024-01-01", "layer": "scene"})
    late = await client.get(path, params={"time": LATE, "layer": "scene"})
    assert early.content != late.content
    again = await client.get(path, params={"time": LATE, "layer": "scene"})
    assert again.content == late.content
    assert len(recorded.requests("GetMap")) == 2  # the repeat came from the store

    etag = late.headers["etag"]
    assert late.headers["cache-control"] == "public, max-age=86400"
    assert again.headers["etag"] == etag
    not_modified = await client.get(
        path, params={"time": LATE, "layer": "scene"}, headers={"If-None-Match": etag}
    )
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    head = await client.head(path, params={"time": LATE, "layer": "scene"})
    assert head.status_code == 200 and head.content == b""
    for name in ("content-type", "content-length", "etag", "cache-control"):
        assert head.headers[name] == late.headers[name], name
    assert int(head.headers["content-length"]) == len(late.content)


@pytest.mark.mapserver
async def test_undated_tiles_expire_with_the_cache_ttl(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/tiles/mapserver/6/33/22.png", params={"layer": "scene"})
    assert response.status_code == 200
    max_age = int(response.headers["cache-control"].rsplit("=", 1)[1])
    assert 3500 <= max_age <= 3600  # cache_ttl_s, the default 3600


@pytest.mark.mapserver
async def test_concurrent_requests_share_one_download(
    client: httpx.AsyncClient, recorded: Recorder
) -> None:
    path = "/api/tiles/mapserver/9/271/182.png"
    answers = await asyncio.gather(*(client.get(path, params={"time": LATE}) for _ in range(12)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert len(recorded.requests("GetMap")) == 1


@pytest.mark.mapserver
@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/api/tiles/mapserver/3/8/0.png", {}, 422, "invalid_request"),
        ("/api/tiles/mapserver/30/0/0.png", {}, 422, "validation_error"),
        ("/api/tiles/nowhere/3/1/1.png", {}, 422, "unknown_provider"),
        ("/api/tiles/mapserver/3/1/1.png", {"time": "yesterday"}, 422, "validation_error"),
        ("/api/tiles/mapserver/3/4/2.png", {"layer": "no_such_layer"}, 422, "unknown_layer"),
    ],
)
async def test_errors_are_the_envelope(
    client: httpx.AsyncClient, path: str, params: dict[str, str], status: int, code: str
) -> None:
    response = await client.get(path, params=params)
    assert response.status_code == status
    body = response.json()
    assert (body["success"], body["code"]) == (False, code)
    assert body["error"]


@pytest.mark.mapserver
async def test_tiles_need_the_api_key_when_keys_are_set(
    make_settings: Callable[..., Settings], mapserver_wms: MapServerWMS
) -> None:
    settings = make_settings(
        default_provider="mapserver",
        api_keys=["tile-key"],
        providers={"mapserver": {"url": mapserver_wms.url, "default_layer": "scene"}},
    )
    async with _app_client(settings) as c:
        denied = await c.get("/api/tiles/mapserver/6/33/22.png")
        assert denied.status_code == 401
        allowed = await c.get("/api/tiles/mapserver/6/33/22.png", headers={"X-API-Key": "tile-key"})
        assert allowed.status_code == 200
        # the page itself is public: it asks for the key when /api answers 401
        assert (await c.get("/")).status_code == 200


def test_tile_edges_stay_inside_the_mercator_limit() -> None:
    for z in (0, 1, 5, 18, 24):
        n = 1 << z
        _, miny, maxx, _ = tile_bounds(z, n - 1, n - 1)
        assert maxx <= WEB_MERCATOR_LIMIT and miny >= -WEB_MERCATOR_LIMIT
        assert math.isclose(maxx, ORIGIN) and math.isclose(miny, -ORIGIN)


# --- a server that offers only EPSG:4326: the tile is re-projected row by row ---

BAND_LAT = 55.0  # the fake WMS paints north of this latitude red, south of it blue
CAPABILITIES_111 = """<?xml version="1.0" encoding="UTF-8"?>
<WMT_MS_Capabilities version="1.1.1">
<Service><Name>OGC:WMS</Name><Title>geographic only</Title>
<OnlineResource xmlns:xlink="http://www.w3.org/1999/xlink" xlink:href="{url}"/></Service>
<Capability>
<Request>
<GetCapabilities><Format>application/vnd.ogc.wms_xml</Format>
<DCPType><HTTP><Get><OnlineResource xmlns:xlink="http://www.w3.org/1999/xlink"
 xlink:href="{url}?"/></Get></HTTP></DCPType></GetCapabilities>
<GetMap><Format>image/png</Format>
<DCPType><HTTP><Get><OnlineResource xmlns:xlink="http://www.w3.org/1999/xlink"
 xlink:href="{url}?"/></Get></HTTP></DCPType></GetMap>
</Request>
<Exception><Format>application/vnd.ogc.se_xml</Format></Exception>
<Layer><Title>root</Title><SRS>EPSG:4326</SRS>
<LatLonBoundingBox minx="-180" miny="-90" maxx="180" maxy="90"/>
<Layer queryable="0"><Name>bands</Name><Title>Latitude bands</Title>
<LatLonBoundingBox minx="-180" miny="-90" maxx="180" maxy="90"/></Layer>
</Layer>
</Capability>
</WMT_MS_Capabilities>"""


class GeographicWMS:
    """WMS 1.1.1 in EPSG:4326 only: GetMap paints each row by its latitude."""

    def __init__(self) -> None:
        self.getmaps: list[dict[str, str]] = []
        self.url = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from urllib.parse import parse_qsl

        if scope["type"] != "http":
            return
        params = {k.upper(): v for k, v in parse_qsl(scope["query_string"].decode())}
        if params.get("REQUEST") == "GetCapabilities":
            body = CAPABILITIES_111.format(url=self.url).encode()
            content_type = b"application/vnd.ogc.wms_xml"
        else:
            self.getmaps.append(params)
            _, south, _, north = (float(v) for v in params["BBOX"].split(","))
            width, height = int(params["WIDTH"]), int(params["HEIGHT"])
            lats = north - (np.arange(height) + 0.5) * (north - south) / height
            pixels = np.zeros((height, width, 3), dtype=np.uint8)
            pixels[lats >= BAND_LAT] = (200, 30, 30)
            pixels[lats < BAND_LAT] = (30, 30, 200)
            out = io.BytesIO()
            Image.fromarray(pixels, "RGB").save(out, "PNG")
            body, content_type = out.getvalue(), b"image/png"
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def geographic_wms() -> Any:
    from tests.test_vision_sse import ThreadedServer

    wms = GeographicWMS()
    server = ThreadedServer(wms, "geographic-wms").start()
    wms.url = f"{server.url}/wms"
    try:
        yield wms
    finally:
        server.stop()


async def test_a_geographic_only_layer_is_reprojected(
    make_settings: Callable[..., Settings], geographic_wms: GeographicWMS
) -> None:
    settings = make_settings(
        default_provider="geo",
        providers={
            "geo": {"url": geographic_wms.url, "version": "1.1.1", "default_layer": "bands"}
        },
    )
    z, x, y = 3, 4, 2  # lon 0..45, lat 40.98..66.51: the 55th parallel crosses it
    async with _app_client(settings) as c:
        response = await c.get(f"/api/tiles/geo/{z}/{x}/{y}.png")
        assert response.status_code == 200, response.text
        again = await c.get(f"/api/tiles/geo/{z}/{x}/{y}.png")
    assert again.content == response.content
    assert len(geographic_wms.getmaps) == 1  # the source image was stored
    getmap = geographic_wms.getmaps[0]
    assert getmap["SRS"] == "EPSG:4326"
    west, south, east, north = (float(v) for v in getmap["BBOX"].split(","))
    assert (west, east) == pytest.approx((0.0, 45.0))
    assert (south, north) == pytest.approx((40.979898, 66.513260), abs=1e-5)

    pixels = tile_pixels(response.content)
    red_rows = int((pixels[:, 128, 0] > 100).sum())
    # Web Mercator puts the 55th parallel where its projected y falls, not linearly in latitude.
    _, miny, _, maxy = tile_bounds(z, x, y)
    _, y55 = lonlat_to_mercator(0.0, BAND_LAT)
    expected = (maxy - y55) / (maxy - miny) * 256  # ~132.7 rows
    linear = (north - BAND_LAT) / (north - south) * 256  # ~115.4: what no warp would give
    assert abs(red_rows - expected) <= 1 and abs(red_rows - linear) > 10
    assert (pixels[:, 0] == pixels[:, 255]).all()  # longitude stays linear: columns alike
