"""prepare_for_claude: limits, formats, transparency, odd modes and hostile input."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from satapi.analyzers.imageprep import MAX_INPUT_PIXELS, PreparedImage, prepare_for_claude
from satapi.errors import ImageTooLarge, NotAnImage


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    bands = len(mode)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, bands), dtype=np.uint8)
    return Image.fromarray(arr if bands > 1 else arr[:, :, 0])


def decoded(prepared: PreparedImage) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(prepared.base64_data)))
    assert Image.MIME[im.format or ""] == prepared.media_type
    assert im.size == (prepared.width, prepared.height)
    return im


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims another size: a decompression bomb, cheaply."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


# --- sizes ---------------------------------------------------------------------------------------


def test_large_jpeg_is_downscaled_within_both_limits() -> None:
    prepared = prepare_for_claude(encode(gradient(3000, 2000), "JPEG", quality=90))
    im = decoded(prepared)
    assert prepared.media_type == "image/jpeg"
    assert max(im.size) <= 1568
    assert im.width * im.height <= 1_150_000
    assert abs(im.width / im.height - 1.5) < 0.01


def test_long_edge_limit_binds_for_a_thin_strip() -> None:
    prepared = prepare_for_claude(encode(gradient(4000, 500), "PNG"))
    assert (prepared.width, prepared.height) == (1568, 196)


def test_area_limit_binds_for_a_square() -> None:
    prepared = prepare_for_claude(encode(gradient(1568, 1568), "PNG"))
    assert prepared.width == prepared.height
    assert prepared.width * prepared.height <= 1_150_000
    assert prepared.width >= 1070  # not shrunk more than needed


def test_custom_limits() -> None:
    prepared = prepare_for_claude(
        encode(gradient(1000, 800), "PNG"), max_long_edge=500, max_pixels=100_000
    )
    assert max(prepared.width, prepared.height) <= 500
    assert prepared.width * prepared.height <= 100_000


def test_small_image_keeps_its_size() -> None:
    prepared = prepare_for_claude(encode(gradient(256, 256), "BMP"))
    assert (prepared.width, prepared.height) == (256, 256)
    assert prepared.media_type == "image/jpeg"  # opaque and not sendable as it is: JPEG


@pytest.mark.parametrize(
    ("fmt", "mode", "media_type"),
    [
        ("PNG", "RGB", "image/png"),
        ("PNG", "RGBA", "image/png"),
        ("PNG", "L", "image/png"),
        ("JPEG", "RGB", "image/jpeg"),
        ("JPEG", "L", "image/jpeg"),
    ],
)
def test_a_fitting_png_or_jpeg_is_sent_as_it_is(fmt: str, mode: str, media_type: str) -> None:
    """Within the limits and in a format Claude takes: the very bytes, nothing decoded."""
    data = encode(gradient(512, 512).convert(mode), fmt)
    prepared = prepare_for_claude(data)
    assert base64.b64decode(prepared.base64_data) == data
    assert (prepared.media_type, prepared.width, prepared.height) == (media_type, 512, 512)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: encode(gradient(2000, 1000), "PNG"), "too large: downscaled"),
        (lambda: encode(noise(64, 64).convert("P"), "PNG"), "palette: converted"),
        (lambda: encode(noise(64, 64).convert("CMYK"), "JPEG"), "CMYK: converted"),
        (lambda: encode(Image.new("I;16", (64, 64), 300), "PNG"), "16-bit: stretched"),
        (lambda: encode(noise(800, 800), "PNG"), "over the byte budget: JPEG"),
    ],
)
def test_others_are_still_prepared(make: object, why: str) -> None:
    data = make()  # type: ignore[operator]
    prepared = prepare_for_claude(data, max_base64_bytes=1_000_000)
    assert base64.b64decode(prepared.base64_data) != data, why


def test_tiny_byte_budget_steps_quality_and_size_down() -> None:
    big = prepare_for_claude(encode(noise(1200, 900), "PNG"))
    small = prepare_for_claude(encode(noise(1200, 900), "PNG"), max_base64_bytes=40_000)
    assert len(small.base64_data) <= 40_000 < len(big.base64_data)
    assert small.width < big.width  # noise does not fit by quality alone
    decoded(small)


# --- transparency and modes ----------------------------------------------------------------------


def test_transparent_png_stays_png_with_alpha() -> None:
    im = gradient(400, 300).convert("RGBA")
    im.putalpha(Image.linear_gradient("L").resize((400, 300)))
    prepared = prepare_for_claude(encode(im, "PNG"))
    assert prepared.media_type == "image/png"
    out = decoded(prepared)
    assert out.mode == "RGBA"
    assert np.asarray(out.getchannel("A")).min() < 10


def test_opaque_alpha_channel_becomes_jpeg() -> None:
    # Re-encoded (too big to send as it is), the alpha channel that hides nothing is dropped.
    prepared = prepare_for_claude(encode(gradient(2000, 1500).convert("RGBA"), "PNG"))
    assert prepared.media_type == "image/jpeg"


def test_palette_png_with_transparency_stays_png() -> None:
    im = Image.new("P", (200, 100), 0)
    im.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    im.paste(1, (50, 0, 200, 100))
    prepared = prepare_for_claude(encode(im, "PNG", transparency=0))
    assert prepared.media_type == "image/png"
    out = decoded(prepared).convert("RGBA")
    assert out.getpixel((10, 10)) == (0, 0, 0, 0)
    assert out.getpixel((150, 50)) == (0, 128, 255, 255)


def test_transparent_image_too_big_for_png_falls_back_to_jpeg() -> None:
    im = noise(900, 700, "RGBA")
    prepared = prepare_for_claude(encode(im, "PNG"), max_base64_bytes=300_000)
    assert prepared.media_type == "image/jpeg"
    assert len(prepared.base64_data) <= 300_000
    assert decoded(prepared).mode == "RGB"


def test_sixteen_bit_grey_is_stretched_not_clipped() -> None:
    ramp = np.tile(np.linspace(1000, 60000, 300, dtype=np.uint16), (200, 1))
    prepared = prepare_for_claude(encode(Image.fromarray(ramp), "PNG"))
    out = np.asarray(decoded(prepared).convert("L"))
    assert out.min() < 20 and out.max() > 235  # a full range of grey, not a white sheet


def test_float_tiff_with_nan_is_handled() -> None:
    arr = np.linspace(-5.0, 5.0, 100 * 80, dtype=np.float32).reshape(80, 100)
    arr[0, :] = np.nan
    prepared = prepare_for_claude(encode(Image.fromarray(arr, mode="F"), "TIFF"))
    assert (prepared.width, prepared.height) == (100, 80)


def test_cmyk_jpeg_becomes_rgb() -> None:
    prepared = prepare_for_claude(encode(gradient(300, 200).convert("CMYK"), "JPEG"))
    assert decoded(prepared).mode == "RGB"


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = decoded(prepare_for_claude(data)).convert("RGB")
    r, _, b = out.getpixel((32, 32))  # type: ignore[misc]
    assert r > 200 and b < 50


# --- hostile or broken input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<ServiceExceptionReport><ServiceException>bad layer</ServiceException>",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 20,
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # EPS is never decoded
    ],
    ids=["empty", "xml", "png-header-only", "eps"],
)
def test_garbage_raises_not_an_image(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        prepare_for_claude(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_raises_not_an_image(fmt: str) -> None:
    data = encode(noise(400, 300), fmt)  # small enough to be sent as it is, were it whole
    with pytest.raises(NotAnImage):
        prepare_for_claude(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("width", "height"),
    [(9000, 9000), (30000, 30000)],
    ids=["over-our-limit", "over-pillow-limit"],
)
def test_decompression_bomb_is_refused_before_decoding(width: int, height: int) -> None:
    assert width * height > MAX_INPUT_PIXELS
    with pytest.raises(ImageTooLarge):
        prepare_for_claude(png_with_claimed_size(width, height))


def test_bad_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        prepare_for_claude(encode(gradient(10, 10), "PNG"), max_long_edge=0)
