"""Tests for LocalAnalyzer: streaming order, worker-thread use, comparisons and errors."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytest

from satapi.analyzers import pixels
from satapi.analyzers.base import (
    AnalysisEvent,
    AnalysisResult,
    AnalysisTask,
    Analyzer,
    DataWindow,
    ImageInput,
    TextDelta,
    run_analysis,
)
from satapi.analyzers.local import PROMPT_NOTE, LocalAnalyzer, split_sentences
from satapi.cpu import CpuRunner
from satapi.errors import InvalidRequest, NotAnImage

T = TypeVar("T")

FOREST = (34, 139, 34, 255)
BROWN = (150, 110, 70, 255)
WATER = (20, 50, 120, 255)
GREY = (128, 128, 128, 255)


def png(rows: list[tuple[tuple[int, int, int, int], int]], width: int = 80) -> bytes:
    """A PNG of horizontal bands: (colour, number of rows)."""
    height = sum(count for _, count in rows)
    image = np.zeros((height, width, 4), dtype=np.uint8)
    row = 0
    for color, count in rows:
        image[row : row + count] = color
        row += count
    return pixels.encode_png(image)


def image(data: bytes, label: str = "image") -> ImageInput:
    return ImageInput(data=data, content_type="image/png", label=label)


class RecordingCpu(CpuRunner):
    """A CpuRunner that records which functions ran and on which thread."""

    def __init__(self) -> None:
        super().__init__(max_threads=2)
        self.calls: list[str] = []
        self.threads: list[int] = []

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        def wrapped() -> T:
            self.threads.append(threading.get_ident())
            return fn(*args, **kwargs)

        self.calls.append(getattr(fn, "__name__", repr(fn)))
        return await super().run(wrapped)


async def collect(analyzer: LocalAnalyzer, task: AnalysisTask) -> list[AnalysisEvent]:
    return [event async for event in analyzer.stream(task)]


def test_satisfies_the_analyzer_protocol() -> None:
    analyzer: Analyzer = LocalAnalyzer(CpuRunner())
    assert analyzer.name == "local"
    assert analyzer.model is None


async def test_single_image_streams_sentences_then_one_result() -> None:
    cpu = RecordingCpu()
    analyzer = LocalAnalyzer(cpu)
    task = AnalysisTask(images=[image(png([(FOREST, 30), (WATER, 40), (GREY, 30)]))])
    events = await collect(analyzer, task)

    deltas, result = events[:-1], events[-1]
    assert len(deltas) >= 3
    assert all(isinstance(event, TextDelta) for event in deltas)
    assert isinstance(result, AnalysisResult)
    assert "".join(event.text for event in deltas if isinstance(event, TextDelta)) == result.text
    assert result.analyzer == "local"
    assert result.model is None
    assert result.usage is None
    assert result.images == {}
    assert result.metrics["vegetation_fraction"] == pytest.approx(0.3, abs=0.005)
    assert result.metrics["water_fraction"] == pytest.approx(0.4, abs=0.005)
    assert result.text.startswith("Heuristic pixel analysis (not AI)")
    assert PROMPT_NOTE not in result.text
    # The pixel work ran once, in a worker thread, not on the event loop's thread.
    assert len(cpu.calls) == 1
    assert cpu.threads and cpu.threads[0] != threading.get_ident()


async def test_comparison_returns_a_change_mask_png_of_the_before_size() -> None:
    before = png([(FOREST, 20), (GREY, 50), (WATER, 30)], width=90)
    after = png([(BROWN, 20), (GREY, 50), (WATER, 30)], width=90)
    task = AnalysisTask(images=[image(before, "before"), image(after, "after")])
    events = await collect(LocalAnalyzer(CpuRunner()), task)

    result = events[-1]
    assert isinstance(result, AnalysisResult)
    assert all(isinstance(event, TextDelta) for event in events[:-1])
    assert result.metrics["changed_fraction"] == pytest.approx(0.2, abs=0.03)
    assert result.metrics["deltas"]["vegetation_fraction"] == pytest.approx(-0.2, abs=0.01)
    assert result.text.startswith("Heuristic pixel change detection (not AI)")
    mask = pixels.decode_rgba(result.images["change_mask"])
    assert mask.shape == (100, 90, 4)
    magenta = [255, 0, 255, 255]
    assert mask[5, 5].tolist() == magenta
    assert mask[50, 5].tolist() != magenta


async def test_comparison_with_different_sizes_uses_the_before_grid() -> None:
    before = png([(FOREST, 20), (GREY, 80)], width=100)
    after = png([(BROWN, 10), (GREY, 40)], width=50)
    task = AnalysisTask(images=[image(before, "before"), image(after, "after")])
    result = await run_analysis(LocalAnalyzer(CpuRunner()), task)
    assert pixels.decode_rgba(result.images["change_mask"]).shape == (100, 100, 4)
    assert result.metrics["changed_fraction"] == pytest.approx(0.2, abs=0.03)


@pytest.mark.parametrize(
    ("prompt", "noted"),
    [(None, False), ("", False), ("   ", False), ("Is there a new road?", True)],
)
async def test_prompt_gets_one_note_at_the_end(prompt: str | None, noted: bool) -> None:
    task = AnalysisTask(images=[image(png([(FOREST, 10)]))], prompt=prompt)
    events = await collect(LocalAnalyzer(CpuRunner()), task)
    result = events[-1]
    assert isinstance(result, AnalysisResult)
    assert result.text.endswith(PROMPT_NOTE) is noted
    assert result.text.count(PROMPT_NOTE) == int(noted)
    last_delta = events[-2]
    assert isinstance(last_delta, TextDelta)
    if noted:
        assert last_delta.text == " " + PROMPT_NOTE
    else:
        assert PROMPT_NOTE not in last_delta.text


async def test_garbage_bytes_raise_not_an_image_naming_the_image() -> None:
    task = AnalysisTask(
        images=[image(png([(FOREST, 10)]), "before"), image(b"<html>nope</html>", "after")]
    )
    with pytest.raises(NotAnImage, match="after image"):
        await collect(LocalAnalyzer(CpuRunner()), task)


async def test_max_pixels_is_enforced() -> None:
    task = AnalysisTask(images=[image(png([(FOREST, 100)], width=100))])
    with pytest.raises(NotAnImage, match="limit of 5,000 pixels"):
        await collect(LocalAnalyzer(CpuRunner(), max_pixels=5_000), task)


@pytest.mark.parametrize("count", [0, 3])
async def test_wrong_number_of_images_is_invalid(count: int) -> None:
    task = AnalysisTask(images=[image(png([(FOREST, 10)]))] * count)
    with pytest.raises(InvalidRequest):
        await collect(LocalAnalyzer(CpuRunner()), task)


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("One. Two! Three?", ["One.", " Two!", " Three?"]),
        ("Brightness 0.42 here. Next.", ["Brightness 0.42 here.", " Next."]),
        ("No full stop", ["No full stop"]),
        ("", []),
    ],
)
def test_split_sentences_keeps_text_intact(text: str, pieces: list[str]) -> None:
    assert split_sentences(text) == pieces
    assert "".join(split_sentences(text)) == text


async def test_data_window_leaves_the_uncovered_part_out_as_no_data() -> None:
    # Top half forest; the bottom half is the server's white background outside the layer.
    data = png([(FOREST, 20), ((255, 255, 255, 255), 20)])
    window = DataWindow(left=0.0, top=0.0, right=1.0, bottom=0.5)
    covered = ImageInput(data=data, content_type="image/png", data_window=window)
    result = await run_analysis(LocalAnalyzer(CpuRunner()), AnalysisTask(images=[covered]))
    assert result.metrics["vegetation_fraction"] == 1.0
    assert result.metrics["cloud_fraction"] == 0.0
    assert result.metrics["nodata_fraction"] == 0.5
    assert "50 % of the frame has no data" in result.text
    whole = await run_analysis(LocalAnalyzer(CpuRunner()), AnalysisTask(images=[image(data)]))
    assert whole.metrics["cloud_fraction"] == 0.5


async def test_comparison_counts_pixels_inside_both_windows() -> None:
    before = png([(FOREST, 40)])
    after = png([(BROWN, 40)])
    top = DataWindow(left=0.0, top=0.0, right=1.0, bottom=0.5)
    task = AnalysisTask(
        images=[
            ImageInput(data=before, content_type="image/png", label="before", data_window=top),
            ImageInput(data=after, content_type="image/png", label="after"),
        ]
    )
    result = await run_analysis(LocalAnalyzer(CpuRunner()), task)
    assert result.metrics["valid_fraction"] == 0.5
    assert result.metrics["changed_fraction"] == 1.0
