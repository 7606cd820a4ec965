"""Tests for the heuristic pixel analysis: decoding, class fractions, change detection, wording."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from satapi.analyzers import pixels
from satapi.errors import NotAnImage

FOREST = (34, 139, 34)
GREEN = (0, 128, 0)
LIGHT_GREEN = (60, 160, 60)
WATER = (20, 50, 120)
BROWN = (150, 110, 70)
CLOUD = (240, 240, 240)
GREY = (128, 128, 128)
BLACK = (0, 0, 0)
TRANSPARENT_GREEN = (*FOREST, 0)

Color = tuple[int, ...]


def rgba(color: Color) -> tuple[int, int, int, int]:
    """An RGBA tuple; RGB colours are opaque."""
    return (color[0], color[1], color[2], 255) if len(color) == 3 else tuple(color)  # type: ignore[return-value]


def stripes(parts: list[tuple[Color, float]], size: tuple[int, int] = (100, 100)) -> np.ndarray:
    """An (H, W, 4) image made of horizontal bands, each a colour covering `fraction` of rows."""
    height, width = size
    image = np.zeros((height, width, 4), dtype=np.uint8)
    row = 0
    for color, fraction in parts:
        rows = round(fraction * height)
        image[row : row + rows] = rgba(color)
        row += rows
    assert row == height, "the parts must cover the whole image"
    return image


def png_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but which carries almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- per-colour classification -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("color", "expected"),
    [
        (FOREST, "vegetation"),
        (GREEN, "vegetation"),
        (LIGHT_GREEN, "vegetation"),
        ((50, 70, 40), "vegetation"),  # dark, dull canopy
        ((100, 120, 60), "vegetation"),  # olive
        (WATER, "water"),
        ((10, 20, 40), "water"),  # deep, dark water
        ((30, 70, 80), "water"),  # teal
        (BROWN, "bare"),
        ((210, 190, 150), "bare"),  # sand
        (CLOUD, "cloud"),
        ((255, 255, 255), "cloud"),
        ((200, 200, 205), "cloud"),  # brightness 0.79
        ((180, 180, 180), "built"),  # brightness 0.71: a bright roof, not cloud
        ((45, 45, 45), "other"),  # brightness 0.18: too dark for built-up
        ((55, 55, 55), "built"),
        (GREY, "built"),
        ((120, 115, 110), "built"),  # warm grey
        ((100, 100, 105), "built"),  # cool grey is not water
        (BLACK, "nodata"),
        ((2, 2, 2), "nodata"),
        (TRANSPARENT_GREEN, "nodata"),
        ((40, 40, 45), "other"),  # shadow: too dark to be built-up, too grey to be water
        ((135, 206, 235), "other"),  # sky blue: too bright for water
        ((200, 40, 200), "other"),  # magenta
    ],
)
def test_single_colour_class(color: Color, expected: str) -> None:
    image = np.array([[rgba(color)]], dtype=np.uint8)
    assert pixels.CLASS_NAMES[pixels.classify(image)[0, 0]] == expected


# --- measure -----------------------------------------------------------------------------------

EXPECTED_KEYS = {
    "vegetation_fraction",
    "water_fraction",
    "bare_fraction",
    "built_fraction",
    "cloud_fraction",
    "nodata_fraction",
    "mean_brightness",
    "dominant_colors",
}


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        pytest.param(
            # Class shares are of the 90 % with data; no-data is a share of the frame.
            [(FOREST, 0.3), (WATER, 0.2), (BROWN, 0.2), (CLOUD, 0.1), (GREY, 0.1), (BLACK, 0.1)],
            {
                "vegetation_fraction": 0.3 / 0.9,
                "water_fraction": 0.2 / 0.9,
                "bare_fraction": 0.2 / 0.9,
                "cloud_fraction": 0.1 / 0.9,
                "built_fraction": 0.1 / 0.9,
                "nodata_fraction": 0.1,
            },
            id="forest-30-with-all-classes",
        ),
        pytest.param(
            [(GREEN, 0.3), (GREY, 0.7)],
            {"vegetation_fraction": 0.3, "built_fraction": 0.7},
            id="pure-green-30",
        ),
        pytest.param(
            [(LIGHT_GREEN, 0.3), (BROWN, 0.4), (WATER, 0.3)],
            {"vegetation_fraction": 0.3, "bare_fraction": 0.4, "water_fraction": 0.3},
            id="light-green-30",
        ),
        pytest.param(
            [(FOREST, 0.1), (GREEN, 0.1), (LIGHT_GREEN, 0.1), (CLOUD, 0.7)],
            {"vegetation_fraction": 0.3, "cloud_fraction": 0.7},
            id="three-greens-30",
        ),
        pytest.param(
            [(TRANSPARENT_GREEN, 0.25), (BLACK, 0.25), (WATER, 0.5)],
            {"nodata_fraction": 0.5, "water_fraction": 1.0, "vegetation_fraction": 0.0},
            id="nodata-alpha-and-black",
        ),
        pytest.param(
            [((40, 40, 45), 0.6), (FOREST, 0.4)],
            {"vegetation_fraction": 0.4, "water_fraction": 0.0, "built_fraction": 0.0},
            id="shadow-is-not-water",
        ),
    ],
)
def test_measure_known_fractions(
    parts: list[tuple[Color, float]], expected: dict[str, float]
) -> None:
    metrics = pixels.measure(stripes(parts))
    assert set(metrics) == EXPECTED_KEYS
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=0.005), key
    for key in EXPECTED_KEYS - {"mean_brightness", "dominant_colors"} - set(expected):
        assert metrics[key] == 0.0, key


@pytest.mark.parametrize("green", [FOREST, GREEN, LIGHT_GREEN])
def test_thirty_percent_vegetation_survives_sensor_noise(green: Color) -> None:
    rng = np.random.default_rng(42)
    image = stripes([(green, 0.3), (WATER, 0.2), (BROWN, 0.2), (GREY, 0.2), (CLOUD, 0.1)])
    noise = rng.normal(0, 6, size=image[..., :3].shape)
    image[..., :3] = np.clip(image[..., :3] + noise, 0, 255).astype(np.uint8)
    metrics = pixels.measure(image)
    assert metrics["vegetation_fraction"] == pytest.approx(0.3, abs=0.05)
    assert metrics["water_fraction"] == pytest.approx(0.2, abs=0.05)
    assert metrics["bare_fraction"] == pytest.approx(0.2, abs=0.05)
    assert metrics["built_fraction"] == pytest.approx(0.2, abs=0.05)
    assert metrics["cloud_fraction"] == pytest.approx(0.1, abs=0.05)


def test_mean_brightness_ignores_nodata() -> None:
    metrics = pixels.measure(stripes([(GREY, 0.5), (BLACK, 0.25), (TRANSPARENT_GREEN, 0.25)]))
    assert metrics["mean_brightness"] == pytest.approx(128 / 255, abs=1e-4)

    metrics = pixels.measure(stripes([(CLOUD, 0.5), (GREY, 0.5)]))
    assert metrics["mean_brightness"] == pytest.approx((240 + 128) / 2 / 255, abs=1e-4)


def test_all_nodata_image() -> None:
    metrics = pixels.measure(stripes([(BLACK, 1.0)]))
    assert metrics["nodata_fraction"] == 1.0
    assert metrics["mean_brightness"] == 0.0
    assert metrics["dominant_colors"] == []


def test_dominant_colours_are_quantised_ranked_and_skip_nodata() -> None:
    metrics = pixels.measure(stripes([(BLACK, 0.5), (FOREST, 0.3), (WATER, 0.2)]))
    # Bin centres of 32 levels per channel: 34 -> 36, 139 -> 140, 20 -> 20, 50 -> 52, 120 -> 124.
    # Fractions are of the half with data.
    assert metrics["dominant_colors"] == [
        {"hex": "#248c24", "fraction": 0.6},
        {"hex": "#14347c", "fraction": 0.4},
    ]


def test_dominant_colours_keep_top_five() -> None:
    colors = [(i * 40, 200 - i * 20, 30 + i * 10) for i in range(6)]
    shares = [0.3, 0.2, 0.15, 0.15, 0.12, 0.08]
    metrics = pixels.measure(stripes(list(zip(colors, shares, strict=True))))
    fractions = [entry["fraction"] for entry in metrics["dominant_colors"]]
    assert fractions == [0.3, 0.2, 0.15, 0.15, 0.12]


def test_fractions_sum_to_one_with_other() -> None:
    image = stripes([(FOREST, 0.2), (WATER, 0.2), (BROWN, 0.2), ((200, 40, 200), 0.4)])
    metrics = pixels.measure(image)
    classes = ["vegetation", "water", "bare", "built", "cloud", "nodata"]
    assert sum(metrics[f"{c}_fraction"] for c in classes) == pytest.approx(0.6, abs=1e-4)


def test_measure_accepts_rgb_and_is_deterministic() -> None:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(64, 80, 4), dtype=np.uint8)
    first = pixels.measure(image)
    assert pixels.measure(image.copy()) == first
    opaque = image.copy()
    opaque[..., 3] = 255
    assert pixels.measure(opaque[..., :3].copy()) == pixels.measure(opaque)


def test_measure_rejects_wrong_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        pixels.measure(np.zeros((4, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        pixels.measure(np.zeros((4, 4), dtype=np.uint8))


def test_measure_is_fast_on_4096_square() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(4096, 4096, 4), dtype=np.uint8)
    started = time.process_time()  # CPU time, so other load on the machine does not count
    pixels.measure(image)
    assert time.process_time() - started < 4.0


# --- summarize ---------------------------------------------------------------------------------


def test_summarize_mentions_method_classes_and_caveats() -> None:
    text = pixels.summarize(
        pixels.measure(stripes([(FOREST, 0.4), (WATER, 0.2), (CLOUD, 0.2), (BLACK, 0.2)]))
    )
    assert text.startswith("Heuristic pixel analysis (not AI)")
    # Shares of the 80 % with data; the no-data share is of the frame and said to be left out.
    assert "50 % of the area with data is vegetation" in text
    assert "25 % water" in text
    assert "Clouds or snow cover 25 %" in text
    assert "20 % of the frame has no data" in text
    assert "left out" in text
    assert "mean brightness" in text


def test_measure_counts_only_valid_pixels() -> None:
    # Top half forest, bottom half white background (cloud-like): masked out, it is no data.
    image = stripes([(FOREST, 0.5), (CLOUD, 0.5)])
    height, width = image.shape[:2]
    valid = np.zeros((height, width), dtype=bool)
    valid[: height // 2] = True
    whole = pixels.measure(image)
    assert whole["cloud_fraction"] == pytest.approx(0.5, abs=0.01)
    masked = pixels.measure(image, valid)
    assert masked["vegetation_fraction"] == pytest.approx(1.0, abs=0.01)
    assert masked["cloud_fraction"] == 0.0
    assert masked["nodata_fraction"] == pytest.approx(0.5, abs=0.01)
    assert pixels.measure(image, np.ones((height, width), dtype=bool)) == whole
    with pytest.raises(ValueError, match="does not match"):
        pixels.measure(image, valid[1:])


def test_window_mask_covers_pixel_centres_inside() -> None:
    mask = pixels.window_mask((2, 4), 0.0, 0.0, 0.5, 1.0)
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False]]
    assert pixels.window_mask((4, 4), 0.0, 0.5, 1.0, 1.0).sum() == 8


def test_compare_counts_only_valid_pixels() -> None:
    before = stripes([(FOREST, 0.5), (CLOUD, 0.5)])
    after = stripes([(BROWN, 0.5), (CLOUD, 0.5)])
    height, width = before.shape[:2]
    valid = np.zeros((height, width), dtype=bool)
    valid[: height // 4] = True
    metrics, _ = pixels.compare(before, after, valid)
    assert metrics["valid_fraction"] == pytest.approx(0.25, abs=0.01)
    assert metrics["changed_fraction"] == 1.0
    assert metrics["before"]["nodata_fraction"] == pytest.approx(0.75, abs=0.01)


def test_summarize_heavy_cloud_warns() -> None:
    text = pixels.summarize(pixels.measure(stripes([(CLOUD, 0.7), (FOREST, 0.3)])))
    assert "70 %" in text
    assert "unreliable" in text


def test_summarize_all_nodata() -> None:
    text = pixels.summarize(pixels.measure(stripes([(BLACK, 1.0)])))
    assert "Heuristic" in text
    assert "no data" in text


# --- decode_rgba -------------------------------------------------------------------------------


def test_png_round_trip_is_exact() -> None:
    image = stripes([(FOREST, 0.5), (TRANSPARENT_GREEN, 0.25), (WATER, 0.25)], size=(40, 30))
    decoded = pixels.decode_rgba(pixels.encode_png(image))
    assert decoded.dtype == np.uint8
    assert decoded.shape == (40, 30, 4)
    assert np.array_equal(decoded, image)


def test_jpeg_round_trip_within_tolerance() -> None:
    image = stripes([(FOREST, 0.3), (WATER, 0.3), (BROWN, 0.2), (GREY, 0.2)], size=(128, 128))
    buffer = io.BytesIO()
    Image.fromarray(image[..., :3]).save(buffer, format="JPEG", quality=90)
    decoded = pixels.decode_rgba(buffer.getvalue())
    assert decoded.shape == (128, 128, 4)
    assert (decoded[..., 3] == 255).all()
    assert np.abs(decoded.astype(int) - image.astype(int))[..., :3].mean() < 4
    metrics = pixels.measure(decoded)
    assert metrics["vegetation_fraction"] == pytest.approx(0.3, abs=0.03)
    assert metrics["water_fraction"] == pytest.approx(0.3, abs=0.03)
    assert metrics["bare_fraction"] == pytest.approx(0.2, abs=0.03)
    assert metrics["built_fraction"] == pytest.approx(0.2, abs=0.03)


def test_palette_with_transparency_becomes_alpha() -> None:
    palette_image = Image.new("P", (4, 2), 0)
    palette_image.putpalette([0, 0, 0, *FOREST] + [0] * (256 * 3 - 6))
    palette_image.putpixel((1, 0), 1)
    decoded = pixels.decode_rgba(png_bytes(palette_image, transparency=0))
    assert decoded[0, 1].tolist() == [*FOREST, 255]
    assert decoded[0, 0, 3] == 0
    assert decoded[1, 3, 3] == 0


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 128, [128, 128, 128, 255]),
        ("LA", (128, 0), [128, 128, 128, 0]),
        ("RGB", FOREST, [*FOREST, 255]),
        ("RGBA", (*WATER, 200), [*WATER, 200]),
    ],
)
def test_png_modes_decode_to_rgba(mode: str, value: object, expected: list[int]) -> None:
    decoded = pixels.decode_rgba(png_bytes(Image.new(mode, (3, 2), value)))  # type: ignore[arg-type]
    assert decoded.shape == (2, 3, 4)
    assert decoded[1, 2].tolist() == expected


def test_cmyk_tiff_decodes_to_rgb() -> None:
    buffer = io.BytesIO()
    Image.new("CMYK", (3, 2), (0, 0, 0, 0)).save(buffer, format="TIFF")
    decoded = pixels.decode_rgba(buffer.getvalue())
    assert decoded[0, 0].tolist() == [255, 255, 255, 255]


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    grey16 = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    decoded = pixels.decode_rgba(png_bytes(grey16))
    assert decoded[0, :, 0].tolist() == [0, 128, 255]


def test_header_declaring_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(NotAnImage, match=r"limit of 1,000,000 pixels"):
        pixels.decode_rgba(png_header_only(2000, 2000), max_pixels=1_000_000)


def test_decompression_bomb_beyond_pillow_limit_is_refused() -> None:
    with pytest.raises(NotAnImage, match="pixels"):
        pixels.decode_rgba(png_header_only(100_000, 100_000))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"this is not an image at all", id="text"),
        pytest.param(bytes(range(256)) * 4, id="garbage"),
        pytest.param(png_header_only(50, 50), id="truncated-png"),
        pytest.param(b"<ServiceExceptionReport>oops</ServiceExceptionReport>", id="wms-xml"),
        pytest.param(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", id="eps-refused"),
    ],
)
def test_undecodable_data_is_not_an_image(data: bytes) -> None:
    with pytest.raises(NotAnImage) as caught:
        pixels.decode_rgba(data)
    assert caught.value.message.endswith(".")


# --- compare -----------------------------------------------------------------------------------


def change_pair(
    patch_before: Color, patch_after: Color, patch: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Before and after images that differ only in a band covering `patch` of the rows."""
    rest = [(FOREST, 0.3), (GREY, 0.3), (WATER, 0.4 - patch)]
    before = stripes([(patch_before, patch), *rest])
    after = stripes([(patch_after, patch), *rest])
    return before, after


def test_twenty_percent_vegetation_to_bare() -> None:
    before, after = change_pair(FOREST, BROWN)
    metrics, mask = pixels.compare(before, after)
    assert metrics["changed_fraction"] == pytest.approx(0.2, abs=0.03)
    assert metrics["valid_fraction"] == 1.0
    assert metrics["deltas"]["vegetation_fraction"] == pytest.approx(-0.2, abs=0.01)
    assert metrics["deltas"]["bare_fraction"] == pytest.approx(0.2, abs=0.01)
    assert set(metrics["deltas"]) == set(pixels.METRIC_KEYS)
    assert metrics["gains"] == {"vegetation": 0.0, "water": 0.0, "bare": 0.2, "built": 0.0}
    assert metrics["losses"] == {"vegetation": 0.2, "water": 0.0, "bare": 0.0, "built": 0.0}
    assert metrics["before"] == pixels.measure(before)
    assert metrics["after"] == pixels.measure(after)
    assert mask.shape == (100, 100, 3)
    assert mask.dtype == np.uint8


def hex_rgb(name: str) -> list[int]:
    value = pixels.CHANGE_MASK_LEGEND[name]
    return [int(value[i : i + 2], 16) for i in (1, 3, 5)]


@pytest.mark.parametrize(
    ("patch_before", "patch_after", "legend"),
    [
        (FOREST, BROWN, "vegetation_loss"),
        (BROWN, FOREST, "vegetation_gain"),
        (BROWN, WATER, "water_gain"),
        (FOREST, WATER, "water_gain"),  # flooding shows as water, not as vegetation loss
        (GREY, BROWN, "other_change"),
    ],
)
def test_change_mask_colours(patch_before: Color, patch_after: Color, legend: str) -> None:
    before, after = change_pair(patch_before, patch_after)
    metrics, mask = pixels.compare(before, after)
    assert metrics["changed_fraction"] == pytest.approx(0.2, abs=0.03)
    assert mask[0, 0].tolist() == hex_rgb(legend)
    assert mask[19, 99].tolist() == hex_rgb(legend)
    # Unchanged pixels: the after image's grey level at 30 %. Grey 128 -> 38.
    assert mask[60, 50].tolist() == [38, 38, 38]


def test_clouds_and_nodata_are_excluded_and_hatched() -> None:
    before = stripes([(CLOUD, 0.25), (BLACK, 0.25), (FOREST, 0.5)])
    after = stripes([(FOREST, 0.25), (FOREST, 0.25), (BROWN, 0.25), (FOREST, 0.25)])
    metrics, mask = pixels.compare(before, after)
    assert metrics["valid_fraction"] == 0.5
    assert metrics["changed_fraction"] == pytest.approx(0.5, abs=0.01)  # of the valid half
    invalid_colours = {tuple(c) for c in mask[:50].reshape(-1, 3).tolist()}
    assert invalid_colours == {tuple(hex_rgb("invalid")), tuple(hex_rgb("invalid_stripe"))}
    assert mask[60, 10].tolist() == hex_rgb("vegetation_loss")


def test_small_colour_shift_across_a_threshold_is_not_change() -> None:
    before = stripes([((100, 110, 100), 1.0)])
    after = stripes([((100, 120, 100), 1.0)])
    assert pixels.CLASS_NAMES[pixels.classify(before)[0, 0]] == "built"
    assert pixels.CLASS_NAMES[pixels.classify(after)[0, 0]] == "vegetation"
    metrics, _ = pixels.compare(before, after)
    assert metrics["changed_fraction"] == 0.0


def test_after_image_of_another_size_is_resized() -> None:
    before, after = change_pair(FOREST, BROWN)
    small_after = np.asarray(Image.fromarray(after).resize((50, 50), Image.Resampling.NEAREST))
    metrics, mask = pixels.compare(before, small_after)
    assert mask.shape == (100, 100, 3)
    assert metrics["changed_fraction"] == pytest.approx(0.2, abs=0.03)


def test_compare_is_deterministic_and_png_matches_array() -> None:
    rng = np.random.default_rng(3)
    before = rng.integers(0, 256, size=(60, 70, 4), dtype=np.uint8)
    after = rng.integers(0, 256, size=(60, 70, 4), dtype=np.uint8)
    first_metrics, first_mask = pixels.compare(before, after)
    second_metrics, second_mask = pixels.compare(before.copy(), after.copy())
    assert first_metrics == second_metrics
    assert np.array_equal(first_mask, second_mask)
    png_metrics, png = pixels.compare_png(before, after)
    assert png_metrics == first_metrics
    assert np.array_equal(pixels.decode_rgba(png)[..., :3], first_mask)


def test_summarize_change() -> None:
    metrics, _ = pixels.compare(*change_pair(FOREST, BROWN))
    text = pixels.summarize_change(metrics)
    assert text.startswith("Heuristic pixel change detection (not AI)")
    assert "20 % of the pixels" in text
    assert "vegetation fell from 50 % to 30 %" in text.lower()
    assert "away from vegetation" in text


def test_summarize_change_with_no_clear_pixels() -> None:
    metrics, _ = pixels.compare(stripes([(CLOUD, 1.0)]), stripes([(FOREST, 1.0)]))
    assert metrics["valid_fraction"] == 0.0
    assert metrics["changed_fraction"] == 0.0
    assert "no change can be measured" in pixels.summarize_change(metrics)


# --- encode_png --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 4)])
def test_encode_png_round_trips(shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    with Image.open(io.BytesIO(pixels.encode_png(array))) as image:
        assert np.array_equal(np.asarray(image), array)


def test_encode_png_rejects_non_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        pixels.encode_png(np.zeros((2, 2, 3), dtype=np.float64))


# --- the lookup-table scan against the rule-by-rule scan ----------------------------


def _old_dominant_hexes(counts: np.ndarray) -> list[str]:
    """The dominant colours as `_metrics` listed them before: a stable sort of all 2^15 bins."""
    codes = [int(c) for c in np.argsort(-counts, kind="stable")[:5] if counts[c] > 0]
    return ["#" + "".join(f"{((c >> s) & 31) * 8 + 4:02x}" for s in (10, 5, 0)) for c in codes]


@pytest.mark.parametrize("seed", range(12))
def test_table_scan_matches_rule_scan_on_random_images(seed: int) -> None:
    # Random colours cover every rule and its boundaries far more densely than scenes do; some
    # images get transparent, half-transparent and near-black (no-data) pixels, some are RGB.
    rng = np.random.default_rng(seed)
    height, width = (int(n) for n in rng.integers(1, 400, 2))
    channels = 4 if seed % 2 else 3
    image = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    if channels == 4:
        image[..., 3] = rng.choice(np.array([0, 1, 128, 255], dtype=np.uint8), (height, width))
    if seed % 3 == 0:
        dark = rng.random((height, width)) < 0.25
        image[dark, :3] = rng.integers(0, 4, (int(dark.sum()), 3), dtype=np.uint8)
    if seed % 4 == 1:  # few distinct colours: ties between dominant colours
        image[..., :3] = rng.choice(np.array([0, 8, 16, 200], dtype=np.uint8), (height, width, 3))
    new = pixels._scan(image)
    old = pixels._scan_by_rules(image)
    assert np.array_equal(new.classes, old.classes)
    assert new.brightness_sum == old.brightness_sum
    assert np.array_equal(new.color_counts, old.color_counts)
    assert pixels._metrics(new) == pixels._metrics(old)
    hexes = [c["hex"] for c in pixels._metrics(new)["dominant_colors"]]
    assert hexes == _old_dominant_hexes(old.color_counts)


def test_table_covers_every_colour_exactly() -> None:
    # The table itself, for all 2^24 opaque colours at once, against the rules.
    table = pixels.class_table()
    colours = np.arange(1 << 24, dtype=np.uint32)
    image = np.empty((1 << 12, 1 << 12, 4), dtype=np.uint8)
    flat = image.reshape(-1, 4)
    for channel in range(3):
        flat[:, channel] = (colours >> (8 * channel)) & 0xFF
    flat[:, 3] = 255
    assert np.array_equal(pixels._scan_by_rules(image).classes.reshape(-1), table)


def test_rgb_decode_keeps_results_and_transparency() -> None:
    # decode_pixels leaves RGB images RGB; the metrics are those of the RGBA decode.
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    data = pixels.encode_png(rgb)
    assert pixels.decode_pixels(data).shape == (40, 30, 3)
    assert pixels.measure(pixels.decode_pixels(data)) == pixels.measure(pixels.decode_rgba(data))
    # An RGB PNG with a tRNS colour: that colour is transparent, so it must come back as RGBA.
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), FOREST).save(buffer, "PNG", transparency=FOREST)
    decoded = pixels.decode_pixels(buffer.getvalue())
    assert decoded.shape == (4, 4, 4) and int(decoded[..., 3].max()) == 0
    assert pixels.measure(decoded)["nodata_fraction"] == 1.0


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 1, 4), (1, 2, 3), (3, 1, 4)])
def test_table_scan_on_tiny_images(shape: tuple[int, int, int]) -> None:
    # One or two pixels: the packing's hand-packed last pixel is all there is.
    image = np.full(shape, 0, dtype=np.uint8)
    image[..., :3] = FOREST
    image[-1, -1, :3] = WATER
    if shape[2] == 4:
        image[..., 3] = 255
    new, old = pixels._scan(image), pixels._scan_by_rules(image)
    assert np.array_equal(new.classes, old.classes)
    assert pixels._metrics(new) == pixels._metrics(old)
