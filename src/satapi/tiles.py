"""Web Mercator XYZ tiles: a tile's EPSG:3857 bounds, and the GetMap request that draws it.

A layer whose capabilities offer EPSG:3857 is asked for the tile itself. One that offers only
geographic coordinates (EPSG:4326 / CRS:84, common on older servers) is asked for the tile's
lon/lat box, and its rows are then moved to where Web Mercator puts them: between the two
projections longitude stays linear and only latitude is stretched, so a tile is re-projected
exactly by picking, for each output row, the source row at that row's latitude.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from satapi.errors import InvalidRequest, NotAnImage
from satapi.wms_client import WEB_MERCATOR, GetMapRequest

TILE_PX = 256
MAX_ZOOM = 24
# Half the width of the Web Mercator square, in metres: pi * 6378137 (the WGS 84 radius).
ORIGIN = math.pi * 6378137.0


def tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) in EPSG:3857 metres of XYZ tile z/x/y (y counted from the top).

    Raises `InvalidRequest` for a zoom outside 0..MAX_ZOOM or a column/row outside 0..2^z-1.
    """
    if not 0 <= z <= MAX_ZOOM:
        raise InvalidRequest(f"Tile zoom must be between 0 and {MAX_ZOOM}, not {z}.")
    n = 1 << z
    if not (0 <= x < n and 0 <= y < n):
        raise InvalidRequest(f"At zoom {z}, tile x and y must be between 0 and {n - 1}.")
    size = 2 * ORIGIN / n

    # One formula per edge, so neighbouring tiles share edges bit for bit; the outer edges are
    # exactly +-ORIGIN (no rounding past the limit the bbox check enforces).
    def west(col: int) -> float:
        return ORIGIN if col == n else -ORIGIN + col * size

    def north(row: int) -> float:
        return -ORIGIN if row == n else ORIGIN - row * size

    return (west(x), north(y + 1), west(x + 1), north(y))


MERCATOR_CRS = WEB_MERCATOR
GEOGRAPHIC_CRS = ("EPSG:4326", "CRS:84")
# Rows of the geographic source image per tile: twice the output, so each output row picks a
# source row at most a quarter of an output row away from its exact latitude.
SOURCE_ROWS = 2 * 256


def _lat(merc_y: float) -> float:
    return math.degrees(math.atan(math.sinh(merc_y / 6378137.0)))


def lonlat_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of XYZ tile z/x/y."""
    minx, miny, maxx, maxy = tile_bounds(z, x, y)
    scale = 180.0 / ORIGIN
    return (minx * scale, _lat(miny), maxx * scale, _lat(maxy))


@dataclass(frozen=True)
class TilePlan:
    """How to draw a tile: the GetMap to send, and (geographic source) the rows to pick."""

    request: GetMapRequest
    rows: tuple[int, ...] | None = None  # source row of each output row; None: no warp


def tile_plan(
    z: int, x: int, y: int, *, layer: str, time: str | None, offered: Sequence[str] | None
) -> TilePlan:
    """The plan for tile z/x/y of `layer`, given the CRSs its capabilities offer (None:
    unknown, then EPSG:3857 is asked for and the server's answer decides)."""
    names = {c.upper() for c in offered or ()}
    geographic = next((c for c in GEOGRAPHIC_CRS if c in names), None)
    if offered is None or names & MERCATOR_CRS or geographic is None:
        return TilePlan(tile_request(z, x, y, layer=layer, time=time))
    west, south, east, north = lonlat_bounds(z, x, y)
    request = GetMapRequest(
        layer=layer,
        bbox=(west, south, east, north),
        crs=geographic,
        width=TILE_PX,
        height=SOURCE_ROWS,
        format="image/png",
        time=time,
    )
    return TilePlan(request, mercator_rows(z, y, SOURCE_ROWS))


def mercator_rows(z: int, y: int, source_rows: int) -> tuple[int, ...]:
    """For each of the tile's 256 rows (north first), the row of a `source_rows`-high image of
    the tile's lon/lat box (linear in latitude) that lies at the same latitude."""
    _, miny, _, maxy = tile_bounds(z, 0, y)
    north, south = _lat(maxy), _lat(miny)
    rows = []
    for i in range(TILE_PX):
        lat = _lat(maxy - (i + 0.5) * (maxy - miny) / TILE_PX)
        row = int((north - lat) / (north - south) * source_rows)
        rows.append(min(max(row, 0), source_rows - 1))
    return tuple(rows)


def warp_rows(data: bytes, rows: Sequence[int]) -> bytes:
    """The PNG made of `rows` of the image `data` (CPU work: run it in the CpuRunner)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            pixels = np.asarray(image.convert("RGBA"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise NotAnImage(f"The WMS image for the tile could not be decoded: {exc}.") from exc
    out = io.BytesIO()
    Image.fromarray(pixels[np.asarray(rows)], "RGBA").save(out, "PNG")
    return out.getvalue()


def tile_request(z: int, x: int, y: int, *, layer: str, time: str | None) -> GetMapRequest:
    """The 256 x 256 PNG GetMap in EPSG:3857 that draws tile z/x/y of `layer`."""
    return GetMapRequest(
        layer=layer,
        bbox=tile_bounds(z, x, y),
        crs="EPSG:3857",
        width=TILE_PX,
        height=TILE_PX,
        format="image/png",
        time=time,
    )


def lonlat_tile(lon: float, lat: float, z: int) -> tuple[int, int]:
    """The XYZ tile (x, y) holding a lon/lat point at zoom z."""
    n = 1 << z
    lat = max(min(lat, 85.0511287798), -85.0511287798)
    x = int((lon + 180.0) / 360.0 * n)
    y = int((1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n)
    return (min(max(x, 0), n - 1), min(max(y, 0), n - 1))
