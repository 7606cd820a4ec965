"""System prompts and user-text builders for analysing satellite and aerial images with Claude."""

from __future__ import annotations

import math
from typing import Final

from satapi.analyzers.base import AnalysisTask, DataWindow, ImageInput

SINGLE_IMAGE_SYSTEM_PROMPT: Final = """\
You are an analyst of satellite and aerial imagery. You are given one image taken from above, \
usually fetched from an OGC WMS server, together with what is known about it: the provider, \
the layer, the bounding box, the coordinate reference system and the date.

Describe what the image actually shows, as concretely as the resolution allows:
- Land cover: farmland and field patterns, forest, grassland, bare soil or rock, sand, snow and \
ice, wetlands.
- Vegetation health: dense and green, sparse, dry or stressed, harvested or recently cleared; \
say what you base this on (colour, texture, pattern).
- Water: rivers, lakes, reservoirs, coastline, flooding, sediment or algae colouring the water.
- Built-up areas: towns, villages, industrial sites, roads, railways, airports, ports, mines, \
and roughly how dense they are.
- Clouds, cloud shadows, haze and smoke: how much of the frame they cover and what they hide. \
Say plainly when they make part of the scene impossible to judge.
- Notable features: anything unusual or important, such as burn scars, landslides, new \
construction, flooding or large infrastructure.

Say where things are in the frame using compass directions (north is up unless the context \
says otherwise) or frame positions such as "upper left" or "centre". Use the bounding box to \
give a sense of scale when it helps.

Be honest about uncertainty: say what is clear, what is likely and what you cannot tell. \
Do not invent place names, dates, events or statistics the image and context do not support; \
when you recognise a place, say how sure you are. Uniform flat areas of pure black, white or \
grey at the edges are usually missing data, not land. Some layers are false-colour or index \
renderings (for example vegetation shown in red); if the layer name or colours suggest that, \
interpret the colours accordingly and say so.

Answer the user's question directly first, then give the supporting detail. Use short \
paragraphs or bullet points, no more than about 400 words unless the question needs more.\
"""

COMPARISON_SYSTEM_PROMPT: Final = """\
You are an analyst of satellite and aerial imagery, comparing two images of the same area \
taken at different times: a "before" image and an "after" image, each labelled with its date. \
You are also told what is known about them: provider, layer, bounding box, coordinate \
reference system.

Report what changed between the two images:
- What changed: for example new or removed buildings and roads, cleared or regrown vegetation, \
crops planted or harvested, water bodies growing or shrinking, flooding, burn scars, \
landslides, coastline or river course changes, mining or construction activity.
- Where in the frame: use compass directions (north is up unless the context says otherwise) \
and frame positions such as "north-east corner", "along the southern edge" or "centre", and \
say roughly how large the changed area is relative to the frame.
- Likely causes: seasonal change, agriculture, urban growth, fire, flood, drought, \
deforestation and so on. Present causes as likely or possible, not as fact.
- What is uncertain: clouds, cloud shadows, haze, a different sun angle or time of day, a \
different season, or a different sensor or colour rendering can all look like change. Say \
which apparent differences may come from these rather than from real change on the ground, \
and which parts of the frame cannot be compared at all.

If you see no meaningful change, say so plainly rather than listing trivial differences. Do \
not invent place names, dates, events or statistics the images and context do not support. \
Uniform flat areas of pure black, white or grey at the edges are usually missing data.

Answer the user's question directly first, then give the supporting detail. Use short \
paragraphs or bullet points, no more than about 400 words unless the question needs more.\
"""

DEFAULT_QUESTION: Final = (
    "Describe what this image shows: land cover, vegetation health, water, built-up areas, "
    "clouds and anything notable."
)

DEFAULT_COMPARISON_QUESTION: Final = (
    "What changed between the before and the after image, where in the frame, and what are "
    "the likely causes?"
)

# CRS names whose bounding boxes this service always passes as lon/lat degrees.
_LONLAT_CRS: Final = frozenset({"EPSG:4326", "CRS:84", "OGC:CRS84", "OGC:1.3:CRS84"})
_KM_PER_DEGREE_LAT: Final = 110.574
_KM_PER_DEGREE_LON_AT_EQUATOR: Final = 111.320


def system_prompt_for(task: AnalysisTask) -> str:
    """The system prompt for `task`: the comparison prompt for two images, else the single one."""
    return COMPARISON_SYSTEM_PROMPT if task.is_comparison else SINGLE_IMAGE_SYSTEM_PROMPT


def describe_bbox(bbox: tuple[float, float, float, float], crs: str | None) -> str:
    """One line naming the bounding box, with its axis order and, for lon/lat, its rough size."""
    minx, miny, maxx, maxy = bbox
    if crs is None or crs.upper() in _LONLAT_CRS:
        mid_lat = math.radians((miny + maxy) / 2)
        width_km = abs(maxx - minx) * _KM_PER_DEGREE_LON_AT_EQUATOR * math.cos(mid_lat)
        height_km = abs(maxy - miny) * _KM_PER_DEGREE_LAT
        return (
            f"Bounding box (lon/lat, degrees): west {_num(minx, 6)}, south {_num(miny, 6)}, "
            f"east {_num(maxx, 6)}, north {_num(maxy, 6)} "
            f"(roughly {_km(width_km)} east-west by {_km(height_km)} north-south)"
        )
    return f"Bounding box ({crs} coordinates, min x, min y, max x, max y): " + ", ".join(
        _num(v, 2) for v in bbox
    )


def describe_context(image: ImageInput, *, include_date: bool = True) -> list[str]:
    """The known facts about `image` as "Name: value" lines; unknown fields are left out."""
    lines: list[str] = []
    if image.provider:
        lines.append(f"Provider: {image.provider}")
    if image.layer:
        lines.append(f"Layer: {image.layer}")
    if image.bbox is not None:
        lines.append(describe_bbox(image.bbox, image.crs))
    if image.crs:
        lines.append(f"CRS: {image.crs}")
    if include_date and image.time:
        lines.append(f"Date: {image.time}")
    window = image.data_window
    if window is not None and not window.is_whole:
        lines.append(describe_coverage(window))
    if image.region is not None:
        lines.append(describe_area(image.region.area_km2))
    return lines


def describe_area(area_km2: float) -> str:
    """Which part of the image is the area asked about (the rest is dimmed)."""
    return (
        f"Area of interest: the polygon shown at full brightness ({_num(area_km2, 2)} km²); "
        "the dimmed part around it lies outside the area, so describe only the area."
    )


def describe_coverage(window: DataWindow) -> str:
    """Which part of the image lies inside the layer's extent (the rest holds no data)."""
    sides = []
    if window.top > 0:
        sides.append("top")
    if window.bottom < 1:
        sides.append("bottom")
    if window.left > 0:
        sides.append("left")
    if window.right < 1:
        sides.append("right")
    edge = " and ".join(sides)
    return (
        f"Coverage: only {round(window.fraction * 100)} % of the image lies inside the layer's "
        f"extent; the part along the {edge} edge is outside it and holds no data (blank or "
        "background fill), so describe only the covered part."
    )


def single_image_text(image: ImageInput, question: str | None) -> str:
    """The user text that follows the image: its context, then the question (or the default)."""
    context = describe_context(image)
    parts = []
    if context:
        parts.append("Context:\n" + "\n".join(f"- {line}" for line in context))
    parts.append("Question: " + _question(question, DEFAULT_QUESTION))
    return "\n\n".join(parts)


def comparison_label(image: ImageInput, which: str) -> str:
    """The text placed just before one image of a comparison, e.g. "Before (2024-05-01):"."""
    return f"{which} ({image.time or 'date unknown'}):"


def comparison_text(before: ImageInput, after: ImageInput, question: str | None) -> str:
    """The user text that follows both images: their context, then the question (or default)."""
    before_ctx = describe_context(before, include_date=False)
    after_ctx = describe_context(after, include_date=False)
    dates = f"- Before: {before.time or 'date unknown'}\n- After: {after.time or 'date unknown'}"
    if before_ctx == after_ctx:
        shared = "\n".join(f"- {line}" for line in before_ctx)
        context = "Context (same for both images):\n" + (shared + "\n" if shared else "") + dates
    else:
        context = (
            "Context of the before image:\n"
            + "\n".join(f"- {line}" for line in [*before_ctx, f"Date: {before.time or 'unknown'}"])
            + "\n\nContext of the after image:\n"
            + "\n".join(f"- {line}" for line in [*after_ctx, f"Date: {after.time or 'unknown'}"])
            + "\n\nNote: the two images differ in area, layer or source, so some differences "
            "may not be real change."
        )
    return context + "\n\nQuestion: " + _question(question, DEFAULT_COMPARISON_QUESTION)


def _question(question: str | None, default: str) -> str:
    text = (question or "").strip()
    return text or default


def _num(value: float, decimals: int) -> str:
    # Fixed-point without trailing zeros: `:g` would print 1.11319e+06 or cut 10.123456 to 10.1235.
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _km(km: float) -> str:
    # Round to what a reader needs for a sense of scale; metres below 1 km.
    if km < 1:
        return f"{round(km * 1000, -1):.0f} m"
    if km < 10:
        return f"{km:.1f} km"
    return f"{km:.0f} km"
