"""The built-in "local" analyzer: heuristic pixel statistics, no AI and no API key needed."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from satapi.analyzers import pixels
from satapi.analyzers.base import (
    AnalysisEvent,
    AnalysisResult,
    AnalysisTask,
    ImageInput,
    TextDelta,
)
from satapi.cpu import CpuRunner
from satapi.errors import InvalidRequest, NotAnImage

PROMPT_NOTE = "The local analyzer cannot answer free-form questions, so the prompt was not used."

# Split after sentence ends only when whitespace follows, so "0.42" stays in one piece.
_SENTENCE_END = re.compile(r"(?<=[.!?])(?=\s)")


def split_sentences(text: str) -> list[str]:
    """Split text into sentence pieces whose concatenation is exactly `text`."""
    return [piece for piece in _SENTENCE_END.split(text) if piece]


def _decode(data: bytes, label: str, max_pixels: int) -> pixels.RgbaArray:
    """`pixels.decode_pixels` (RGB or RGBA), with the image's role named in the error."""
    try:
        return pixels.decode_pixels(data, max_pixels)
    except NotAnImage as exc:
        raise NotAnImage(
            f"Could not read the {label} image. {exc.message}", extra=exc.extra
        ) from exc


def region_mask(image: ImageInput, shape: tuple[int, int]) -> pixels.ValidMask | None:
    """The pixels of `image` (at `shape`) inside an area request's polygon, or None."""
    return None if image.region is None else image.region.mask(shape)


def valid_mask(
    image: ImageInput, shape: tuple[int, int], region: pixels.ValidMask | None = None
) -> pixels.ValidMask | None:
    """The pixels of `image` (decoded to `shape`, (H, W)) that the metrics count, or None for
    all of them: those inside the layer's extent (`data_window`) and inside the area's polygon
    (`region`, from `region_mask`). Every further restriction of the counted pixels is ANDed
    in here."""
    mask: pixels.ValidMask | None = None
    window = image.data_window
    if window is not None and not window.is_whole:
        mask = pixels.window_mask(shape, window.left, window.top, window.right, window.bottom)
    if region is not None:
        mask = region if mask is None else mask & region
    return mask


def _analyse_one(image: ImageInput, max_pixels: int) -> tuple[dict[str, Any], str]:
    """Decode, measure and summarise one image (blocking; runs in a worker thread)."""
    decoded = _decode(image.data, image.label, max_pixels)
    shape = decoded.shape[:2]
    region = region_mask(image, shape)
    metrics = pixels.measure(decoded, valid_mask(image, shape, region), region)
    return metrics, pixels.summarize(metrics, "frame" if region is None else "area")


def _analyse_parts(image: ImageInput, max_pixels: int) -> tuple[dict[str, Any], str]:
    """`_analyse_one` for a stitched image, tile by tile: one decoded tile in memory at a time,
    the counts added up (blocking; runs in a worker thread)."""
    assert image.size is not None
    whole_width, whole_height = image.size
    counts = pixels.Accumulator()
    for part in image.parts:
        decoded = _decode(part.data, image.label, max_pixels)
        shape = (part.height, part.width)
        if decoded.shape[:2] != shape:
            raise NotAnImage(f"A tile of the {image.label} image is not the size it should be.")
        region = None if image.region is None else image.region.mask(shape, part.bbox)
        mask = region
        window = image.data_window
        if window is not None and not window.is_whole:
            inside = pixels.window_mask(
                shape,
                window.left,
                window.top,
                window.right,
                window.bottom,
                offset=(part.x, part.y),
                whole=(whole_width, whole_height),
            )
            mask = inside if mask is None else mask & inside
        counts.add(decoded, mask, region)
    metrics = counts.metrics()
    return metrics, pixels.summarize(metrics, "frame" if image.region is None else "area")


def _analyse_pair(
    before: ImageInput, after: ImageInput, max_pixels: int
) -> tuple[dict[str, Any], str, bytes]:
    """Decode and compare two images; returns metrics, summary and the change-mask PNG.

    A pixel counts when both images' masks count it (the mask is on the before image's grid).
    """
    before_rgba = _decode(before.data, before.label, max_pixels)
    after_rgba = _decode(after.data, after.label, max_pixels)
    shape = before_rgba.shape[:2]
    # Both sides are of one area: the before image's polygon mask stands for both.
    region = region_mask(before, shape)
    masks = [
        m
        for m in (valid_mask(before, shape, region), valid_mask(after, shape, region))
        if m is not None
    ]
    valid = masks[0] & masks[1] if len(masks) == 2 else (masks[0] if masks else None)
    metrics, mask_png = pixels.compare_png(before_rgba, after_rgba, valid, region)
    whole = "frame" if region is None else "area"
    return metrics, pixels.summarize_change(metrics, whole), mask_png


class LocalAnalyzer:
    """Describes images from pixel colours alone: land-cover fractions and change masks."""

    name: str = "local"
    # It measures a stitched image tile by tile when given the tiles (`ImageInput.parts`).
    takes_parts: bool = True

    def __init__(self, cpu: CpuRunner, max_pixels: int = 64_000_000) -> None:
        self._cpu = cpu
        self._max_pixels = max_pixels

    @property
    def model(self) -> str | None:
        """Always None: no model is involved."""
        return None

    async def stream(self, task: AnalysisTask) -> AsyncIterator[AnalysisEvent]:
        """Analyse `task` off the event loop, then yield its summary sentence by sentence."""
        images: dict[str, bytes] = {}
        if len(task.images) == 1:
            image = task.images[0]
            run = _analyse_parts if image.parts and image.size else _analyse_one
            metrics, text = await self._cpu.run(run, image, self._max_pixels)
        elif task.is_comparison:
            before, after = task.images
            metrics, text, mask_png = await self._cpu.run(
                _analyse_pair, before, after, self._max_pixels
            )
            images["change_mask"] = mask_png
        else:
            raise InvalidRequest(
                f"The local analyzer takes one image or two (before, after), "
                f"not {len(task.images)}."
            )
        if task.prompt and task.prompt.strip():
            text = f"{text} {PROMPT_NOTE}"
        for piece in split_sentences(text):
            yield TextDelta(piece)
        yield AnalysisResult(
            analyzer=self.name,
            model=None,
            text=text,
            metrics=metrics,
            usage=None,
            images=images,
        )
