"""Shrinks and re-encodes an image to the size and format that Claude's vision input suits best."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, UnidentifiedImageError

from satapi.errors import ImageTooLarge, NotAnImage

# An area's polygon as a pixel mask at a given (H, W): True inside (see `prepare_for_claude`).
InsideMask = Callable[[tuple[int, int]], "np.ndarray"]
# Outside an area's polygon, pixels keep this share of their brightness: the area stands out
# and its surroundings stay recognisable.
OUTSIDE_BRIGHTNESS: Final = 0.3

# Formats a WMS server or a user plausibly sends. Restricting `Image.open` to these keeps Pillow
# from handing untrusted bytes to exotic decoders (EPS would even start Ghostscript).
ALLOWED_FORMATS: Final = ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP")

# Refuse anything larger before decoding: 64 MP is far beyond any sensible GetMap answer, and it
# stays below Pillow's own bomb warning threshold (about 89 MP), so that warning never fires first.
MAX_INPUT_PIXELS: Final = 64_000_000

# JPEG qualities to try, best first, before giving up on quality and shrinking the image instead.
JPEG_QUALITIES: Final = (85, 75, 65, 55, 45)
# How much each dimension shrinks per round when even the lowest quality does not fit.
SHRINK_STEP: Final = 0.75

# Formats Claude takes as they are, with their media types; other formats are re-encoded.
SENDABLE_FORMATS: Final = {"PNG": "image/png", "JPEG": "image/jpeg"}
_PNG_END: Final = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Pixel modes sent unchanged: 8 bits per sample, no palette tricks or colour spaces to convert.
_SENDABLE_MODES: Final = frozenset({"L", "RGB", "RGBA"})

# Modes holding more than 8 bits per sample (16-bit or float rasters, e.g. elevation layers).
_WIDE_MODES: Final = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for a Claude `image` content block."""

    media_type: str
    base64_data: str
    width: int
    height: int


def prepare_for_claude(
    data: bytes,
    *,
    max_long_edge: int = 1568,
    max_pixels: int = 1_150_000,
    max_base64_bytes: int = 3_750_000,
    inside: InsideMask | None = None,
) -> PreparedImage:
    """Decode `data`, downscale it to Claude's limits and re-encode it as base64 PNG or JPEG.

    A PNG or JPEG already within the limits (size, mode, bytes) is sent as it is, undecoded.
    With `inside` (an area's polygon as a mask), the pixels outside it are dimmed to
    `OUTSIDE_BRIGHTNESS`, so the model sees which part is the area.

    The long edge ends up at most `max_long_edge` and the area at most `max_pixels` (larger images
    are downscaled by the API anyway, costing latency and tokens for nothing). Images with real
    transparency stay PNG when that fits in `max_base64_bytes`; everything else becomes JPEG,
    stepping quality and then size down until it fits.

    Blocking and CPU-bound: run it in a worker thread. Raises `NotAnImage` for bytes Pillow
    cannot decode and `ImageTooLarge` for images with more than `MAX_INPUT_PIXELS` pixels.
    """
    if max_long_edge < 1 or max_pixels < 1 or max_base64_bytes < 1024:
        raise ValueError("image limits must be positive (and the byte budget at least 1 KiB)")
    im = _open_checked(data)
    width, height = _fit(im.size, max_long_edge, max_pixels)
    if (
        inside is None
        and (width, height) == im.size
        and _sendable_as_is(im, len(data), max_base64_bytes)
        and _ends_whole(data, im.format)
    ):
        # Already what Claude takes (a 512² PNG from a WMS server): no decode, no resize and no
        # re-encode, the costly part of preparing an image (docs/performance.md).
        return _prepared(SENDABLE_FORMATS[im.format or ""], data, im)
    # Ask JPEG decoders for a DCT-scaled version near twice the target size: much faster than
    # decoding full resolution, and the LANCZOS pass below still does the final, clean reduction.
    im.draft(None, (width * 2, height * 2))
    try:
        im.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise NotAnImage(f"the image data is damaged or truncated: {exc}") from exc
    im = _normalise_mode(im)
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if inside is not None:
        im = _dim_outside(im, inside((height, width)))
    return _encode(im, max_base64_bytes)


def _dim_outside(im: Image.Image, mask: np.ndarray) -> Image.Image:
    """`im` with the pixels where `mask` is False dimmed (alpha kept)."""
    if im.mode not in ("RGB", "RGBA"):
        im = im.convert("RGB")
    arr = np.array(im)
    outside = ~mask.astype(bool)
    arr[outside, :3] = (arr[outside, :3] * OUTSIDE_BRIGHTNESS).astype(np.uint8)
    return Image.fromarray(arr, mode=im.mode)


def _sendable_as_is(im: Image.Image, size: int, max_base64_bytes: int) -> bool:
    """True when the image's own bytes can go to Claude: PNG or 8-bit L/RGB/RGBA JPEG within
    the byte budget (the caller checked its size). Read from the header; nothing is decoded."""
    return (
        im.format in SENDABLE_FORMATS
        and im.mode in _SENDABLE_MODES
        and (size + 2) // 3 * 4 <= max_base64_bytes
    )


def _ends_whole(data: bytes, fmt: str | None) -> bool:
    """True when the data ends as a whole PNG (IEND chunk) or JPEG (EOI marker) does: a cut-off
    file is decoded instead, which reports it as damaged."""
    return data.endswith(_PNG_END) if fmt == "PNG" else data.rstrip(b"\x00").endswith(b"\xff\xd9")


def _open_checked(data: bytes) -> Image.Image:
    """Open lazily (header only) and refuse garbage and oversized images before decoding pixels."""
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning only arrives as an exception when warnings are errors (as in the tests).
        raise ImageTooLarge(f"the image is too large to decode safely: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise NotAnImage("the data is not an image in a supported format") from exc
    w, h = im.size
    if w < 1 or h < 1:
        raise NotAnImage(f"the image has no pixels ({w}x{h})")
    if w * h > MAX_INPUT_PIXELS:
        raise ImageTooLarge(f"the image is {w}x{h} pixels, more than {MAX_INPUT_PIXELS} allowed")
    return im


def _fit(size: tuple[int, int], max_long_edge: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio within both limits (never upscaled)."""
    w, h = size
    scale = min(1.0, max_long_edge / max(w, h), math.sqrt(max_pixels / (w * h)))
    nw, nh = max(1, math.floor(w * scale)), max(1, math.floor(h * scale))
    # Floating point can land one pixel over a limit; shave until both hold.
    while nw * nh > max_pixels or max(nw, nh) > max_long_edge:
        nw, nh = max(1, nw - 1), max(1, nh - 1)
    return nw, nh


def _normalise_mode(im: Image.Image) -> Image.Image:
    """Convert to L, RGB or RGBA (modes both encoders take), keeping alpha only where it is used."""
    if im.mode in _WIDE_MODES:
        return _stretch_to_l(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    if im.mode == "RGBA" and im.getchannel("A").getextrema() == (255, 255):
        im = im.convert("RGB")  # an alpha channel that is opaque everywhere only costs bytes
    return im


def _stretch_to_l(im: Image.Image) -> Image.Image:
    """Map a 16-bit or float raster to 8-bit grey with a 2-98 % percentile stretch.

    A plain `convert("L")` clips everything above 255, which turns most 16-bit data white.
    """
    arr = np.asarray(im, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return Image.new("L", im.size, 0)
    lo, hi = np.percentile(finite, [2.0, 98.0])
    if hi <= lo:
        hi = lo + 1.0
    scaled = np.clip((np.nan_to_num(arr, nan=lo) - lo) * (255.0 / (hi - lo)), 0.0, 255.0)
    return Image.fromarray(scaled.astype(np.uint8))


def _encode(im: Image.Image, max_base64_bytes: int) -> PreparedImage:
    """Encode as PNG (transparency, if it fits) or JPEG, shrinking until the base64 text fits."""
    # base64 turns every 3 bytes into 4 characters.
    max_raw = max_base64_bytes // 4 * 3
    if im.mode == "RGBA":
        png = _save(im, "PNG", optimize=False)
        if len(png) <= max_raw:
            return _prepared("image/png", png, im)
        # Too big as PNG: give up transparency. Black is the usual no-data fill in satellite
        # products, so transparent (no-data) areas keep looking like no data.
        flat = Image.new("RGB", im.size, (0, 0, 0))
        flat.paste(im, mask=im.getchannel("A"))
        im = flat
    while True:
        for quality in JPEG_QUALITIES:
            jpeg = _save(im, "JPEG", quality=quality, optimize=True)
            if len(jpeg) <= max_raw:
                return _prepared("image/jpeg", jpeg, im)
        if im.width == 1 and im.height == 1:
            raise ValueError("cannot fit even a 1x1 JPEG into the byte budget")  # pragma: no cover
        smaller = (max(1, int(im.width * SHRINK_STEP)), max(1, int(im.height * SHRINK_STEP)))
        im = im.resize(smaller, Image.Resampling.LANCZOS)


def _save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def _prepared(media_type: str, raw: bytes, im: Image.Image) -> PreparedImage:
    return PreparedImage(
        media_type=media_type,
        base64_data=base64.b64encode(raw).decode("ascii"),
        width=im.width,
        height=im.height,
    )
