"""Stitching tiles into one image: PNG, JPEG, or a georeferenced GeoTIFF (`rasterio`).

Blocking and CPU-bound: `build_mosaic` runs in a worker thread. Tiles arrive encoded (PNG or
JPEG bytes) and are decoded one at a time; a GeoTIFF is written window by window, so only one
decoded tile is held at once. PNG and JPEG need the whole canvas in memory (their encoders
take whole images).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Final

import numpy as np
from PIL import Image

from satapi.areas import Tile, geotransform
from satapi.errors import NotAnImage
from satapi.wms_client import BBox

TIFF: Final = "image/tiff"
# GeoTIFF layout: 256 x 256 internal tiles, deflate with the horizontal predictor.
_TIFF_OPTIONS: Final = {
    "tiled": True,
    "blockxsize": 256,
    "blockysize": 256,
    "compress": "deflate",
    "predictor": 2,
    "photometric": "RGB",
    "alpha": "YES",
}


def _rasterio_crs(crs: str) -> str:
    return "OGC:CRS84" if crs.upper() in ("CRS:84", "OGC:CRS84") else crs


def _decode(tile: Tile, data: bytes, mode: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            out = im.convert(mode)
    except (OSError, ValueError, SyntaxError) as exc:
        raise NotAnImage(f"Tile {tile.index + 1} is not a readable image ({exc}).") from exc
    if out.size != (tile.width, tile.height):
        raise NotAnImage(
            f"Tile {tile.index + 1} came back {out.size[0]} x {out.size[1]} px instead of "
            f"{tile.width} x {tile.height}."
        )
    return out


def build_mosaic(
    tiles: Iterable[tuple[Tile, bytes]],
    *,
    width: int,
    height: int,
    fmt: str,
    bbox: BBox,
    crs: str,
) -> bytes:
    """The encoded `width` x `height` image made of `tiles` (each placed at its window)."""
    if fmt == TIFF:
        return _geotiff(tiles, width=width, height=height, bbox=bbox, crs=crs)
    mode = "RGB" if fmt == "image/jpeg" else "RGBA"
    canvas = Image.new(mode, (width, height))
    for tile, data in tiles:
        canvas.paste(_decode(tile, data, mode), (tile.x, tile.y))
    out = io.BytesIO()
    if fmt == "image/jpeg":
        canvas.save(out, "JPEG", quality=90)
    else:
        canvas.save(out, "PNG", compress_level=3)
    return out.getvalue()


def _geotiff(
    tiles: Iterable[tuple[Tile, bytes]], *, width: int, height: int, bbox: BBox, crs: str
) -> bytes:
    from rasterio.io import MemoryFile
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 4,
        "dtype": "uint8",
        "crs": _rasterio_crs(crs),
        "transform": geotransform(bbox, width, height),
        **_TIFF_OPTIONS,
    }
    if width < 256 or height < 256:  # a GeoTIFF's internal tiles must fit the image
        profile.update(tiled=False)
        del profile["blockxsize"], profile["blockysize"]
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            for tile, data in tiles:
                planes = np.asarray(_decode(tile, data, "RGBA")).transpose(2, 0, 1)
                dst.write(planes, window=Window(tile.x, tile.y, tile.width, tile.height))
        return bytes(memory.read())
