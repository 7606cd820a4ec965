"""Checks that downloaded bytes are a whole PNG/JPEG of the expected size (run in a thread).

PNGs are verified structurally, in bounded memory and without materialising a single pixel:
every chunk's CRC-32, the IHDR fields, the chunk order, and IEND present. That is what proves a
PNG arrived whole and unchanged: a cut anywhere leaves a chunk or IEND missing, and damage in
transit fails a chunk's CRC. With `inflate=True` (the `png_check = "inflate"` setting) the image
data is also inflated in bounded pieces, whose length must be exactly what the header implies
and whose scanlines must all start with a valid filter type: that also refuses a PNG its server
encoded wrongly (a broken zlib stream under correct CRCs), at ~40x the CPU of the rest (1.5-2 ms
per 512² PNG with ISA-L, against ~0.05 ms). JPEGs, which have no checksums, are decoded by
Pillow at 1/8 scale ("draft" mode): the whole entropy-coded stream is still read, so truncation
is caught, at 1/64 of the pixel memory.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from isal import isal_zlib  # zlib's API on ISA-L: inflates PNG data in half the time
from isal.igzip_lib import IsalError as _IsalError
from PIL import Image, UnidentifiedImageError

from satapi.errors import NotAnImage

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# isal's stub types its exception class as an instance; it is a class (IsalError).
InflateError = cast(type[Exception], _IsalError)
_READ_BLOCK = 64 * 1024  # bytes read from the file at a time
_INFLATE_PIECE = 64 * 1024  # at most this many inflated bytes exist at a time
_MAX_CHUNK_LENGTH = 2**31 - 1  # PNG spec: lengths and dimensions fit in 31 bits
# Allowed bit depths per colour type, and samples per pixel (PNG spec, table 11.1).
_BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (first column, first row, column step, row step).
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
_FILTER_TYPES = bytes(range(5))  # None, Sub, Up, Average, Paeth
_SMALL_CHUNKS = (b"IHDR", b"PLTE", b"IEND")  # at most 768 bytes when valid: always read whole


@dataclass(frozen=True)
class ImageInfo:
    """What verifying the image showed."""

    width: int
    height: int
    content_type: str


def verify_image(
    source: Path | bytes,
    *,
    expected_size: tuple[int, int] | None,
    max_pixels: int,
    inflate: bool = False,
) -> ImageInfo:
    """Raise `NotAnImage` unless `source` (a file, or the bytes themselves) is a whole PNG/JPEG
    (of `expected_size`).

    The format is decided from the bytes, not from any header the server sent. The pixel count
    is checked from the image header before any image data is inflated or decoded, so a
    decompression bomb costs nothing. `inflate`: a PNG's image data is inflated and checked too
    (see the module's docstring).
    """
    with _open(source) as f:
        is_png = f.read(len(_PNG_SIGNATURE)) == _PNG_SIGNATURE
        if is_png:
            width, height = _verify_png(f, max_pixels, inflate)
    if not is_png:
        width, height = _verify_jpeg(source, max_pixels)
    fmt = "PNG" if is_png else "JPEG"
    if expected_size is not None and (width, height) != expected_size:
        raise NotAnImage(
            f"The server sent a {width}x{height} image, not the {expected_size[0]}x"
            f"{expected_size[1]} that was asked for."
        )
    return ImageInfo(width=width, height=height, content_type=FORMATS[fmt])


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR header, without decoding it."""
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise NotAnImage("Not a PNG image.")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# --- shared ------------------------------------------------------------------------------------


def _open(source: Path | bytes) -> BinaryIO:
    """The image's bytes as a binary file: the file itself, or a view of the bytes in memory."""
    return source.open("rb") if isinstance(source, Path) else io.BytesIO(source)


def _corrupt(reason: str) -> NotAnImage:
    return NotAnImage(f"The server's image is truncated or corrupt ({reason}).")


def _check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise NotAnImage(
            f"The image declares {width}x{height} pixels, more than the {max_pixels} allowed."
        )
    # Pillow's own decompression-bomb limit: the analyzers open the image with Pillow later.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and width * height > pillow_limit:
        raise NotAnImage("The server's answer is not a decodable image.")


# --- PNG ---------------------------------------------------------------------------------------


def _verify_png(f: BinaryIO, max_pixels: int, inflate: bool) -> tuple[int, int]:
    """Walk the chunks after the signature; return (width, height) or raise `NotAnImage`."""
    read = f.read
    width = height = colour_type = bits_per_pixel = 0
    interlaced = False
    data: _ImageData | _Unchecked | None = None
    seen_plte = False
    idat_run = "before"  # "before" the first IDAT chunk, "in" the run of IDATs, or "after" it
    head = read(8)
    while True:
        if len(head) < 8:
            raise _corrupt("it ends before the IEND chunk")
        length, ctype = struct.unpack(">I4s", head)
        if not ctype.isalpha():
            raise _corrupt(f"invalid chunk type {ctype.decode('latin-1')!r}")
        if length > _MAX_CHUNK_LENGTH or (length > _READ_BLOCK and ctype in _SMALL_CHUNKS):
            raise _corrupt(f"invalid length of the {ctype.decode()} chunk")
        if (ctype == b"IHDR") != (width == 0):
            raise _corrupt("it does not start with exactly one IHDR chunk")
        if ctype == b"IDAT":
            if idat_run == "after":
                raise _corrupt("its IDAT chunks are not consecutive")
            if data is None:
                if colour_type == 3 and not seen_plte:
                    raise _corrupt("a palette image without a PLTE chunk")
                data = (
                    _ImageData(width, height, bits_per_pixel, interlaced)
                    if inflate
                    else _Unchecked()
                )
            idat_run = "in"
        elif idat_run == "in":
            idat_run = "after"

        if length > _READ_BLOCK:  # a big IDAT or ancillary chunk: in pieces
            feed = data.feed if ctype == b"IDAT" and isinstance(data, _ImageData) else None
            _stream_chunk(f, ctype, length, feed)
            head = read(8)
            continue
        # A small chunk, its CRC and the next chunk's header, in one read.
        block = read(length + 12)
        if len(block) < length + 4:
            raise _corrupt("it ends in the middle of a chunk")
        body = block[:length]
        _check_crc(isal_zlib.crc32(body, isal_zlib.crc32(ctype)), block[length : length + 4], ctype)
        head = block[length + 4 :]
        if ctype == b"IDAT":
            assert data is not None
            data.feed(body)
        elif ctype == b"IHDR":
            width, height, colour_type, bits_per_pixel, interlaced = _parse_ihdr(body)
            _check_pixel_count(width, height, max_pixels)
        elif ctype == b"PLTE":
            if idat_run != "before" or seen_plte:
                raise _corrupt("a misplaced PLTE chunk")
            if not 0 < length <= 3 * 256 or length % 3:
                raise _corrupt("invalid length of the PLTE chunk")
            seen_plte = True
        elif ctype == b"IEND":
            if data is None:
                raise _corrupt("it has no IDAT chunk")
            data.finish()
            # Whatever follows IEND is ignored, as Pillow and libpng do.
            return width, height


def _stream_chunk(
    f: BinaryIO, ctype: bytes, length: int, feed: Callable[[bytes], None] | None
) -> None:
    """Read a chunk's data in bounded pieces, passing them to `feed`, then check its CRC."""
    crc = isal_zlib.crc32(ctype)
    problem: NotAnImage | None = None
    remaining = length
    while remaining:
        piece = f.read(min(remaining, _READ_BLOCK))
        if not piece:
            raise _corrupt("it ends in the middle of a chunk")
        remaining -= len(piece)
        crc = isal_zlib.crc32(piece, crc)
        if feed is not None and problem is None:
            try:
                feed(piece)
            except NotAnImage as exc:
                problem = exc  # finish the chunk first: a bad CRC explains the problem better
    _check_crc(crc, f.read(4), ctype)
    if problem is not None:
        raise problem


def _check_crc(crc: int, stored: bytes, ctype: bytes) -> None:
    if len(stored) < 4:
        raise _corrupt("it ends in the middle of a chunk")
    if int.from_bytes(stored, "big") != crc:
        raise _corrupt(f"bad CRC in {ctype.decode()} chunk")


def _parse_ihdr(body: bytes) -> tuple[int, int, int, int, bool]:
    """(width, height, colour type, bits per pixel, interlaced) from a checked IHDR body."""
    if len(body) != 13:
        raise _corrupt("invalid length of the IHDR chunk")
    width, height, depth, colour_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", body
    )
    if not (0 < width <= _MAX_CHUNK_LENGTH and 0 < height <= _MAX_CHUNK_LENGTH):
        raise _corrupt(f"invalid dimensions {width}x{height}")
    if depth not in _BIT_DEPTHS.get(colour_type, ()):
        raise _corrupt(f"invalid bit depth {depth} for colour type {colour_type}")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise _corrupt("unknown compression, filter or interlace method")
    return width, height, colour_type, depth * _CHANNELS[colour_type], interlace == 1


class _Unchecked:
    """The image data without inflating it: its chunks' CRCs are all that is checked."""

    def feed(self, compressed: bytes) -> None:
        pass

    def finish(self) -> None:
        pass


class _ImageData:
    """Inflates the concatenated IDAT data in bounded pieces and checks what comes out.

    The inflated data must be exactly the scanlines the header implies (for an interlaced
    image, those of the non-empty Adam7 passes), each starting with a filter type 0..4, and the
    zlib stream must end. Pixels themselves are not unfiltered: any byte values are valid.
    """

    def __init__(self, width: int, height: int, bits_per_pixel: int, interlaced: bool) -> None:
        passes: list[tuple[int, int]] = []  # (rows, bytes per row including the filter byte)
        for x0, y0, dx, dy in _ADAM7 if interlaced else ((0, 0, 1, 1),):
            columns = (width - x0 + dx - 1) // dx
            rows = (height - y0 + dy - 1) // dy
            if columns > 0 and rows > 0:
                passes.append((rows, 1 + (columns * bits_per_pixel + 7) // 8))
        self._passes = passes
        self._expected = sum(rows * stride for rows, stride in passes)
        self._produced = 0
        self._pass = 0  # index into _passes of the current scanline
        self._row = 0  # current scanline within its pass
        self._offset = 0  # bytes of the current scanline seen so far
        self._inflater = isal_zlib.decompressobj()

    def feed(self, compressed: bytes) -> None:
        inflater = self._inflater
        while not inflater.eof:  # bytes after the end of the zlib stream are ignored
            try:
                out = inflater.decompress(compressed, _INFLATE_PIECE)
            except InflateError as exc:
                raise _corrupt(f"bad compressed image data: {exc}") from None
            self._scan(out)
            compressed = inflater.unconsumed_tail
            if not compressed and len(out) < _INFLATE_PIECE:
                break  # input used up and no output pending

    def finish(self) -> None:
        if self._produced < self._expected:
            raise _corrupt("its image data ends early")
        if not self._inflater.eof:
            raise _corrupt("its compressed image data does not end")

    def _scan(self, out: bytes) -> None:
        self._produced += len(out)
        if self._produced > self._expected:
            raise _corrupt("it has more image data than its header says")
        pos, end = 0, len(out)
        while pos < end:
            rows, stride = self._passes[self._pass]
            if self._offset:  # finish the current scanline
                step = min(stride - self._offset, end - pos)
                pos += step
                self._offset += step
                if self._offset < stride:
                    return
                self._offset = 0
                self._row += 1
            else:  # whole scanlines: their filter-type bytes are every `stride`-th byte
                span = min(end - pos, (rows - self._row) * stride)
                if out[pos : pos + span : stride].translate(None, _FILTER_TYPES):
                    raise _corrupt("a scanline has an unknown filter type")
                whole, self._offset = divmod(span, stride)
                self._row += whole
                pos += span
            if self._row == rows:
                self._pass += 1
                self._row = 0


# --- JPEG (and everything else) ----------------------------------------------------------------


def _verify_jpeg(source: Path | bytes, max_pixels: int) -> tuple[int, int]:
    """Decode a JPEG at 1/8 scale; reject any other format Pillow identifies (or doesn't)."""
    try:
        raw = io.FileIO(source) if isinstance(source, Path) else io.BytesIO(source)
        with warnings.catch_warnings(), _EofWatch(raw) as f:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                fmt = im.format or ""
                width, height = im.size
                if fmt != "JPEG":
                    raise NotAnImage(
                        f"The server sent a {fmt or 'non-image'} file, not a PNG or JPEG image."
                    )
                _check_pixel_count(width, height, max_pixels)
                # Still entropy-decodes every block (so truncation shows), but writes 1/64 of
                # the pixels.
                im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
                f.reached_eof = False
                im.load()
                # With ImageFile.LOAD_TRUNCATED_IMAGES set (by anyone), Pillow pads a truncated
                # JPEG instead of raising: the data running out is the sign, whatever the flag.
                if f.reached_eof:
                    raise _corrupt("image file is truncated")
    except NotAnImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise NotAnImage("The server's answer is not a decodable image.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt data surfaces as OSError/SyntaxError from the decoders.
        raise _corrupt(str(exc)) from None
    return width, height


class _EofWatch(io.BufferedReader):
    """A buffered file that notes when a read comes back empty (the data has run out)."""

    reached_eof = False

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        if not data and size != 0:
            self.reached_eof = True
        return data
