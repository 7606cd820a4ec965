"""Areas: a polygon in lon/lat, its pixels in an image, its size on the ground, and the grid of
tiles a large image is fetched in.

`Region` is the area of interest of one request (a GeoJSON Polygon or MultiPolygon, RFC 7946
lon/lat) together with the image's bbox and CRS: `Region.mask(shape)` says which pixels of an
image of that bbox lie inside it (pixel centres, holes and parts honoured). Sizes on the ground
are geodesic (WGS 84 ellipsoid): a bbox's width is measured along its centre latitude, its
height along its centre meridian.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from satapi.analyzers.base import AreaOfInterest
from satapi.errors import AreaTooLarge, InvalidGeometry
from satapi.wms_client import GEOGRAPHIC, BBox

if TYPE_CHECKING:
    from pyproj import Geod, Transformer

# rasterize (`Region.mask`) warns from its in-memory dataset before it sets the transform.
# (By message: rasterio and pyproj are imported on the first area request, not with the
# service: together they are ~60 MB of every process.)
warnings.filterwarnings("ignore", message="Dataset has no geotransform")


@functools.cache
def geod() -> Geod:
    """The WGS 84 ellipsoid's geodesic calculator (pyproj, imported on first use)."""
    from pyproj import Geod

    return Geod(ellps="WGS84")


GEOMETRY_TYPES = ("Polygon", "MultiPolygon")


# --- geometry -----------------------------------------------------------------------------


def parse_geometry(value: Mapping[str, Any], *, max_vertices: int | None = None) -> BaseGeometry:
    """A valid lon/lat Polygon or MultiPolygon from its GeoJSON (a Feature holding one too);
    `InvalidGeometry` saying what is wrong, in words, otherwise."""
    if value.get("type") == "Feature":
        inner = value.get("geometry")
        if not isinstance(inner, Mapping):
            raise InvalidGeometry(
                "The Feature has no geometry; it needs a Polygon or MultiPolygon."
            )
        value = inner
    kind = value.get("type")
    if kind not in GEOMETRY_TYPES:
        raise InvalidGeometry(
            f"geometry must be a GeoJSON Polygon or MultiPolygon (or a Feature holding one), "
            f"not {kind!r}."
        )
    try:
        geom = shape(dict(value))
    except Exception as exc:  # shapely raises several kinds on malformed coordinates
        raise InvalidGeometry(f"The {kind}'s coordinates cannot be read: {exc}.") from None
    if geom.is_empty:
        raise InvalidGeometry(f"The {kind} has no coordinates.")
    coords = shapely.get_coordinates(geom)
    bad = np.flatnonzero(
        (np.abs(coords[:, 0]) > 180) | (np.abs(coords[:, 1]) > 90) | ~np.isfinite(coords).all(1)
    )
    if bad.size:
        lon, lat = coords[bad[0]]
        raise InvalidGeometry(
            f"The coordinate [{lon:g}, {lat:g}] is out of range: GeoJSON is longitude, latitude "
            "(longitudes within -180..180, latitudes within -90..90).",
            extra={"position": [float(lon), float(lat)]},
        )
    vertices = int(shapely.get_num_coordinates(geom))
    if max_vertices is not None and vertices > max_vertices:
        raise InvalidGeometry(
            f"The geometry has {vertices} vertices; at most {max_vertices} are accepted "
            "(max_geometry_vertices). Simplify it first.",
            extra={"vertices": vertices, "limit": max_vertices},
        )
    if not geom.is_valid:
        raise InvalidGeometry(_why_invalid(geom), extra={"reason": shapely.is_valid_reason(geom)})
    if geom.area <= 0:
        raise InvalidGeometry(f"The {kind} encloses no area.")
    return geom


def _why_invalid(geom: BaseGeometry) -> str:
    """`explain_validity` ("Self-intersection[10.5 45.2]") as a sentence."""
    reason = str(shapely.is_valid_reason(geom))
    what, _, where = reason.partition("[")
    place = ""
    numbers = where.rstrip("]").split()
    if len(numbers) >= 2:
        place = f" at lon {float(numbers[0]):g}, lat {float(numbers[1]):g}"
    return (
        f"The geometry is not a valid polygon: {what.strip().lower() or 'invalid'}{place}. "
        "Rings must not cross themselves or each other, and holes must lie inside their shell."
    )


# --- CRS ----------------------------------------------------------------------------------


def _geographic(crs: str) -> bool:
    return crs.upper() in GEOGRAPHIC


@functools.lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> Transformer:
    from pyproj import Transformer

    def name(crs: str) -> str:
        return "OGC:CRS84" if crs.upper() in ("CRS:84", "OGC:CRS84") else crs

    return Transformer.from_crs(name(src), name(dst), always_xy=True)


def lonlat_bbox(bbox: BBox, crs: str) -> BBox:
    """`bbox` (in `crs`) as west, south, east, north."""
    if _geographic(crs):
        return bbox
    west, south, east, north = _transformer(crs, "EPSG:4326").transform_bounds(*bbox)
    return (west, south, east, north)


def to_crs(geom: BaseGeometry, crs: str) -> BaseGeometry:
    """A lon/lat geometry in `crs` (x/y order; unchanged for geographic CRSs)."""
    if _geographic(crs):
        return geom
    transformer = _transformer("EPSG:4326", crs)

    def project(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, project)


# --- sizes on the ground ------------------------------------------------------------------


def ground_size_m(bbox: BBox, crs: str) -> tuple[float, float]:
    """The bbox's width along its centre latitude and height along its centre meridian, in
    metres on the WGS 84 ellipsoid."""
    west, south, east, north = lonlat_bbox(bbox, crs)
    mid_lat, mid_lon = (south + north) / 2, (west + east) / 2
    # Geod.inv takes the shorter way round: a box wider than 180° is measured in two halves.
    half = (east - west) / 2
    _, _, w1 = geod().inv(west, mid_lat, west + half, mid_lat)
    _, _, height = geod().inv(mid_lon, south, mid_lon, north)
    return 2 * float(w1), float(height)


def size_for_resolution(bbox: BBox, crs: str, resolution_m: float) -> tuple[int, int]:
    """Width and height in pixels of `bbox` at `resolution_m` metres per pixel."""
    width_m, height_m = ground_size_m(bbox, crs)
    return max(1, round(width_m / resolution_m)), max(1, round(height_m / resolution_m))


def size_fitting(bbox: BBox, crs: str, long_edge: int) -> tuple[int, int]:
    """Width and height with the bbox's ground proportions and `long_edge` pixels on the
    longer side."""
    width_m, height_m = ground_size_m(bbox, crs)
    if width_m >= height_m:
        return long_edge, max(1, round(long_edge * height_m / width_m))
    return max(1, round(long_edge * width_m / height_m)), long_edge


def resolution_of(bbox: BBox, crs: str, width: int, height: int) -> float:
    """Metres per pixel of a `width` x `height` image of `bbox` (the geometric mean of both
    axes)."""
    width_m, height_m = ground_size_m(bbox, crs)
    return math.sqrt((width_m / width) * (height_m / height))


def check_pixels(bbox: BBox, crs: str, width: int, height: int, limit: int) -> None:
    """`AreaTooLarge` when `width` x `height` exceeds `limit`, naming the coarsest resolution
    that fits."""
    pixels = width * height
    if pixels <= limit:
        return
    width_m, height_m = ground_size_m(bbox, crs)
    fits = _round_up(math.sqrt(width_m * height_m / limit))
    raise AreaTooLarge(
        f"The image would be {width} x {height} = {pixels:,} pixels; the limit is {limit:,} "
        f"(max_area_pixels). Ask for a resolution of {fits:g} m/px or coarser, or a smaller "
        "area.",
        extra={"pixels": pixels, "limit": limit, "resolution_fits_m": fits},
    )


@functools.lru_cache(maxsize=64)
def _pixels_inside(region: AreaOfInterest, shape: tuple[int, int], bbox: BBox) -> int:
    """How many pixels of an image lie inside `region` (remembered: every date of a time series
    asks for the same count)."""
    return int(np.count_nonzero(region.mask(shape, bbox)))


def _round_up(value: float) -> float:
    """`value` rounded up to two significant digits."""
    if value <= 0:
        return value
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return float(round(math.ceil(value / scale - 1e-9) * scale, 10))


# --- the area of one request --------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Region:
    """A request's area of interest: its lon/lat geometry, that geometry in the request's CRS,
    and the image's bbox (the geometry's bounds, in the CRS)."""

    lonlat: BaseGeometry
    geometry: BaseGeometry
    crs: str
    bbox: BBox

    @classmethod
    def of(cls, geojson: Mapping[str, Any], crs: str) -> Region:
        """The region of a GeoJSON geometry, for images in `crs`."""
        lonlat = parse_geometry(geojson)
        geometry = to_crs(lonlat, crs)
        minx, miny, maxx, maxy = (float(v) for v in geometry.bounds)
        if not (minx < maxx and miny < maxy):
            raise InvalidGeometry("The geometry has no width or no height.")
        return cls(lonlat=lonlat, geometry=geometry, crs=crs, bbox=(minx, miny, maxx, maxy))

    @property
    def vertices(self) -> int:
        """How many coordinates the geometry has."""
        return int(shapely.get_num_coordinates(self.lonlat))

    @functools.cached_property
    def key(self) -> str:
        """The lon/lat geometry's WKB, in hex: equal for equal polygons."""
        return str(self.lonlat.wkb_hex)

    @functools.cached_property
    def area_km2(self) -> float:
        """The geodesic area inside the geometry (holes excluded), in km²."""
        area: float = geod().geometry_area_perimeter(self.lonlat)[0]
        return abs(area) / 1e6

    def mask(self, shape: tuple[int, int], bbox: BBox | None = None) -> NDArray[np.bool_]:
        """(H, W): True for the pixels of an image of `bbox` (the region's by default) whose
        centres lie inside the geometry. Blocking (numpy/GDAL): run it in a worker thread."""
        from rasterio.features import geometry_mask

        height, width = shape
        outside: NDArray[np.bool_] = geometry_mask(
            [_polygons(self.geometry)],
            out_shape=(height, width),
            transform=geotransform(bbox if bbox is not None else self.bbox, width, height),
        )
        return ~outside


def geotransform(bbox: BBox, width: int, height: int) -> Affine:
    """The affine transform from pixel (column, row) to the bbox's coordinates (north up)."""
    minx, miny, maxx, maxy = bbox
    return Affine((maxx - minx) / width, 0.0, minx, 0.0, -(maxy - miny) / height, maxy)


def _polygons(geom: BaseGeometry) -> Polygon | MultiPolygon:
    assert isinstance(geom, Polygon | MultiPolygon)
    return geom


# --- tiles --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """One GetMap of a grid: its pixel window in the whole image and its bbox."""

    index: int
    col: int
    row: int
    x: int  # first column of the whole image
    y: int  # first row (from the top)
    width: int
    height: int
    bbox: BBox

    def describe(self, total: int) -> str:
        """ "tile 3 of 8 (columns 1000-1999, rows 0-749)"."""
        return (
            f"tile {self.index + 1} of {total} (columns {self.x}-{self.x + self.width - 1}, "
            f"rows {self.y}-{self.y + self.height - 1})"
        )


def tile_grid(bbox: BBox, width: int, height: int, max_width: int, max_height: int) -> list[Tile]:
    """The fewest tiles, each at most `max_width` x `max_height`, that cover a `width` x
    `height` image of `bbox`. Tile edges fall on whole pixels of the whole image, so each
    tile's bbox has exactly its pixel size and the tiles stitch without seams."""
    cols = math.ceil(width / max_width)
    rows = math.ceil(height / max_height)
    xs = [width * i // cols for i in range(cols + 1)]
    ys = [height * j // rows for j in range(rows + 1)]
    minx, miny, maxx, maxy = bbox
    dx, dy = (maxx - minx) / width, (maxy - miny) / height
    tiles: list[Tile] = []
    for row in range(rows):
        for col in range(cols):
            x0, x1, y0, y1 = xs[col], xs[col + 1], ys[row], ys[row + 1]
            tiles.append(
                Tile(
                    index=len(tiles),
                    col=col,
                    row=row,
                    x=x0,
                    y=y0,
                    width=x1 - x0,
                    height=y1 - y0,
                    bbox=(
                        minx + x0 * dx if x0 else minx,
                        maxy - y1 * dy if y1 != height else miny,
                        minx + x1 * dx if x1 != width else maxx,
                        maxy - y0 * dy if y0 else maxy,
                    ),
                )
            )
    return tiles


# --- what an answer says about its area ---------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AreaInfo:
    """The figures of an area request's image."""

    area_km2: float  # geodesic, inside the geometry (or the bbox without one)
    bbox: BBox  # the image's, in its CRS
    pixels: int  # pixels inside the geometry (centres); all of them without one
    width: int
    height: int
    resolution_m: float
    tiles: int  # GetMaps the image took (1 when it fit in one)


def area_info(
    region: AreaOfInterest | None,
    bbox: BBox,
    crs: str,
    *,
    width: int,
    height: int,
    resolution_m: float | None,
    tiles: int,
) -> AreaInfo:
    """An image's `AreaInfo` (blocking for a geometry: its mask is counted; run it in a
    worker thread)."""
    if region is not None:
        km2 = region.area_km2
        pixels = _pixels_inside(region, (height, width), bbox)
    else:
        west, south, east, north = lonlat_bbox(bbox, crs)
        area, _ = geod().geometry_area_perimeter(shapely.box(west, south, east, north))
        km2, pixels = abs(float(area)) / 1e6, width * height
    return AreaInfo(
        area_km2=round(km2, 4),
        bbox=bbox,
        pixels=pixels,
        width=width,
        height=height,
        resolution_m=round(
            resolution_m if resolution_m is not None else resolution_of(bbox, crs, width, height),
            3,
        ),
        tiles=tiles,
    )
