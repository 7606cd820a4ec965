"""The analyzer interface: what every analyzer (Claude, local pixels) takes and gives back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class DataWindow:
    """The part of an image inside the layer's extent, as fractions (0-1) of its width and
    height measured from the top-left corner; the rest of the image holds no data."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def fraction(self) -> float:
        """The share of the image inside the window (0-1)."""
        return max(0.0, self.right - self.left) * max(0.0, self.bottom - self.top)

    @property
    def is_whole(self) -> bool:
        """True when the window is the whole image."""
        return self.left <= 0 and self.top <= 0 and self.right >= 1 and self.bottom >= 1


class AreaOfInterest(Hashable, Protocol):
    """The polygon of an area request (`satapi.areas.Region`): which pixels lie inside it."""

    @property
    def area_km2(self) -> float:
        """Its geodesic area."""
        ...

    @property
    def vertices(self) -> int:
        """How many coordinates it has."""
        ...

    @property
    def key(self) -> str:
        """A string that differs between two different polygons (for cache keys)."""
        ...

    def mask(
        self, shape: tuple[int, int], bbox: tuple[float, float, float, float] | None = None
    ) -> NDArray[np.bool_]:
        """(H, W): True for the pixels of the image (at `shape`; of the request's bbox, or of
        `bbox`) whose centres lie inside."""
        ...


@dataclass(frozen=True, kw_only=True)
class ImagePart:
    """One tile of a stitched image, as it was fetched (encoded): where it lies in the whole
    image (pixels from the top-left) and its bbox."""

    data: bytes
    x: int
    y: int
    width: int
    height: int
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True, kw_only=True)
class ImageInput:
    """One image to analyse, with what is known about where and when it was taken."""

    data: bytes
    content_type: str
    label: str = "image"  # "image" for a single analysis, "before"/"after" in a comparison
    provider: str | None = None
    layer: str | None = None
    bbox: tuple[float, float, float, float] | None = None  # lon/lat for EPSG:4326 / CRS:84
    crs: str | None = None
    time: str | None = None
    # Where the image holds data: None when all of it lies inside the layer's extent. The
    # local analyzer turns it into a per-pixel `valid` mask (see analyzers/local.py valid_mask).
    data_window: DataWindow | None = None
    # An area request's polygon: only the pixels inside it count, the rest is not the area.
    region: AreaOfInterest | None = None
    # A stitched image's tiles, with the whole image's (width, height): an analyzer that can
    # (the local one) measures them one by one instead of decoding the whole image.
    parts: tuple[ImagePart, ...] = ()
    size: tuple[int, int] | None = None


@dataclass(frozen=True, kw_only=True)
class AnalysisTask:
    """One image to describe, or two (before, after) to compare."""

    images: Sequence[ImageInput]
    prompt: str | None = None

    @property
    def is_comparison(self) -> bool:
        """True when the task compares a before and an after image."""
        return len(self.images) == 2


@dataclass(frozen=True)
class TextDelta:
    """A piece of the analysis text, in the order it was produced."""

    text: str


@dataclass(kw_only=True)
class AnalysisResult:
    """The finished analysis."""

    analyzer: str
    model: str | None
    text: str
    metrics: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, int] | None = None
    # Extra images the analyzer made (e.g. "change_mask" -> PNG bytes), stored by the caller.
    images: dict[str, bytes] = field(default_factory=dict)


AnalysisEvent = TextDelta | AnalysisResult


class Analyzer(Protocol):
    """Something that turns images into an analysis, streaming its text as it goes.

    `stream` yields zero or more `TextDelta`s and then exactly one `AnalysisResult`, last.
    Errors are raised as `satapi.errors.SatapiError` subclasses.
    """

    name: str

    @property
    def model(self) -> str | None:
        """The model that produces the text, or None for non-AI analyzers."""
        ...

    def stream(self, task: AnalysisTask) -> AsyncIterator[AnalysisEvent]:
        """Analyse `task`, yielding text deltas and then the result."""
        ...


async def run_analysis(analyzer: Analyzer, task: AnalysisTask) -> AnalysisResult:
    """Consume `analyzer.stream(task)` and return its final result."""
    result: AnalysisResult | None = None
    async for event in analyzer.stream(task):
        if isinstance(event, AnalysisResult):
            result = event
    if result is None:
        raise RuntimeError(f"analyzer {analyzer.name!r} ended without a result")
    return result
