"""verify_image: structural PNG verification, draft-mode JPEG decoding, and agreement with Pillow.

The PNG verifier never decodes pixels; these tests hold it to Pillow's full decode
(`Image.open(...).load()`, what the verifier used to do) on valid and damaged files. It never
accepts what Pillow rejects. Where they disagree the verifier is stricter, on purpose; each such
test says so ("deliberate"):

* data missing at the end: a zlib stream cut or left unfinished after the last scanline's bytes
  (in its Adler-32 checksum, the IDAT CRC, the IEND chunk), or ending early but on a row
  boundary: Pillow stops reading once it has every row, or leaves the missing rows black;
* more image data than the header implies: Pillow ignores what follows the last row;
* a bad CRC in IDAT or any later chunk: Pillow checks the CRCs of the chunks before IDAT only;
* what the PNG spec requires and Pillow lets pass: IHDR first and once, PLTE present for a
  palette image, before IDAT and a multiple of 3 bytes long, compression method 0, chunk types
  of four ASCII letters, IEND present.
"""

from __future__ import annotations

import io
import random
import struct
import time
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from satapi.errors import NotAnImage
from satapi.imaging import FORMATS, ImageInfo, png_size, verify_image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
MAX_PIXELS = 4096 * 4096


# --- building PNGs by hand ---------------------------------------------------------------------


def chunk(ctype: bytes, body: bytes = b"") -> bytes:
    crc = zlib.crc32(ctype + body)
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", crc)


def ihdr(
    width: int, height: int, depth: int = 8, colour: int = 2, interlace: int = 0, *, comp: int = 0
) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, comp, 0, interlace))


def passes(width: int, height: int, interlace: int) -> list[tuple[int, int]]:
    """(columns, rows) of each non-empty pass: one pass, or Adam7's seven minus empty ones."""
    out = []
    for x0, y0, dx, dy in ADAM7 if interlace else ((0, 0, 1, 1),):
        columns, rows = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if columns > 0 and rows > 0:
            out.append((columns, rows))
    return out


def scanlines(
    width: int, height: int, depth: int, colour: int, interlace: int = 0, seed: int = 0
) -> bytes:
    """Random filtered scanlines (random filter types 0..4, random bytes): always decodable."""
    rng = random.Random(seed)
    out = bytearray()
    for columns, rows in passes(width, height, interlace):
        row_bytes = (columns * depth * CHANNELS[colour] + 7) // 8
        for _ in range(rows):
            out.append(rng.randrange(5))
            out += rng.randbytes(row_bytes)
    return bytes(out)


def build_png(
    width: int,
    height: int,
    depth: int = 8,
    colour: int = 2,
    interlace: int = 0,
    *,
    seed: int = 0,
    raw: bytes | None = None,
    compressed: bytes | None = None,
    idat_size: int | None = None,
    before: Iterable[bytes] = (),
    after: Iterable[bytes] = (),
    iend: bool = True,
) -> bytes:
    """A PNG from its parts. `raw`: the scanlines; `compressed`: the zlib stream, split into IDAT
    chunks of `idat_size` bytes; `before`/`after`: extra chunks around the IDAT run."""
    if raw is None:
        raw = scanlines(width, height, depth, colour, interlace, seed)
    if compressed is None:
        compressed = zlib.compress(raw, 6)
    size = idat_size or max(1, len(compressed))
    idats = [compressed[i : i + size] for i in range(0, len(compressed), size)] or [b""]
    parts = [SIGNATURE, ihdr(width, height, depth, colour, interlace)]
    if colour == 3:
        parts.append(chunk(b"PLTE", random.Random(seed).randbytes(3 * 2**depth)))
    parts += before
    parts += [chunk(b"IDAT", piece) for piece in idats]
    parts += after
    if iend:
        parts.append(chunk(b"IEND"))
    return b"".join(parts)


def pillow_png(im: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **params)
    return buf.getvalue()


def pillow_jpeg(im: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **params)
    return buf.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    arr = rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
    if mode in ("1", "P"):
        return Image.fromarray(arr[:, :, 0]).convert(mode)
    return Image.fromarray(arr if len(mode) > 1 else arr[:, :, 0], mode=None).convert(mode)


def idat_span(png: bytes) -> tuple[int, int]:
    """(start, end) offsets of the first IDAT chunk's data."""
    pos = 8
    while True:
        length, ctype = struct.unpack(">I4s", png[pos : pos + 8])
        if ctype == b"IDAT":
            return pos + 8, pos + 8 + length
        pos += 12 + length


def fix_crcs(png: bytes) -> bytes:
    """The same chunks with every CRC recomputed."""
    out, pos = bytearray(png[:8]), 8
    while pos + 8 <= len(png):
        length, ctype = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + length]
        out += chunk(ctype, body)
        pos += 12 + length
    return bytes(out)


# --- running both verifiers --------------------------------------------------------------------


class Verifier:
    """Runs verify_image on bytes (through one temporary file, or from memory as a download
    held in memory is checked) and Pillow's full decode. `inflate`: the full check
    (`png_check = "inflate"`), which most tests here hold to Pillow; the default check (CRCs
    and structure, no inflate) has its own tests below."""

    def __init__(self, path: Path, *, in_memory: bool = False, inflate: bool = True) -> None:
        self.path = path
        self.in_memory = in_memory
        self.inflate = inflate

    def __call__(
        self,
        data: bytes,
        expected_size: tuple[int, int] | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> ImageInfo:
        self.path.write_bytes(data)
        source = data if self.in_memory else self.path
        return verify_image(
            source, expected_size=expected_size, max_pixels=max_pixels, inflate=self.inflate
        )

    def accepts(self, data: bytes) -> bool:
        try:
            self(data)
        except NotAnImage:
            return False
        return True

    def rejection(self, data: bytes) -> str:
        with pytest.raises(NotAnImage) as caught:
            self(data)
        return str(caught.value)


def pillow_accepts(data: bytes) -> bool:
    """What the old verifier (a full Pillow decode) said."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception:
        return False
    return True


@pytest.fixture(params=["file", "memory"])
def verify(tmp_path: Path, request: pytest.FixtureRequest) -> Verifier:
    return Verifier(tmp_path / "image.bin", in_memory=request.param == "memory")


# --- valid PNGs --------------------------------------------------------------------------------


PILLOW_CASES = [
    ("1", {}),
    ("L", {}),
    ("L", {"bits": 2}),
    ("L", {"bits": 4}),
    ("LA", {}),
    ("P", {}),
    ("P", {"bits": 1}),
    ("P", {"bits": 4}),
    ("RGB", {}),
    ("RGBA", {}),
    ("I;16", {}),
]


@pytest.mark.parametrize(("mode", "params"), PILLOW_CASES)
@pytest.mark.parametrize("size", [(1, 1), (13, 7), (64, 33)])
@pytest.mark.parametrize("optimize", [False, True])
def test_pillow_written_pngs_are_accepted(
    verify: Verifier, mode: str, params: dict[str, int], size: tuple[int, int], optimize: bool
) -> None:
    data = pillow_png(noise(*size, mode=mode), optimize=optimize, **params)
    info = verify(data, expected_size=size)
    assert info == ImageInfo(width=size[0], height=size[1], content_type="image/png")
    assert pillow_accepts(data)


COLOUR_DEPTHS = [(c, d) for c, ds in {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8),
                                        4: (8, 16), 6: (8, 16)}.items() for d in ds]  # fmt: skip


@pytest.mark.parametrize(("colour", "depth"), COLOUR_DEPTHS)
@pytest.mark.parametrize("interlace", [0, 1])
@pytest.mark.parametrize("size", [(1, 1), (2, 9), (5, 3), (17, 11), (40, 40)])
def test_every_colour_type_depth_and_interlace_is_accepted_like_pillow(
    verify: Verifier, colour: int, depth: int, interlace: int, size: tuple[int, int]
) -> None:
    data = build_png(*size, depth, colour, interlace, seed=size[0] * 100 + depth)
    assert verify(data, expected_size=size) == ImageInfo(*size, content_type="image/png")
    assert pillow_accepts(data)


def test_adam7_skips_empty_passes() -> None:
    # A 1x1 image has only the first pass; 2x1 the first and the sixth; 3x3 five of seven.
    assert passes(1, 1, 1) == [(1, 1)]
    assert passes(2, 1, 1) == [(1, 1), (1, 1)]
    assert len(passes(3, 3, 1)) == 5
    assert len(passes(8, 8, 1)) == 7


def test_hand_built_interlaced_png_decodes_to_the_intended_pixels() -> None:
    # The test's own Adam7 encoder is right (so the interlaced cases test something): an
    # interlaced 8-bit grey image whose pixel (x, y) is x + 16*y, decoded by Pillow.
    width, height = 13, 10
    raw = bytearray()
    for x0, y0, dx, dy in ADAM7:
        for y in range(y0, height, dy):
            row = bytes(x + 16 * y for x in range(x0, width, dx))
            if row:
                raw += b"\0" + row
    data = build_png(width, height, 8, 0, 1, raw=bytes(raw))
    with Image.open(io.BytesIO(data)) as im:
        assert np.array_equal(
            np.asarray(im), np.add.outer(16 * np.arange(height), np.arange(width)).astype(np.uint8)
        )


def test_idat_split_into_many_chunks_and_empty_ones_is_accepted(verify: Verifier) -> None:
    data = build_png(31, 17, idat_size=7, seed=3)
    assert data.count(b"IDAT") > 50
    verify(data, expected_size=(31, 17))
    raw = scanlines(9, 9, 8, 2)
    data = build_png(9, 9, compressed=b"", after=[chunk(b"IDAT", zlib.compress(raw))])
    verify(data, expected_size=(9, 9))
    assert pillow_accepts(data)


def test_ancillary_and_unknown_chunks_are_accepted(verify: Verifier) -> None:
    data = build_png(
        8,
        8,
        before=[chunk(b"gAMA", struct.pack(">I", 45455)), chunk(b"prVt", b"\x00\x01")],
        after=[chunk(b"tEXt", b"Comment\0made by hand")],
    )
    verify(data, expected_size=(8, 8))
    assert pillow_accepts(data)


def test_trailing_bytes_after_iend_are_tolerated_like_pillow(verify: Verifier) -> None:
    data = build_png(8, 8) + b"\0garbage after the end" * 100
    verify(data, expected_size=(8, 8))
    assert pillow_accepts(data)


def test_bytes_after_the_zlib_stream_inside_idat_are_tolerated(verify: Verifier) -> None:
    # libpng only warns about these; Pillow never reads them.
    raw = scanlines(8, 8, 8, 2)
    data = build_png(8, 8, compressed=zlib.compress(raw) + b"\x12\x34junk")
    verify(data, expected_size=(8, 8))
    assert pillow_accepts(data)


# --- damaged PNGs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_png() -> bytes:
    data = pillow_png(noise(24, 16, "RGB", seed=7))
    assert len(data) > 1000
    return data


def test_every_truncation_is_rejected_and_pillow_agrees_until_the_last_row(
    verify: Verifier, small_png: bytes
) -> None:
    _start, end = idat_span(small_png)
    pillow_accepted = []
    for cut in range(0, len(small_png), 7):
        truncated = small_png[:cut]
        assert not verify.accepts(truncated), cut
        if pillow_accepts(truncated):
            pillow_accepted.append(cut)
    # Pillow only accepts what is cut inside the zlib stream's 4-byte Adler-32 checksum (once every
    # row is decoded), the IDAT CRC or the IEND chunk: a deliberate difference.
    assert all(cut >= end - 4 for cut in pillow_accepted), pillow_accepted
    for cut in range(end - 4, len(small_png)):
        assert not verify.accepts(small_png[:cut]), cut


def test_truncated_messages_are_sentences(verify: Verifier, small_png: bytes) -> None:
    message = verify.rejection(small_png[: len(small_png) // 2])
    assert message == (
        "The server's image is truncated or corrupt (it ends in the middle of a chunk)."
    )
    message = verify.rejection(small_png[:-12])
    assert message == "The server's image is truncated or corrupt (it ends before the IEND chunk)."
    assert "not a decodable image" in verify.rejection(small_png[:5])
    assert "not a decodable image" in verify.rejection(b"")


def flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_flipped_bit_without_crc_fix_is_a_crc_error(verify: Verifier, small_png: bytes) -> None:
    start, end = idat_span(small_png)
    rng = random.Random(1)
    for bit in rng.sample(range(start * 8, end * 8), 40):
        message = verify.rejection(flipped(small_png, bit))
        assert message.endswith("(bad CRC in IDAT chunk)."), message
    # A chunk too big to read whole (streamed): the damage breaks inflation first, but the CRC
    # is still what the message names.
    big = build_png(200, 200)
    start, end = idat_span(big)
    assert end - start > 100_000
    for at in (start + 10, start + 70_000, end - 5):
        assert verify.rejection(flipped(big, at * 8)).endswith("(bad CRC in IDAT chunk)."), at
    assert "bad compressed image data" in verify.rejection(fix_crcs(flipped(big, start * 8 + 80)))
    # In the header too; Pillow checks the CRCs of the chunks before IDAT, and agrees.
    damaged = flipped(small_png, 20 * 8)
    assert verify.rejection(damaged).endswith("(bad CRC in IHDR chunk).")
    assert not pillow_accepts(damaged)


def test_flipped_bit_with_crc_fixed_is_still_caught(verify: Verifier, small_png: bytes) -> None:
    start, end = idat_span(small_png)
    with Image.open(io.BytesIO(small_png)) as im:
        pixels = np.asarray(im)
    accepted = 0
    for bit in range(start * 8, end * 8, 7):
        damaged = fix_crcs(flipped(small_png, bit))
        if verify.accepts(damaged):
            # Only the padding bits after the last deflate block mean nothing.
            with Image.open(io.BytesIO(damaged)) as im:
                assert np.array_equal(np.asarray(im), pixels), bit
            accepted += 1
        else:
            assert not pillow_accepts(damaged), bit
    assert accepted <= 3


def test_damaged_pixels_in_a_stored_deflate_block_are_caught_by_the_checksum(
    verify: Verifier,
) -> None:
    # Level 0 stores the scanlines as they are: a flipped bit in a pixel byte inflates fine, and
    # only the zlib stream's Adler-32 checksum shows the damage (Pillow checks it too).
    raw = scanlines(20, 10, 8, 2)
    data = build_png(20, 10, compressed=zlib.compress(raw, 0))
    verify(data, expected_size=(20, 10))
    start, _ = idat_span(data)
    for offset in (100, 300, 605):  # after the zlib header (2) and the stored block's header (5)
        damaged = fix_crcs(flipped(data, (start + 2 + 5 + offset) * 8))
        assert "checksum" in verify.rejection(damaged).lower()  # zlib's adler32, via ISA-L
        assert not pillow_accepts(damaged)


def test_bad_crc_in_and_after_idat_is_rejected(verify: Verifier) -> None:
    # Deliberate: Pillow checks the CRCs of the chunks before IDAT only.
    data = build_png(20, 10, after=[chunk(b"tEXt", b"a\0b")])
    _, end = idat_span(data)
    for at, name in ((end, "IDAT"), (end + 4 + 8, "tEXt"), (end + 4 + 8 + 3, "tEXt")):
        damaged = flipped(data, at * 8)
        assert verify.rejection(damaged).endswith(f"(bad CRC in {name} chunk)."), at
        assert pillow_accepts(damaged)
    assert verify.rejection(flipped(data, (len(data) - 1) * 8)).endswith("(bad CRC in IEND chunk).")


def mutations(png: bytes, count: int, seed: int) -> Iterator[bytes]:
    """Damaged copies of `png`: cut, bits flipped, bytes overwritten, chunks dropped or moved."""
    rng = random.Random(seed)
    chunks, pos = [], 8
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4], "big")
        chunks.append(png[pos : pos + 12 + length])
        pos += 12 + length
    for i in range(count):
        kind = i % 5
        if kind == 0:
            yield png[: rng.randrange(len(png))]
        elif kind == 1:
            yield fix_crcs(flipped(png, rng.randrange(8 * 8, 8 * len(png))))
        elif kind == 2:
            at, size = rng.randrange(8, len(png)), rng.randrange(1, 40)
            yield fix_crcs(png[:at] + rng.randbytes(size) + png[at + size :])
        else:
            order = list(chunks)
            j = rng.randrange(len(order))
            if kind == 3:
                del order[j]
            else:
                order.insert(rng.randrange(len(order)), order.pop(j))
            yield SIGNATURE + b"".join(order)


def test_never_more_lenient_than_pillow_on_damaged_files(verify: Verifier) -> None:
    # A palette image with ancillary chunks and its data in three IDAT chunks.
    data = pillow_png(noise(20, 12, "P", seed=9), optimize=False)
    comp = zlib.decompress(data[idat_span(data)[0] : idat_span(data)[1]])
    png = build_png(
        20,
        12,
        8,
        3,
        raw=comp,
        idat_size=len(zlib.compress(comp)) // 3 + 1,
        before=[chunk(b"gAMA", struct.pack(">I", 45455)), chunk(b"tRNS", b"\0\x80")],
        after=[chunk(b"tEXt", b"k\0v")],
    )
    assert verify.accepts(png) and pillow_accepts(png)
    rejected = 0
    for i, damaged in enumerate(mutations(png, 600, seed=3)):
        if verify.accepts(damaged):
            assert pillow_accepts(damaged), i
        else:
            rejected += 1
    assert 300 < rejected < 600  # the rest: chunks moved around, damage inside tEXt


def test_short_image_data_is_rejected(verify: Verifier) -> None:
    raw = scanlines(20, 10, 8, 2)  # 10 rows of 61 bytes
    for missing in (1, 2, 60, 62, 99, len(raw)):
        data = build_png(20, 10, raw=raw[:-missing])
        assert verify.rejection(data).endswith("(its image data ends early)."), missing
        assert not pillow_accepts(data), missing
    for missing in (61, 5 * 61):
        # Deliberate: when the zlib stream ends on a row boundary, Pillow accepts the image and
        # leaves the missing rows black.
        data = build_png(20, 10, raw=raw[:-missing])
        assert verify.rejection(data).endswith("(its image data ends early)."), missing
        assert pillow_accepts(data), missing


def test_long_image_data_is_rejected(verify: Verifier) -> None:
    # Deliberate: Pillow stops after the last row and accepts these.
    raw = scanlines(20, 10, 8, 2)
    for extra in (b"\0", b"\0" * 61, raw):
        data = build_png(20, 10, raw=raw + extra)
        assert verify.rejection(data).endswith("(it has more image data than its header says).")
        assert pillow_accepts(data)


def test_zlib_stream_without_its_end_is_rejected(verify: Verifier) -> None:
    raw = scanlines(20, 10, 8, 2)
    compressor = zlib.compressobj()
    unfinished = compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH)
    data = build_png(20, 10, compressed=unfinished)
    assert verify.rejection(data).endswith("(its compressed image data does not end).")
    assert pillow_accepts(data)  # deliberate difference: every row is there


def test_missing_iend_is_rejected(verify: Verifier) -> None:
    data = build_png(8, 8, iend=False)
    assert verify.rejection(data).endswith("(it ends before the IEND chunk).")
    assert pillow_accepts(data)  # deliberate difference
    data = build_png(8, 8, iend=False, after=[chunk(b"tEXt", b"a\0b")])
    assert verify.rejection(data).endswith("(it ends before the IEND chunk).")


def row_starts(width: int, height: int, bits_per_pixel: int, interlace: int) -> list[int]:
    """Offsets of every scanline's filter-type byte in the inflated data."""
    starts: list[int] = []
    pos = 0
    for columns, rows in passes(width, height, interlace):
        stride = 1 + (columns * bits_per_pixel + 7) // 8
        starts += range(pos, pos + rows * stride, stride)
        pos += rows * stride
    return starts


@pytest.mark.parametrize("interlace", [0, 1])
@pytest.mark.parametrize("row", [0, 3, 9, -1])
@pytest.mark.parametrize("value", [5, 255])
def test_bad_filter_type_is_rejected(
    verify: Verifier, interlace: int, row: int, value: int
) -> None:
    raw = bytearray(scanlines(10, 10, 8, 2, interlace))
    starts = row_starts(10, 10, 24, interlace)
    assert len(starts) == (10 if not interlace else 2 + 2 + 1 + 3 + 2 + 5 + 5)
    raw[starts[row]] = value
    data = build_png(10, 10, interlace=interlace, raw=bytes(raw))
    assert verify.rejection(data).endswith("(a scanline has an unknown filter type).")
    assert not pillow_accepts(data)


@pytest.mark.parametrize("idat_size", [None, 997])
def test_filter_types_are_checked_across_inflate_pieces(
    verify: Verifier, idat_size: int | None
) -> None:
    # Rows of 10_000 bytes span the 64 KiB inflate pieces (or the smaller ones that many small
    # IDAT chunks give): every row's filter byte is found wherever it falls.
    width, height = 3333, 40
    raw = bytes(scanlines(width, height, 8, 2))
    stride = 1 + 3 * width
    verify(build_png(width, height, raw=raw, idat_size=idat_size), expected_size=(width, height))
    for row in range(height):
        bad = bytearray(raw)
        bad[row * stride] = 5 + row
        data = build_png(width, height, raw=bytes(bad), idat_size=idat_size)
        assert verify.rejection(data).endswith("(a scanline has an unknown filter type)."), row


def structure_cases() -> Iterator[tuple[str, bytes, bool]]:
    """(reason in the message, PNG, whether Pillow's full decode accepts it)."""
    raw = scanlines(8, 8, 8, 2)
    comp = zlib.compress(raw)
    half = len(comp) // 2
    rest = build_png(8, 8)[33:]  # everything after the IHDR chunk
    split = [chunk(b"tEXt", b"a\0b"), chunk(b"IDAT", comp[half:])]
    yield (
        "its IDAT chunks are not consecutive",
        build_png(8, 8, compressed=comp[:half], after=split),
        False,
    )
    yield "invalid bit depth 4 for colour type 2", build_png(8, 8, 4, 2, raw=raw), False
    yield "invalid bit depth 8 for colour type 5", build_png(8, 8, 8, 5, raw=raw), False
    yield "invalid dimensions 0x8", SIGNATURE + ihdr(0, 8) + rest, False
    yield "invalid dimensions 8x2147483648", SIGNATURE + ihdr(8, 2**31) + rest, False
    yield (
        "unknown compression, filter or interlace method",
        SIGNATURE + ihdr(8, 8, interlace=2) + rest,
        False,
    )
    yield (
        "unknown compression, filter or interlace method",
        SIGNATURE + ihdr(8, 8, comp=1) + rest,
        True,
    )
    yield "invalid length of the IHDR chunk", SIGNATURE + chunk(b"IHDR", bytes(12)) + rest, False
    yield "it has no IDAT chunk", SIGNATURE + ihdr(8, 8) + chunk(b"IEND"), False
    yield "invalid chunk type 'gA-A'", build_png(8, 8, before=[chunk(b"gA-A")]), False
    yield "invalid length of the gAMA chunk", build_png(8, 8, before=[b"\xff" * 4 + b"gAMA"]), False
    # Deliberate differences: the PNG spec requires these; Pillow lets them pass.
    gamma_first = SIGNATURE + chunk(b"gAMA", b"\0\0\0\1") + build_png(8, 8)[8:]
    yield "it does not start with exactly one IHDR chunk", gamma_first, True
    two_headers = SIGNATURE + ihdr(8, 8) + build_png(8, 8)[8:]
    yield "it does not start with exactly one IHDR chunk", two_headers, True
    palette_raw = scanlines(8, 8, 8, 3)
    no_palette = SIGNATURE + ihdr(8, 8, 8, 3) + chunk(b"IDAT", zlib.compress(palette_raw))
    no_palette += chunk(b"IEND")
    yield "a palette image without a PLTE chunk", no_palette, True
    palette_after = build_png(8, 8, 8, 0, after=[chunk(b"PLTE", bytes(6))])
    yield "a misplaced PLTE chunk", palette_after, True
    yield (
        "invalid length of the PLTE chunk",
        build_png(8, 8, 8, 0, before=[chunk(b"PLTE", bytes(4))]),
        True,
    )
    yield (
        "invalid chunk type '1DAT'",
        build_png(8, 8, before=[chunk(b"1DAT")]),
        True,
    )  # letters only


@pytest.mark.parametrize(
    ("reason", "data", "pillow_verdict"),
    [pytest.param(*case, id=f"{case[0]}-{i}") for i, case in enumerate(structure_cases())],
)
def test_structure_errors_are_rejected(
    verify: Verifier, reason: str, data: bytes, pillow_verdict: bool
) -> None:
    assert verify.rejection(data).endswith(f"({reason}).")
    assert pillow_accepts(data) == pillow_verdict


def test_fault_upstreams_corrupt_png_is_rejected(verify: Verifier) -> None:
    data = bytearray(pillow_png(noise(64, 64, seed=5)))
    third = len(data) // 3
    data[third : 2 * third] = b"\xde\xad\xbe\xef" * (third // 4) + b"\x00" * (third % 4)
    assert "truncated or corrupt" in verify.rejection(bytes(data))
    assert not pillow_accepts(bytes(data))


# --- the default check: structure and CRCs, no inflate ------------------------------------------


@pytest.fixture(params=["file", "memory"])
def crc_verify(tmp_path: Path, request: pytest.FixtureRequest) -> Verifier:
    return Verifier(tmp_path / "image.bin", in_memory=request.param == "memory", inflate=False)


def test_default_check_accepts_valid_pngs(crc_verify: Verifier) -> None:
    for mode, params in PILLOW_CASES:
        data = pillow_png(noise(13, 7, mode=mode), **params)
        assert crc_verify(data, expected_size=(13, 7)) == ImageInfo(13, 7, "image/png")
    for colour, depth in COLOUR_DEPTHS:
        for interlace in (0, 1):
            crc_verify(build_png(17, 11, depth, colour, interlace), expected_size=(17, 11))
    crc_verify(build_png(31, 17, idat_size=7, seed=3), expected_size=(31, 17))
    crc_verify(build_png(8, 8) + b"\0garbage after the end", expected_size=(8, 8))


def test_default_check_refuses_every_truncation_and_every_flipped_bit(
    crc_verify: Verifier, small_png: bytes
) -> None:
    # What goes wrong on the way: a cut anywhere leaves a chunk or IEND missing, and a bit
    # flipped anywhere after the signature fails a CRC (or the structure, in a length field).
    for cut in range(len(small_png)):
        assert not crc_verify.accepts(small_png[:cut]), cut
    for bit in range(8 * 8, 8 * len(small_png), 3):
        assert not crc_verify.accepts(flipped(small_png, bit)), bit
    big = build_png(200, 200)  # its IDAT is read in pieces
    start, end = idat_span(big)
    for at in (start + 10, start + 70_000, end - 5):
        assert crc_verify.rejection(flipped(big, at * 8)).endswith("(bad CRC in IDAT chunk).")
    assert crc_verify.rejection(big[: start + 70_000]).endswith(
        "(it ends in the middle of a chunk)."
    )


def test_default_check_refuses_structure_errors_and_garbage(crc_verify: Verifier) -> None:
    for reason, data, _pillow in structure_cases():
        assert crc_verify.rejection(data).endswith(f"({reason})."), reason
    data = bytearray(pillow_png(noise(64, 64, seed=5)))  # the fault upstream's `corrupt`
    third = len(data) // 3
    data[third : 2 * third] = b"\xde\xad\xbe\xef" * (third // 4) + b"\x00" * (third % 4)
    assert "truncated or corrupt" in crc_verify.rejection(bytes(data))
    with pytest.raises(NotAnImage, match=r"declares 100000x100000 pixels"):
        crc_verify(SIGNATURE + ihdr(100_000, 100_000, 8, 6) + build_png(1, 1, 8, 6)[33:])


def test_only_the_inflate_check_refuses_a_broken_zlib_stream_under_right_crcs(
    crc_verify: Verifier, verify: Verifier
) -> None:
    # Deliberate: damage on the way cannot recompute a CRC, so these come only from a server
    # that encoded its PNG wrongly. The default check accepts them (an analyzer that decodes
    # the image refuses it then); `png_check = "inflate"` refuses them at download.
    raw = scanlines(20, 10, 8, 2)
    compressor = zlib.compressobj()
    unfinished = compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH)
    broken = [
        build_png(20, 10, raw=raw[:-1]),  # the image data ends early
        build_png(20, 10, raw=raw + b"\0"),  # more image data than the header says
        build_png(20, 10, compressed=unfinished),  # the zlib stream does not end
        fix_crcs(flipped(build_png(20, 10), idat_span(build_png(20, 10))[0] * 8 + 80)),
    ]
    for data in broken:
        assert crc_verify(data, expected_size=(20, 10)).width == 20
        assert "truncated or corrupt" in verify.rejection(data)


# --- sizes and bombs ---------------------------------------------------------------------------


def test_wrong_size_is_rejected(verify: Verifier) -> None:
    data = build_png(65, 32)
    assert verify(data, expected_size=(65, 32)).width == 65
    with pytest.raises(NotAnImage, match=r"^The server sent a 65x32 image, not the 64x32 that"):
        verify(data, expected_size=(64, 32))
    assert verify(data).height == 32  # no expected size: any size goes


def test_decompression_bomb_header_costs_nothing(verify: Verifier) -> None:
    # A 1x1 image's data under a header claiming 100000 x 100000 RGBA (40 GB of pixels).
    data = SIGNATURE + ihdr(100_000, 100_000, 8, 6) + build_png(1, 1, 8, 6)[33:]
    verify.path.write_bytes(data)
    tracemalloc.start()
    started = time.process_time()
    with pytest.raises(NotAnImage, match=r"declares 100000x100000 pixels, more than the 16777216"):
        verify_image(verify.path, expected_size=None, max_pixels=MAX_PIXELS)
    cpu = time.process_time() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert cpu < 0.05
    assert peak < 200_000


def test_pillow_pixel_limit_still_applies(
    verify: Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the analyzers (Pillow) would refuse later is refused now, as the Pillow verifier did.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(NotAnImage, match="not a decodable image"):
        verify(build_png(40, 40))
    verify(build_png(40, 25))


def zeros_bomb(mib: int) -> bytes:
    """A valid zlib stream of `mib` MiB of zero bytes, 1 KB per MiB, built in no time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    # A full flush resets the history: the 1 MiB segment can be repeated as it is.
    segment = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler32 = ((mib << 20) % 65521) << 16 | 1  # over zeros, s1 stays 1 and s2 counts the bytes
    return b"\x78\xda" + segment * mib + b"\x03\x00" + struct.pack(">I", adler32)


def test_zeros_bomb_is_a_valid_zlib_stream() -> None:
    assert zlib.decompress(zeros_bomb(5)) == bytes(5 << 20)


def test_zlib_bomb_is_cut_off_early_in_bounded_memory(verify: Verifier) -> None:
    # 1000x1000 grey expects 1 MB of scanlines; the IDAT inflates to 4 GiB of zeros (~4 MB).
    data = build_png(1000, 1000, 8, 0, compressed=zeros_bomb(4096))
    verify.path.write_bytes(data)
    tracemalloc.start()
    started = time.process_time()
    with pytest.raises(NotAnImage, match="more image data than its header says"):
        verify_image(verify.path, expected_size=None, max_pixels=MAX_PIXELS, inflate=True)
    cpu = time.process_time() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert cpu < 0.5  # inflating it all would take ~5 s
    assert peak < 1_000_000
    assert pillow_accepts(data)  # deliberate difference: Pillow ignores what follows the last row


# --- memory on a big image ---------------------------------------------------------------------


def noise_rows(width: int, height: int, seed: int) -> Iterator[bytes]:
    """Filter-0 RGB scanlines of noisy content, 256 rows at a time."""
    rng = np.random.default_rng(seed)
    for top in range(0, height, 256):
        rows = min(256, height - top)
        block = np.zeros((rows, 1 + 3 * width), dtype=np.uint8)
        # Noise in 0..63 plus a gradient: compresses to ~80 %, far from nothing.
        block[:, 1:] = rng.integers(0, 64, (rows, 3 * width), dtype=np.uint8) + (top // 64)
        yield block.tobytes()


@pytest.fixture(scope="module")
def big_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4096x4096 RGB PNG (about 40 MB), written in pieces."""
    width = height = 4096
    path = tmp_path_factory.mktemp("big") / "big.png"
    compressor = zlib.compressobj(1)
    with path.open("wb") as f:
        f.write(SIGNATURE + ihdr(width, height))
        for rows in noise_rows(width, height, seed=11):
            piece = compressor.compress(rows)
            if piece:
                f.write(chunk(b"IDAT", piece))
        f.write(chunk(b"IDAT", compressor.flush()) + chunk(b"IEND"))
    return path


def test_big_png_is_verified_in_bounded_memory_without_pillow(
    big_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert big_png.stat().st_size > 30_000_000

    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Pillow was asked to open or decode the PNG")

    monkeypatch.setattr(Image, "open", forbidden)
    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)
    for inflate in (True, False):
        tracemalloc.start()
        info = verify_image(
            big_png, expected_size=(4096, 4096), max_pixels=MAX_PIXELS, inflate=inflate
        )
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert info == ImageInfo(4096, 4096, "image/png")
        assert peak < 4 * 1024 * 1024, (inflate, peak)


# --- JPEG and other formats --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("size", [(1, 1), (7, 9), (300, 200)])
@pytest.mark.parametrize("progressive", [False, True])
def test_jpegs_are_accepted(
    verify: Verifier, mode: str, size: tuple[int, int], progressive: bool
) -> None:
    data = pillow_jpeg(noise(*size, mode=mode), progressive=progressive)
    assert verify(data, expected_size=size) == ImageInfo(*size, content_type="image/jpeg")


def test_jpeg_is_decoded_at_an_eighth_of_its_size(
    verify: Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[tuple[int, int]] = []
    load = JpegImagePlugin.JpegImageFile.load

    def spy(self: JpegImagePlugin.JpegImageFile) -> object:
        decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    info = verify(pillow_jpeg(noise(800, 600)), expected_size=(800, 600))
    assert (info.width, info.height) == (800, 600)
    assert decoded == [(100, 75)]


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return pillow_jpeg(noise(64, 48, seed=4), quality=90)


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_jpegs_are_rejected(
    verify: Verifier, jpeg: bytes, monkeypatch: pytest.MonkeyPatch, load_truncated: bool
) -> None:
    # Whatever ImageFile.LOAD_TRUNCATED_IMAGES says (someone else may set it): the verifier does
    # not rely on it.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    header_end = jpeg.index(b"\xff\xda")  # start of scan
    for cut in range(header_end + 20, len(jpeg) - 2, 97):
        assert "truncated" in verify.rejection(jpeg[:cut]), cut
    assert "truncated" in verify.rejection(jpeg[:-2])  # no EOI marker
    assert pillow_accepts(jpeg[:-2]) == load_truncated  # what relying on Pillow would give
    for cut in range(0, header_end, 37):
        verify.rejection(jpeg[:cut])


def test_truncated_jpegs_agree_with_pillow(verify: Verifier, jpeg: bytes) -> None:
    for cut in range(0, len(jpeg) + 1, 53):
        assert verify.accepts(jpeg[:cut]) == pillow_accepts(jpeg[:cut]), cut


def test_jpeg_with_trailing_bytes_is_accepted(verify: Verifier, jpeg: bytes) -> None:
    verify(jpeg + b"\0" * 100, expected_size=(64, 48))


def test_wrong_size_jpeg_and_bomb_jpeg(verify: Verifier, jpeg: bytes) -> None:
    with pytest.raises(NotAnImage, match="not the 48x64 that was asked for"):
        verify(jpeg, expected_size=(48, 64))
    with pytest.raises(NotAnImage, match="declares 64x48 pixels, more than the 3000 allowed"):
        verify(jpeg, max_pixels=3000)


@pytest.mark.parametrize(
    ("fmt", "name"), [("GIF", "GIF"), ("TIFF", "TIFF"), ("WEBP", "WEBP"), ("BMP", "BMP")]
)
def test_other_formats_are_not_images(verify: Verifier, fmt: str, name: str) -> None:
    buf = io.BytesIO()
    noise(16, 16).save(buf, fmt)
    assert verify.rejection(buf.getvalue()) == (
        f"The server sent a {name} file, not a PNG or JPEG image."
    )


@pytest.mark.parametrize(
    "data", [b"", b"<html>oops</html>", b"\x89PNG", b"\xff\xd8\xff", bytes(range(256)) * 4]
)
def test_garbage_is_not_an_image(verify: Verifier, data: bytes) -> None:
    assert verify.rejection(data) == "The server's answer is not a decodable image."


def test_format_comes_from_the_bytes_not_the_file_name(tmp_path: Path, jpeg: bytes) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(jpeg)
    info = verify_image(path, expected_size=None, max_pixels=MAX_PIXELS)
    assert info.content_type == FORMATS["JPEG"]


def test_png_size_reads_the_header() -> None:
    assert png_size(build_png(31, 7)) == (31, 7)
    with pytest.raises(NotAnImage):
        png_size(b"GIF89a" + bytes(30))
