"""Checking an image request against its layer's capabilities: name, CRS, dates and extent.

Servers answer a GetMap for a misspelt layer with an exception, for a date they lack with their
default date, and for a box outside their data with a blank picture. The capabilities (cached by
the image client) say which layers, CRSs, dates and extent exist, so those requests are refused
here, before any GetMap, with the alternatives named. When the capabilities cannot be had, the
request goes ahead unchecked (and the log says so).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Final

from satapi.analyzers.base import DataWindow
from satapi.config import ProviderConfig
from satapi.errors import (
    InvalidRequest,
    OutsideLayer,
    SatapiError,
    TimeNotAvailable,
    UnknownLayer,
    UnsupportedCRS,
)
from satapi.timedim import parse_when, time_available, times_in_window
from satapi.wms_client import GEOGRAPHIC, WEB_MERCATOR, GetMapRequest, ImageClient, LayerInfo

log = logging.getLogger("satapi.layercheck")

LISTED_LAYERS: Final = 20  # an unknown_layer error lists at most this many
_EARTH_RADIUS_M: Final = 6378137.0
_MERCATOR_MAX_LAT: Final = 85.0511287798066
_CRS84_ALIASES: Final = frozenset({"CRS:84", "OGC:CRS84"})


async def check_request(
    client: ImageClient, name: str, provider: ProviderConfig, req: GetMapRequest
) -> DataWindow | None:
    """Refuse `req` on provider `name` when its layer, CRS, time or bbox is not offered.

    Returns where the image will hold data (`DataWindow`, the part inside the layer's extent;
    the whole image gives a window of 0..1) or None when the extent is not known. Providers that
    mosaic scenes themselves (Sentinel Hub) have no capabilities to check against.
    """
    if provider.mosaics_scenes:
        return None
    info = await layer_info(client, name, req.layer)
    if info is None:
        return None
    check_crs(info, req.crs)
    if provider.check_time and req.time is not None:
        check_time(info, req.time)
    return data_window(info, req)


async def check_tile(
    client: ImageClient, name: str, provider: ProviderConfig, layer: str, time: str | None
) -> list[str] | None:
    """Refuse a tile of an unknown layer or of a time it does not offer; the layer's CRSs
    (None when not known). A tile outside the layer's extent is fine: maps ask for them."""
    if provider.mosaics_scenes:
        return None
    info = await layer_info(client, name, layer)
    if info is None:
        return None
    if provider.check_time and time is not None:
        check_time(info, time)
    return info.crs


async def layer_info(client: ImageClient, name: str, layer: str) -> LayerInfo | None:
    """The capabilities' entry for `layer`: `UnknownLayer` when they don't list it, None when
    they cannot be read."""
    try:
        layers = await client.layers(name)
    except SatapiError as exc:
        log.warning(
            "capabilities of %s unavailable (%s); layer, CRS, time and extent not checked",
            name,
            exc.code,
        )
        return None
    for info in layers:
        if info.name == layer:
            return info
    if not layers:
        return None
    names = sorted(info.name for info in layers)
    shown = names[:LISTED_LAYERS]
    more = (
        f" (the first {LISTED_LAYERS} of {len(names)}; GET /api/providers/{name}/layers lists all)"
        if len(names) > LISTED_LAYERS
        else ""
    )
    raise UnknownLayer(
        f"The provider {name!r} has no layer {layer!r}. Its layers: {', '.join(shown)}{more}.",
        extra={
            "layer": layer,
            "layers": shown,
            "layer_count": len(names),
            "layers_url": f"/api/providers/{name}/layers",
        },
    )


def check_crs(info: LayerInfo, crs: str) -> None:
    """`UnsupportedCRS` listing the layer's CRSs when `crs` is not one of them."""
    if not info.crs:
        return
    offered = {c.upper() for c in info.crs}
    if _CRS84_ALIASES & offered:
        offered |= _CRS84_ALIASES
    if crs.upper() in offered:
        return
    raise UnsupportedCRS(
        f"The layer {info.name!r} is not offered in {crs}; it is offered in "
        f"{', '.join(info.crs)}. EPSG:4326 takes the bbox as lon/lat.",
        extra={"crs": crs, "supported": list(info.crs)},
    )


def check_time(info: LayerInfo, time: str) -> None:
    """`TimeNotAvailable` when the layer's TIME values do not offer `time` (an instant, or a
    start/end interval holding none of them), naming the nearest dates before and after."""
    if not info.times:
        raise TimeNotAvailable(
            f"The layer {info.name!r} has no time dimension; leave time out.",
            extra={"layer": info.name, "time": time, "nearest": {"before": None, "after": None}},
        )
    if not _any_parsable(info.times):
        return  # e.g. only "current": nothing to compare with
    try:
        if "/" in time:
            start, end = time.split("/")[:2]
            offered = bool(times_in_window(info.times, f"{start}/{end}").inside)
            window = f"{start}/{end}"
        else:
            offered = time_available(info.times, time)
            window = f"{time}/{time}"
        if offered:
            return
        near = times_in_window(info.times, window)
    except InvalidRequest:
        return  # a value the date parser does not follow: let the server decide
    nearest = {"before": near.before, "after": near.after}
    said = [f"{k} {v}" for k, v in (("before", near.before), ("after", near.after)) if v]
    hint = "nearest offered dates: " + ", ".join(said) if said else "it lists no dates"
    raise TimeNotAvailable(
        f"The layer {info.name!r} has no imagery for {time} ({hint}).",
        extra={"layer": info.name, "time": time, "nearest": nearest},
    )


def _any_parsable(values: Sequence[str]) -> bool:
    for raw in values:
        for item in raw.split(","):
            try:
                parse_when(item.strip().split("/")[0])
            except InvalidRequest:
                continue
            return True
    return False


def _mercator(lon: float, lat: float) -> tuple[float, float]:
    lat = max(-_MERCATOR_MAX_LAT, min(_MERCATOR_MAX_LAT, lat))
    x = math.radians(lon) * _EARTH_RADIUS_M
    y = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) * _EARTH_RADIUS_M
    return x, y


def layer_extent(info: LayerInfo, crs: str) -> tuple[float, float, float, float] | None:
    """The layer's geographic bounding box in `crs` (x/y order; lon/lat for geographic CRSs),
    or None when it is not known or PROJ cannot project it into `crs`."""
    if info.bbox is None or len(info.bbox) != 4:
        return None
    west, south, east, north = info.bbox
    crs_u = crs.upper()
    if crs_u in GEOGRAPHIC:
        return (west, south, east, north)
    if crs_u in WEB_MERCATOR:
        x0, y0 = _mercator(west, south)
        x1, y1 = _mercator(east, north)
        return (x0, y0, x1, y1)
    return _projected(info.bbox, crs)


def _projected(lonlat: Sequence[float], crs: str) -> tuple[float, float, float, float] | None:
    """A lon/lat box in another CRS (`pyproj`, edges densified), or None when PROJ does not
    know the CRS or the box does not project."""
    from pyproj import Transformer
    from pyproj.exceptions import CRSError, ProjError

    try:
        transformer = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        west, south, east, north = lonlat
        x0, y0, x1, y1 = transformer.transform_bounds(west, south, east, north, densify_pts=21)
    except (CRSError, ProjError):
        return None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or not (x0 < x1 and y0 < y1):
        return None
    return (x0, y0, x1, y1)


def data_window(info: LayerInfo, req: GetMapRequest) -> DataWindow | None:
    """The part of `req`'s image inside the layer's extent; `OutsideLayer` when there is none."""
    extent = layer_extent(info, req.crs)
    if extent is None:
        return None
    minx, miny, maxx, maxy = req.bbox
    ex0, ey0, ex1, ey1 = extent
    ix0, iy0 = max(minx, ex0), max(miny, ey0)
    ix1, iy1 = min(maxx, ex1), min(maxy, ey1)
    if ix1 <= ix0 or iy1 <= iy0:
        assert info.bbox is not None
        west, south, east, north = info.bbox
        raise OutsideLayer(
            f"The bbox {list(req.bbox)} ({req.crs}) lies outside the layer {info.name!r}, which "
            f"covers lon {west:g}..{east:g}, lat {south:g}..{north:g}.",
            extra={"layer": info.name, "layer_extent": list(info.bbox), "crs": "CRS:84"},
        )
    width, height = maxx - minx, maxy - miny
    # The image's rows run from the top (maxy) down.
    return DataWindow(
        left=(ix0 - minx) / width,
        top=(maxy - iy1) / height,
        right=(ix1 - minx) / width,
        bottom=(maxy - iy0) / height,
    )
