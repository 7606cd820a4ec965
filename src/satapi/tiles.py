"""Web Mercator XYZ tiles: a tile's EPSG:3857 bounds, and the GetMap request that draws it."""

from __future__ import annotations

import math

from satapi.errors import InvalidRequest
from satapi.wms_client import GetMapRequest

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
