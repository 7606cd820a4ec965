"""Checks that downloaded bytes are a whole PNG/JPEG of the expected size (run in a thread)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from satapi.errors import NotAnImage

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}


@dataclass(frozen=True)
class ImageInfo:
    """What decoding the image showed."""

    width: int
    height: int
    content_type: str


def verify_image(
    path: Path,
    *,
    expected_size: tuple[int, int] | None,
    max_pixels: int,
) -> ImageInfo:
    """Fully decode the image at `path`; raise `NotAnImage` unless it is a whole PNG/JPEG.

    The pixel count is checked from the header before any pixel is decoded, so a decompression
    bomb costs nothing.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = im.format or ""
                width, height = im.size
                if fmt not in FORMATS:
                    raise NotAnImage(
                        f"The server sent a {fmt or 'non-image'} file, not a PNG or JPEG image."
                    )
                if width * height > max_pixels:
                    raise NotAnImage(
                        f"The image declares {width}x{height} pixels, more than the "
                        f"{max_pixels} allowed."
                    )
                im.load()
    except NotAnImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise NotAnImage("The server's answer is not a decodable image.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt data surfaces as OSError/SyntaxError from the decoders.
        raise NotAnImage(f"The server's image is truncated or corrupt ({exc}).") from None
    if expected_size is not None and (width, height) != expected_size:
        raise NotAnImage(
            f"The server sent a {width}x{height} image, not the {expected_size[0]}x"
            f"{expected_size[1]} that was asked for."
        )
    return ImageInfo(width=width, height=height, content_type=FORMATS[fmt])


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR header, without decoding it."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise NotAnImage("Not a PNG image.")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
