"""A real OGC WMS server (MapServer 8 as FastCGI behind lighttpd) for tests.

Everything is generated at run time in a temporary directory:

* one small georeferenced RGB GeoTIFF per date (``numpy`` + Pillow -> PNG ->
  ``gdal_translate -a_srs EPSG:4326 -a_ullr``), with known, asymmetric content;
* a raster tile index (``gdaltindex`` + ``ogr2ogr`` adding a ``date`` column)
  that gives the layer ``scene`` a WMS TIME dimension;
* a MapServer 8 config file (``mapserver.conf``, mandatory since 8.0) and a
  mapfile;
* a lighttpd config that spawns ``mapserv`` through ``mod_fastcgi``.

Scene geometry (EPSG:4326, lon 10..14, lat 45..47, 400x200 px, 0.01 deg/px)::

    lat 47 +-------+---------------+-------------------------------+
           | MARK  |               |                               |
    46.5   +-------+               |                               |
           |          FOREST       |            WATER              |
    46.2   |   +--------------+    |                               |
           |   | (2024-06-01: |    |                               |
           |   |   CLEARCUT)  |    |                               |
    45.2   |   +--------------+    |                               |
    lat 45 +-----------------------+-------------------------------+
         lon 10  10.2   11   11.8  12                             14

The geometry and colours are module constants so tests can compute expected
colours (:func:`expected_colour`) and area fractions (:func:`expected_fractions`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------- #
# Scene description (all boxes are (min_lon, min_lat, max_lon, max_lat))
# --------------------------------------------------------------------------- #

RGB = tuple[int, int, int]
BBox = tuple[float, float, float, float]

LAYER: Final = "scene"
"""Time-enabled raster layer (TIME dimension over :data:`TIMES`)."""
STATIC_LAYER: Final = "scene_static"
"""Same raster for :data:`STATIC_DATE` only, without a TIME dimension."""
TIMES: Final[tuple[str, ...]] = ("2024-01-01", "2024-06-01")
DEFAULT_TIME: Final = "2024-06-01"
STATIC_DATE: Final = "2024-06-01"

SCENE_BBOX: Final[BBox] = (10.0, 45.0, 14.0, 47.0)
"""Full raster extent, lon/lat order (asymmetric: 4 deg wide, 2 deg high)."""
SCENE_WIDTH: Final = 400
SCENE_HEIGHT: Final = 200
DEG_PER_PX: Final = 0.01

FOREST: Final[RGB] = (34, 139, 34)
WATER: Final[RGB] = (20, 50, 120)
MARKER: Final[RGB] = (220, 40, 40)
CLEARCUT: Final[RGB] = (150, 110, 70)
BACKGROUND: Final[RGB] = (255, 255, 255)
"""MapServer IMAGECOLOR: what GetMap returns outside the raster extent."""

FOREST_BOX: Final[BBox] = (10.0, 45.0, 12.0, 47.0)
"""West half. Painted first; MARKER/CLEARCUT are painted on top of it."""
WATER_BOX: Final[BBox] = (12.0, 45.0, 14.0, 47.0)
"""East half."""
MARKER_BOX: Final[BBox] = (10.0, 46.5, 11.0, 47.0)
"""North-west corner marker (present on every date): shows axis swaps/flips."""
CLEARCUT_BOX: Final[BBox] = (10.2, 45.2, 11.8, 46.2)
"""Brown patch present from 2024-06-01 on: exactly 20 % of the scene area
(40 % of the forest half)."""
CLEARCUT_FROM: Final = "2024-06-01"

CLOUDY_LAYER: Final = "cloudy"
"""The same scene on many dates under clouds of known extent (TIME over :data:`CLOUDY_TIMES`)."""
CLOUD: Final[RGB] = (240, 240, 240)
"""Bright and grey: the local analyzer's cloud class."""
NODATA: Final[RGB] = (0, 0, 0)
"""Black fill: the local analyzer's no-data class."""
CLOUDY_DATES: Final[Mapping[str, tuple[BBox, ...]]] = {
    # date -> cloud boxes; fractions of the whole scene in the comments.
    "2024-05-04": ((10.0, 45.0, 13.2, 47.0),),  # 80 %
    "2024-05-19": ((10.0, 45.0, 11.2, 47.0),),  # 30 %
    "2024-06-03": ((10.0, 45.0, 12.4, 47.0),),  # 60 %
    "2024-06-18": ((10.0, 45.0, 10.4, 47.0),),  # 10 %
    "2024-07-03": ((13.2, 45.0, 14.0, 47.0),),  # 20 %, all in the east
    "2024-07-18": ((10.0, 45.0, 12.0, 47.0),),  # 50 %, all in the west
    "2024-08-02": (),  # clear: the clearest date of the layer
    "2024-08-17": (),  # no cloud, but 40 % no-data (see CLOUDY_NODATA)
    "2024-09-01": ((10.0, 45.0, 13.6, 47.0),),  # 90 %
    "2024-09-16": ((10.0, 45.0, 14.0, 47.0),),  # 100 %
    "2024-10-01": (),  # its file is corrupt: every GetMap for it fails (CLOUDY_BROKEN)
    "2024-10-10": ((10.0, 45.0, 12.8, 47.0),),  # 70 %
    "2024-10-20": ((10.0, 45.0, 11.2, 47.0),),  # 30 %
}
CLOUDY_TIMES: Final[tuple[str, ...]] = tuple(CLOUDY_DATES)
CLOUDY_NODATA: Final[Mapping[str, tuple[BBox, ...]]] = {"2024-08-17": ((10.0, 45.0, 11.6, 47.0),)}
CLOUDY_BROKEN: Final = "2024-10-01"
"""Listed in the layer's TIME values, but its GeoTIFF is overwritten with junk after indexing."""

DEFAULT_PORT_RETRIES: Final = 3
STARTUP_TIMEOUT_S: Final = 20.0

REQUIRED_EXECUTABLES: Final[Mapping[str, str]] = {
    "mapserv": "cgi-mapserver",
    "lighttpd": "lighttpd",
    "gdal_translate": "gdal-bin",
    "gdaltindex": "gdal-bin",
    "ogr2ogr": "gdal-bin",
}
"""Executable -> Debian package providing it."""

MAPSERV_CANDIDATES: Final = ("/usr/lib/cgi-bin/mapserv", "/usr/bin/mapserv")


def _box_area(box: BBox) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _in_box(lon: float, lat: float, box: BBox) -> bool:
    return box[0] <= lon < box[2] and box[1] <= lat < box[3]


def expected_colour(lon: float, lat: float, date: str = DEFAULT_TIME) -> RGB:
    """Colour of the scene at ``(lon, lat)`` on ``date`` (BACKGROUND outside)."""
    if not (SCENE_BBOX[0] <= lon <= SCENE_BBOX[2] and SCENE_BBOX[1] <= lat <= SCENE_BBOX[3]):
        return BACKGROUND
    if _in_box(lon, lat, MARKER_BOX):
        return MARKER
    if date >= CLEARCUT_FROM and _in_box(lon, lat, CLEARCUT_BOX):
        return CLEARCUT
    return FOREST if lon < WATER_BOX[0] else WATER


def expected_fractions(date: str = DEFAULT_TIME) -> dict[RGB, float]:
    """Area fraction of each colour over the full :data:`SCENE_BBOX` on ``date``."""
    total = _box_area(SCENE_BBOX)
    marker = _box_area(MARKER_BOX)
    clearcut = _box_area(CLEARCUT_BOX) if date >= CLEARCUT_FROM else 0.0
    fractions = {
        FOREST: (_box_area(FOREST_BOX) - marker - clearcut) / total,
        WATER: _box_area(WATER_BOX) / total,
        MARKER: marker / total,
    }
    if clearcut:
        fractions[CLEARCUT] = clearcut / total
    return fractions


def _box_to_pixels(box: BBox) -> tuple[slice, slice]:
    """(row slice, column slice) of ``box`` in the scene raster."""
    col0 = round((box[0] - SCENE_BBOX[0]) / DEG_PER_PX)
    col1 = round((box[2] - SCENE_BBOX[0]) / DEG_PER_PX)
    row0 = round((SCENE_BBOX[3] - box[3]) / DEG_PER_PX)
    row1 = round((SCENE_BBOX[3] - box[1]) / DEG_PER_PX)
    return slice(row0, row1), slice(col0, col1)


def scene_pixels(date: str) -> np.ndarray:
    """The RGB raster (``SCENE_HEIGHT x SCENE_WIDTH x 3``, uint8) for ``date``."""
    img = np.zeros((SCENE_HEIGHT, SCENE_WIDTH, 3), dtype=np.uint8)
    img[_box_to_pixels(FOREST_BOX)] = FOREST
    img[_box_to_pixels(WATER_BOX)] = WATER
    if date >= CLEARCUT_FROM:
        img[_box_to_pixels(CLEARCUT_BOX)] = CLEARCUT
    img[_box_to_pixels(MARKER_BOX)] = MARKER
    return img


def _overlap(a: BBox, b: BBox) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(width, 0.0) * max(height, 0.0)


def expected_cloud_fraction(date: str, bbox: BBox = SCENE_BBOX) -> float:
    """Share of ``bbox`` (inside the scene) under cloud on ``date`` of :data:`CLOUDY_LAYER`."""
    return sum(_overlap(box, bbox) for box in CLOUDY_DATES[date]) / _box_area(bbox)


def expected_nodata_fraction(date: str, bbox: BBox = SCENE_BBOX) -> float:
    """Share of ``bbox`` (inside the scene) that is no-data on ``date`` of :data:`CLOUDY_LAYER`."""
    return sum(_overlap(box, bbox) for box in CLOUDY_NODATA.get(date, ())) / _box_area(bbox)


def cloudy_pixels(date: str) -> np.ndarray:
    """The :data:`CLOUDY_LAYER` raster for ``date``: the late scene, then no-data, then clouds."""
    img = scene_pixels(CLEARCUT_FROM)
    for box in CLOUDY_NODATA.get(date, ()):
        img[_box_to_pixels(box)] = NODATA
    for box in CLOUDY_DATES[date]:
        img[_box_to_pixels(box)] = CLOUD
    return img


EARTH_RADIUS_M: Final = 6378137.0


def lonlat_to_mercator(lon: float, lat: float) -> tuple[float, float]:
    """EPSG:4326 lon/lat -> EPSG:3857 x/y (metres)."""
    x = math.radians(lon) * EARTH_RADIUS_M
    y = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) * EARTH_RADIUS_M
    return x, y


def expected_image(
    bbox: BBox = SCENE_BBOX,
    width: int = SCENE_WIDTH,
    height: int = SCENE_HEIGHT,
    date: str = DEFAULT_TIME,
    crs: str = "EPSG:4326",
) -> np.ndarray:
    """What an ideal GetMap returns (``height x width x 3`` uint8), sampled at pixel centres.

    ``bbox`` is in x/y order (lon/lat for EPSG:4326 and CRS:84, metres for EPSG:3857).
    Real answers may differ along region edges by a pixel (rounding, resampling).
    """
    x0, y0, x1, y1 = bbox
    xs = x0 + (np.arange(width) + 0.5) * (x1 - x0) / width
    ys = y1 - (np.arange(height) + 0.5) * (y1 - y0) / height
    x, y = np.meshgrid(xs, ys)
    if crs.upper() == "EPSG:3857":
        lon = np.degrees(x / EARTH_RADIUS_M)
        lat = np.degrees(2 * np.arctan(np.exp(y / EARTH_RADIUS_M)) - np.pi / 2)
    elif crs.upper() in ("EPSG:4326", "CRS:84"):
        lon, lat = x, y
    else:
        raise ValueError(f"unsupported CRS {crs}")

    def inside(box: BBox) -> np.ndarray:
        return (lon >= box[0]) & (lon < box[2]) & (lat >= box[1]) & (lat < box[3])

    img = np.empty((height, width, 3), dtype=np.uint8)
    img[...] = BACKGROUND
    img[inside(FOREST_BOX)] = FOREST
    img[inside(WATER_BOX)] = WATER
    if date >= CLEARCUT_FROM:
        img[inside(CLEARCUT_BOX)] = CLEARCUT
    img[inside(MARKER_BOX)] = MARKER
    return img


def colour_fractions(
    img: np.ndarray, colours: Sequence[RGB], tolerance: int = 0
) -> dict[RGB, float]:
    """Fraction of pixels of ``img`` (H x W x 3+) within ``tolerance`` of each colour."""
    rgb = img[..., :3].astype(np.int16)
    total = rgb.shape[0] * rgb.shape[1]
    return {
        c: float((np.abs(rgb - np.array(c, dtype=np.int16)).max(axis=-1) <= tolerance).sum())
        / total
        for c in colours
    }


# --------------------------------------------------------------------------- #
# Availability / helpers
# --------------------------------------------------------------------------- #


def find_mapserv() -> str | None:
    """Path of the ``mapserv`` (FastCGI-capable CGI) binary, if installed."""
    for candidate in MAPSERV_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("mapserv")


def _find_lighttpd() -> str | None:
    return shutil.which("lighttpd") or next(
        (p for p in ("/usr/sbin/lighttpd",) if os.access(p, os.X_OK)), None
    )


def mapserver_available() -> str | None:
    """``None`` if everything needed is installed, else a message naming what is missing."""
    missing: list[str] = []
    for exe, package in REQUIRED_EXECUTABLES.items():
        if exe == "mapserv":
            found = find_mapserv()
        elif exe == "lighttpd":
            found = _find_lighttpd()
        else:
            found = shutil.which(exe)
        if found is None:
            missing.append(f"{exe} (Debian package {package})")
    if not missing:
        return None
    packages = sorted({REQUIRED_EXECUTABLES[m.split()[0]] for m in missing})
    return (
        "MapServer WMS test server unavailable, missing: "
        + ", ".join(missing)
        + f"; install with: apt-get install -y {' '.join(packages)}"
    )


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (racy by nature; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(cmd: Sequence[str], cwd: Path) -> None:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )


def _quote(value: str | Path) -> str:
    """Double-quoted string literal for mapfiles and lighttpd configs."""
    text = str(value)
    if '"' in text or "\n" in text:
        raise ValueError(f"unsupported character in {text!r}")
    return f'"{text}"'


# --------------------------------------------------------------------------- #
# Data generation
# --------------------------------------------------------------------------- #


def write_geotiff(path: Path, date: str, pixels: np.ndarray | None = None) -> Path:
    """Write the scene for ``date`` (or ``pixels``) as an RGB GeoTIFF (EPSG:4326) at ``path``."""
    png = path.with_suffix(".src.png")
    Image.fromarray(scene_pixels(date) if pixels is None else pixels, mode="RGB").save(png)
    min_lon, min_lat, max_lon, max_lat = SCENE_BBOX
    _run(
        [
            "gdal_translate",
            "-q",
            "-of",
            "GTiff",
            "-a_srs",
            "EPSG:4326",
            "-a_ullr",
            *(str(v) for v in (min_lon, max_lat, max_lon, min_lat)),
            "-co",
            "PHOTOMETRIC=RGB",
            png.name,
            str(path),
        ],
        cwd=path.parent,
    )
    png.unlink()
    return path


def write_time_tileindex(directory: Path, tiffs: Mapping[str, Path], prefix: str = "scene") -> Path:
    """Shapefile tile index with ``location`` (absolute path) and ``date`` columns.

    ``gdaltindex`` writes footprints and locations; it cannot add attributes, so
    ``ogr2ogr`` copies it with an OGR-SQL computed ``date`` column (files are named
    ``<prefix>_<date>.tif``, the prefix being five or six letters). The OGR-SQL
    dialect (not SQLite) is used because it keeps ``location`` 254 characters
    wide (the SQLite dialect shrinks it to 80, truncating long temp paths).
    """
    raw = directory / "tindex_raw.shp"
    index = directory / "tindex.shp"
    # gdaltindex wants all files in one call; derive the date from the file name.
    for date, tif in tiffs.items():
        if tif.name != f"{prefix}_{date}.tif":
            raise ValueError(f"{tif} must be named {prefix}_{date}.tif")
    _run(
        [
            "gdaltindex",
            "-write_absolute_path",
            "-tileindex",
            "location",
            raw.name,
            *(str(p) for p in tiffs.values()),
        ],
        cwd=directory,
    )
    # "<prefix>_YYYY-MM-DD.tif": the date is the 10 characters 14 from the end.
    _run(
        [
            "ogr2ogr",
            "-f",
            "ESRI Shapefile",
            index.name,
            raw.name,
            "-sql",
            f"SELECT location, CAST(SUBSTR(location, -14, 10) AS character(10)) AS date "
            f"FROM {raw.stem}",
        ],
        cwd=directory,
    )
    return index


# MapServer 8 refuses to run without a config file (``msLoadConfig(): Unable to
# access file``); Debian ships none in /etc, so we write our own and point
# MAPSERVER_CONFIG_FILE at it via lighttpd's ``bin-environment`` (read once at
# process start). MS_MAPFILE must live in the config's ENV block: under FastCGI
# mapserv replaces its environment with each request's CGI variables, so an
# MS_MAPFILE from ``bin-environment`` is lost ("CGI variable "map" is not set").
# MS_MAP_NO_PATH forbids ?map=/some/path.
MAPSERVER_CONF_TEMPLATE: Final = """CONFIG
  ENV
    MS_MAPFILE {mapfile}
    MS_MAP_NO_PATH "1"
    MS_ERRORFILE {errorfile}
  END
END
"""

# Raster TIME: the layer reads its tiles through TILEINDEX (a shapefile whose
# ``location`` column holds the GeoTIFF paths) and ``wms_timeitem`` names the
# index's ``date`` column; MapServer turns TIME=... into a filter on that column.
MAPFILE_TEMPLATE: Final = """MAP
  NAME "satapi_test"
  STATUS ON
  SIZE 256 256
  MAXSIZE {max_size}
  EXTENT {extent}
  UNITS DD
  IMAGECOLOR {background}
  SHAPEPATH {shapepath}
  # Level 1: errors (e.g. LayerNotDefined) plus one line per request in mapserver-error.log.
  DEBUG 1

  PROJECTION
    "init=epsg:4326"
  END

  OUTPUTFORMAT
    NAME "png"
    DRIVER "AGG/PNG"
    MIMETYPE "image/png"
    IMAGEMODE RGB
    EXTENSION "png"
    FORMATOPTION "COMPRESSION=1"
  END
  OUTPUTFORMAT
    NAME "png_rgba"
    DRIVER "AGG/PNG"
    MIMETYPE "image/png; mode=32bit"
    IMAGEMODE RGBA
    TRANSPARENT ON
    EXTENSION "png"
    FORMATOPTION "COMPRESSION=1"
  END
  OUTPUTFORMAT
    NAME "jpeg"
    DRIVER "AGG/JPEG"
    MIMETYPE "image/jpeg"
    IMAGEMODE RGB
    EXTENSION "jpg"
    FORMATOPTION "QUALITY=90"
  END

  WEB
    METADATA
      "wms_title"            "satapi test WMS (MapServer)"
      "wms_abstract"         "Synthetic scenes generated by tests/support/mapserver.py"
      "wms_onlineresource"   {online_resource}
      "wms_srs"              "EPSG:4326 CRS:84 EPSG:3857"
      "wms_enable_request"   "*"
      "wms_getmap_formatlist" "image/png,image/png; mode=32bit,image/jpeg"
      "wms_feature_info_mime_type" "text/plain"
    END
  END

  LAYER
    NAME "{layer}"
    TYPE RASTER
    STATUS ON
    TILEINDEX {tileindex}
    TILEITEM "location"
    PROJECTION
      "init=epsg:4326"
    END
    METADATA
      "wms_title"        "Synthetic scene with a TIME dimension"
      "wms_extent"       {extent_q}
      "wms_timeextent"   {timeextent}
      "wms_timeitem"     "date"
      "wms_timedefault"  {timedefault}
    END
  END

  LAYER
    NAME "{cloudy_layer}"
    TYPE RASTER
    STATUS ON
    TILEINDEX {cloudy_tileindex}
    TILEITEM "location"
    PROJECTION
      "init=epsg:4326"
    END
    METADATA
      "wms_title"        "Synthetic scene under clouds of known extent, with a TIME dimension"
      "wms_extent"       {extent_q}
      "wms_timeextent"   {cloudy_timeextent}
      "wms_timeitem"     "date"
      "wms_timedefault"  {cloudy_timedefault}
    END
  END

  LAYER
    NAME "{static_layer}"
    TYPE RASTER
    STATUS ON
    DATA {static_data}
    PROJECTION
      "init=epsg:4326"
    END
    METADATA
      "wms_title"  "Synthetic scene ({static_date}), no TIME dimension"
      "wms_extent" {extent_q}
    END
  END
END
"""

LIGHTTPD_CONF_TEMPLATE: Final = """server.modules = ("mod_fastcgi")
server.bind = "127.0.0.1"
server.port = {port}
server.document-root = {docroot}
server.errorlog = {errorlog}
server.breakagelog = {breakagelog}
server.max-request-size = 64
server.tag = "satapi-test"
fastcgi.debug = 0
fastcgi.server = (
  "/wms" => ((
    "socket" => {socket},
    "bin-path" => {mapserv},
    "bin-environment" => ("MAPSERVER_CONFIG_FILE" => {config}),
    "bin-copy-environment" => ("PATH", "LANG", "PROJ_LIB", "PROJ_DATA", "GDAL_DATA"),
    "max-procs" => {procs},
    "check-local" => "disable",
  ))
)
"""


@dataclass(frozen=True)
class SceneData:
    """What :func:`generate_data` wrote."""

    directory: Path
    tiffs: dict[str, Path]
    tileindex: Path
    cloudy_tileindex: Path


def generate_data(directory: Path) -> SceneData:
    """Write one GeoTIFF per date in :data:`TIMES` and their time tile index, and the same for
    :data:`CLOUDY_LAYER` (whose :data:`CLOUDY_BROKEN` file is then spoilt)."""
    directory.mkdir(parents=True, exist_ok=True)
    tiffs = {date: write_geotiff(directory / f"scene_{date}.tif", date) for date in TIMES}
    cloudy_dir = directory / "cloudy"
    cloudy_dir.mkdir(exist_ok=True)
    cloudy = {
        date: write_geotiff(cloudy_dir / f"cloudy_{date}.tif", date, cloudy_pixels(date))
        for date in CLOUDY_TIMES
    }
    cloudy_index = write_time_tileindex(cloudy_dir, cloudy, prefix="cloudy")
    cloudy[CLOUDY_BROKEN].write_bytes(b"not a GeoTIFF any more")
    return SceneData(directory, tiffs, write_time_tileindex(directory, tiffs), cloudy_index)


def write_mapfile(path: Path, data: SceneData, online_resource: str, max_size: int = 4096) -> Path:
    """Write the mapfile serving ``data``; ``online_resource`` is the server's own URL;
    ``max_size`` its MAXSIZE (MaxWidth/MaxHeight in the capabilities)."""
    extent = " ".join(str(v) for v in SCENE_BBOX)
    path.write_text(
        MAPFILE_TEMPLATE.format(
            max_size=max_size,
            extent=extent,
            extent_q=_quote(extent),
            background=" ".join(str(c) for c in BACKGROUND),
            shapepath=_quote(data.directory),
            online_resource=_quote(online_resource),
            layer=LAYER,
            tileindex=_quote(data.tileindex),
            timeextent=_quote(",".join(TIMES)),
            timedefault=_quote(DEFAULT_TIME),
            cloudy_layer=CLOUDY_LAYER,
            cloudy_tileindex=_quote(data.cloudy_tileindex),
            cloudy_timeextent=_quote(",".join(CLOUDY_TIMES)),
            cloudy_timedefault=_quote(CLOUDY_TIMES[-1]),
            static_layer=STATIC_LAYER,
            static_data=_quote(data.tiffs[STATIC_DATE]),
            static_date=STATIC_DATE,
        ),
        encoding="utf-8",
    )
    return path


def write_mapserver_config(path: Path, mapfile: Path, errorfile: Path) -> Path:
    """Write the MapServer 8 config file (``MAPSERVER_CONFIG_FILE``) naming ``mapfile``."""
    path.write_text(
        MAPSERVER_CONF_TEMPLATE.format(mapfile=_quote(mapfile), errorfile=_quote(errorfile)),
        encoding="utf-8",
    )
    return path


# --------------------------------------------------------------------------- #
# The server
# --------------------------------------------------------------------------- #


class MapServerError(RuntimeError):
    """The test WMS could not be started."""


class MapServerWMS:
    """MapServer WMS (FastCGI behind lighttpd) on 127.0.0.1, as a context manager.

    >>> with MapServerWMS() as wms:  # doctest: +SKIP
    ...     httpx.get(wms.url, params={"SERVICE": "WMS", "REQUEST": "GetCapabilities"})

    Attributes (valid after :meth:`start`): ``url`` (``http://127.0.0.1:<port>/wms``),
    ``port``, ``layer``, ``static_layer``, ``times``, ``default_time``, ``bbox``
    (lon/lat), ``tmpdir``, ``data``, ``mapfile``, ``startup_seconds``.
    """

    layer: str = LAYER
    static_layer: str = STATIC_LAYER
    times: tuple[str, ...] = TIMES
    default_time: str = DEFAULT_TIME
    bbox: BBox = SCENE_BBOX

    def __init__(
        self,
        tmpdir: Path | str | None = None,
        *,
        port: int | None = None,
        procs: int = 4,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        max_size: int | None = None,
    ) -> None:
        """``tmpdir`` is created if needed and kept; without it a temp dir is made and removed.

        ``port`` None picks a free port (retrying if another process grabs it first);
        ``procs`` is the number of FastCGI ``mapserv`` processes; ``max_size`` the largest
        width/height of one GetMap (MapServer's MAXSIZE; default ``$WMS_MAXSIZE`` or 4096).
        """
        self.max_size = max_size or int(os.environ.get("WMS_MAXSIZE", "4096"))
        self._own_tmpdir = tmpdir is None
        self.tmpdir = (
            Path(tmpdir) if tmpdir is not None else Path(tempfile.mkdtemp(prefix="satapi-wms-"))
        )
        self._requested_port = port
        self.procs = procs
        self.startup_timeout = startup_timeout
        self.port = 0
        self.data: SceneData | None = None
        self.mapfile = self.tmpdir / "satapi.map"
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._socket_dir: Path | None = None

    # -- public -------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/wms`` (no query string)."""
        if not self.port:
            raise MapServerError("server not started")
        return f"http://127.0.0.1:{self.port}/wms"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def error_log(self) -> Path:
        return self.tmpdir / "lighttpd-error.log"

    @property
    def mapserver_log(self) -> Path:
        return self.tmpdir / "mapserver-error.log"

    def logs(self) -> str:
        """Content of lighttpd's and MapServer's logs (for error messages)."""
        parts = []
        for path in (self.error_log, self.tmpdir / "lighttpd-stdout.log", self.mapserver_log):
            if path.exists() and path.stat().st_size:
                text = path.read_text(errors="replace")
                parts.append(f"--- {path.name} ---\n{text[-4000:]}")
        return "\n".join(parts) or "(logs are empty)"

    def start(self) -> Self:
        """Generate data and configs, start lighttpd, wait for GetCapabilities to answer."""
        missing = mapserver_available()
        if missing:
            raise MapServerError(missing)
        if self._proc is not None:
            raise MapServerError("already started")
        began = time.perf_counter()
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.data = generate_data(self.tmpdir / "data")
        config = write_mapserver_config(
            self.tmpdir / "mapserver.conf", self.mapfile, self.mapserver_log
        )
        attempts = 1 if self._requested_port else DEFAULT_PORT_RETRIES
        for attempt in range(1, attempts + 1):
            self.port = self._requested_port or free_port()
            write_mapfile(self.mapfile, self.data, f"{self.url}?", self.max_size)
            self._launch(config)
            try:
                self._wait_ready()
            except MapServerError:
                port_taken = self._port_taken()
                self._stop_process()
                if port_taken and attempt < attempts:
                    continue
                self.port = 0
                raise
            self.startup_seconds = time.perf_counter() - began
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop lighttpd and its mapserv processes; remove the temp dir if we made it."""
        self._stop_process()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self._own_tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def getmap_params(
        self,
        *,
        version: str = "1.1.1",
        bbox: BBox | None = None,
        width: int = 256,
        height: int = 256,
        layer: str | None = None,
        time: str | None = None,
        fmt: str = "image/png",
        crs: str = "EPSG:4326",
    ) -> dict[str, str]:
        """GetMap query parameters. ``bbox`` is given in x/y (lon/lat) order, default the scene.

        For WMS 1.3.0 with EPSG:4326 the BBOX is written in lat/lon order, as the
        standard requires (CRS:84 and EPSG:3857 stay x/y).
        """
        b = bbox or self.bbox
        if version == "1.3.0" and crs.upper() == "EPSG:4326":
            b = (b[1], b[0], b[3], b[2])
        params = {
            "SERVICE": "WMS",
            "VERSION": version,
            "REQUEST": "GetMap",
            "LAYERS": layer or self.layer,
            "STYLES": "",
            ("CRS" if version == "1.3.0" else "SRS"): crs,
            "BBOX": ",".join(repr(float(v)) for v in b),
            "WIDTH": str(width),
            "HEIGHT": str(height),
            "FORMAT": fmt,
        }
        if time is not None:
            params["TIME"] = time
        return params

    # -- internals ----------------------------------------------------------

    def _socket_path(self) -> Path:
        # lighttpd appends "-<n>" per process; AF_UNIX paths are limited to 107 bytes.
        sock = self.tmpdir / "mapserv.sock"
        if len(str(sock).encode()) <= 90:
            return sock
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="satapi-wms-"))
        return self._socket_dir / "mapserv.sock"

    def _write_lighttpd_conf(self, config: Path) -> Path:
        mapserv = find_mapserv()
        assert mapserv is not None
        conf = self.tmpdir / "lighttpd.conf"
        conf.write_text(
            LIGHTTPD_CONF_TEMPLATE.format(
                port=self.port,
                docroot=_quote(self.tmpdir),
                errorlog=_quote(self.error_log),
                breakagelog=_quote(self.tmpdir / "lighttpd-breakage.log"),
                socket=_quote(self._socket_path()),
                mapserv=_quote(mapserv),
                config=_quote(config),
                procs=self.procs,
            ),
            encoding="utf-8",
        )
        return conf

    def _launch(self, config: Path) -> None:
        conf = self._write_lighttpd_conf(config)
        lighttpd = _find_lighttpd()
        assert lighttpd is not None
        self._stdout = (self.tmpdir / "lighttpd-stdout.log").open("ab")
        self._proc = subprocess.Popen(
            [lighttpd, "-D", "-f", str(conf)],
            cwd=self.tmpdir,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            # Own process group (pgid == lighttpd's pid): lighttpd exits without
            # stopping its FastCGI children, so _stop_process kills the group.
            start_new_session=True,
        )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        probe = f"{self.url}?SERVICE=WMS&REQUEST=GetCapabilities&VERSION=1.3.0"
        deadline = time.monotonic() + self.startup_timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MapServerError(
                    f"lighttpd exited with code {self._proc.returncode}\n{self.logs()}"
                )
            try:
                with urllib.request.urlopen(probe, timeout=2) as resp:
                    body = resp.read()
                if b"<WMS_Capabilities" in body:
                    return
                last = body[:1000].decode(errors="replace")
            except OSError as exc:  # URLError, ConnectionRefused, timeouts
                last = repr(exc)
            time.sleep(0.05)
        raise MapServerError(
            f"WMS at {self.url} not ready after {self.startup_timeout} s "
            f"(last answer: {last})\n{self.logs()}"
        )

    def _port_taken(self) -> bool:
        if not self.error_log.exists():
            return False
        return "Address already in use" in self.error_log.read_text(errors="replace")

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            # The mapserv children survive lighttpd (reparented to init): kill them.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None


def providers_toml(wms: MapServerWMS, name: str = "mapserver") -> str:
    """A satapi settings TOML snippet (see ``satapi.config``) pointing at ``wms``."""
    return (
        f'default_provider = "{name}"\n'
        "\n"
        f"[providers.{name}]\n"
        f'url = "{wms.url}"\n'
        'version = "1.3.0"\n'
        f'default_layer = "{wms.layer}"\n'
        'title = "Local MapServer test WMS"\n'
        f"max_concurrency = {wms.procs * 2}\n"
    )
