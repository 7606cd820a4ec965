"""The API's request and response schemas (pydantic), with descriptions and examples for /docs."""

from __future__ import annotations

import datetime as dt
import re
import warnings
from typing import TYPE_CHECKING, Annotated, Any, Literal

from geojson_pydantic import Feature, MultiPolygon, Polygon
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError

# geojson-pydantic warns about a GeoJSON `bbox` member crossing the antimeridian; satapi never
# reads that member (the polygon's own bounds count), so a client's odd one is no concern.
warnings.filterwarnings(
    "ignore", message="BBOX crossing the Antimeridian", module="geojson_pydantic"
)

if TYPE_CHECKING:
    # Only for annotations: the models are shared with `satapi.client`, which must import
    # without the server's modules (aiofiles, stamina, lxml, ...).
    from satapi.imagery import FetchedImage
    from satapi.selection import ClearestSpec, Selection
    from satapi.storage import ImageRecord
    from satapi.wms_client import GetMapRequest

_WHEN = r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?"
TIME_PATTERN = rf"^{_WHEN}$"
TIME_OR_INTERVAL_PATTERN = rf"^{_WHEN}(/{_WHEN})?$"
LAYER_PATTERN = r"^[A-Za-z0-9_.:,\-/ ]{1,256}$"


def _real_dates(value: str) -> str:
    """Refuse a date that has the right form but is not on the calendar ("2024-13-45"), in
    words: the pattern only sees digits."""
    for part in value.split("/"):
        if not re.fullmatch(_WHEN, part):
            continue  # the field's pattern says what form is expected
        year, month, day = int(part[0:4]), int(part[5:7]), int(part[8:10])
        if not 1 <= month <= 12:
            problem = f"month {month} does not exist"
        else:
            try:
                dt.date(year, month, day)
            except ValueError:
                problem = f"{year}-{month:02d} has no day {day}"
            else:
                if "T" not in part:
                    continue
                try:
                    dt.datetime.fromisoformat(part.replace("Z", "+00:00"))
                except ValueError:
                    problem = "its time of day does not exist"
                else:
                    continue
        raise PydanticCustomError(
            "impossible_date",
            "{value} is not a real date: {problem}",
            {"value": part, "problem": problem},
        )
    return value


RealDates = AfterValidator(_real_dates)

# What each pattern of the request models expects, in words: validation errors say this
# (`satapi.web.handlers`), never the regular expression.
PATTERN_WORDS: dict[str, str] = {
    TIME_PATTERN: "an ISO 8601 date or date-time, e.g. 2024-06-01 or 2024-06-01T10:30:00Z",
    TIME_OR_INTERVAL_PATTERN: (
        "an ISO 8601 date, date-time or interval, e.g. 2024-06-01 or 2024-06-01/2024-06-30"
    ),
    LAYER_PATTERN: ("a layer name: 1 to 256 letters, digits, spaces or _ . : , - /, e.g. scene"),
}

EXAMPLE_BBOX = [-10.0, 35.0, 5.0, 44.0]
# A field near Bologna, for the area examples.
EXAMPLE_POLYGON: dict[str, Any] = {
    "type": "Polygon",
    "coordinates": [
        [[11.30, 44.48], [11.36, 44.47], [11.38, 44.51], [11.33, 44.53], [11.30, 44.48]]
    ],
}

AreaGeometry = Annotated[
    Polygon | MultiPolygon | Feature[Polygon | MultiPolygon, dict[str, Any]],
    Field(discriminator="type"),
]
EXAMPLE_LAYER = "MODIS_Terra_CorrectedReflectance_TrueColor"


def example_config(**fields: Any) -> ConfigDict:
    """A request model's config: no unknown fields, and two examples for /docs: a bbox over
    Spain, and a field near Bologna as a polygon at 10 m per pixel."""
    example = {"provider": "gibs", "layer": EXAMPLE_LAYER, "bbox": list(EXAMPLE_BBOX), **fields}
    polygon = {k: v for k, v in example.items() if k not in ("bbox", "width", "height")}
    polygon.update(geometry=EXAMPLE_POLYGON, resolution=10.0)
    return ConfigDict(extra="forbid", json_schema_extra={"examples": [example, polygon]})


Time = Annotated[
    str,
    RealDates,
    Field(
        pattern=TIME_PATTERN,
        description="ISO 8601 date or date-time sent as the WMS TIME parameter.",
        examples=["2024-06-01"],
    ),
]
TimeOrInterval = Annotated[
    str,
    RealDates,
    Field(
        pattern=TIME_OR_INTERVAL_PATTERN,
        description=(
            "ISO 8601 date or date-time (the WMS TIME parameter). Sentinel Hub providers also "
            "take an interval `start/end`; for them a date means that whole UTC day."
        ),
        examples=["2024-06-01"],
    ),
]


# --- clearest date ---------------------------------------------------------------------

_WHEN = TIME_PATTERN.removeprefix("^").removesuffix("$")
WINDOW_PATTERN = f"^{_WHEN}/{_WHEN}$"
DURATION_PATTERN = r"^P(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(\d+H)?(\d+M)?(\d+S)?)?$"
PATTERN_WORDS[WINDOW_PATTERN] = (
    "START/END: two ISO 8601 dates or date-times, e.g. 2024-05-01/2024-09-30"
)
PATTERN_WORDS[DURATION_PATTERN] = "an ISO 8601 duration, e.g. P1M, P7D or P1Y"
MaxCandidates = Annotated[
    int,
    Field(
        ge=1,
        le=50,
        description="At most this many of the window's dates are previewed (thinned evenly).",
    ),
]
MaxCloud = Annotated[
    float,
    Field(
        ge=0.0,
        le=1.0,
        description="Refuse (422 `too_cloudy`) when even the best date scores above this.",
    ),
]


class Clearest(BaseModel):
    """Instead of `time`: the least cloudy of the layer's dates in a window."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"window": "2024-05-01/2024-09-30", "max_candidates": 12, "max_cloud": 1.0}
            ]
        },
    )

    window: Annotated[str, RealDates] = Field(
        pattern=WINDOW_PATTERN,
        max_length=80,
        description="start/end (ISO 8601 dates or date-times, both inclusive).",
        examples=["2024-05-01/2024-09-30"],
    )
    max_candidates: MaxCandidates = 12
    max_cloud: MaxCloud = 1.0

    def spec(self) -> ClearestSpec:
        """The domain form."""
        from satapi.selection import ClearestSpec  # server-side only (see the imports)

        return ClearestSpec(
            window=self.window, max_candidates=self.max_candidates, max_cloud=self.max_cloud
        )


def _absent(value: object) -> bool:
    """Optional fields added by `clearest` are left out of answers that did not use it."""
    return value is None


class CandidateOut(BaseModel):
    """One candidate date: its preview's cloud and no-data fractions, or why it failed."""

    time: str
    status: Literal["ok", "failed"]
    cloud_fraction: float | None
    nodata_fraction: float | None
    score: float | None = Field(description="cloud_fraction + nodata_fraction; lowest wins.")
    code: str | None = Field(description="The error code of a preview that failed.")
    error: str | None
    preview_id: str | None = Field(description="The stored preview: GET /api/images/{id}.")


class SelectionOut(BaseModel):
    """How the date was chosen: every candidate's score, sorted by time."""

    window: str
    chosen: str | None = Field(description="The chosen date (lowest score; ties: the latest).")
    candidates: list[CandidateOut]
    cached: bool = Field(description="True when the scores came from the selection cache.")
    note: str | None = None

    @classmethod
    def of(cls, selection: Selection) -> SelectionOut:
        """The public view of a selection."""
        return cls.model_validate(selection.as_dict())


class ImageFields(BaseModel):
    """Which map image to fetch: provider, layer, area, date and size."""

    model_config = ConfigDict(extra="forbid")

    provider: str | None = Field(
        default=None,
        max_length=64,
        description="A configured provider (see GET /api/providers); the default one if omitted.",
        examples=["gibs"],
    )
    layer: str | None = Field(
        default=None,
        pattern=LAYER_PATTERN,
        description="WMS layer name; the provider's default layer if omitted.",
        examples=[EXAMPLE_LAYER],
    )
    bbox: list[float] | None = Field(
        default=None,
        min_length=4,
        max_length=4,
        description=(
            "minx, miny, maxx, maxy. For EPSG:4326 and CRS:84 always longitude/latitude order; "
            "the service writes the axis order each WMS version expects."
        ),
        examples=[EXAMPLE_BBOX],
    )
    crs: str = Field(
        default="EPSG:4326",
        pattern=r"^(EPSG:\d{3,6}|CRS:84)$",
        description="Coordinate reference system of the bbox.",
        examples=["EPSG:4326"],
    )
    # The upper bound is the service's `max_image_px` (4096 by default): its OpenAPI document
    # states it as `maximum`, and a larger value is refused with that limit named.
    width: int = Field(default=512, ge=1, description="Image width in pixels.")
    height: int = Field(default=512, ge=1, description="Image height in pixels.")
    format: Literal["image/png", "image/jpeg", "image/tiff"] = Field(
        default="image/png",
        description=(
            "`image/tiff`: a georeferenced GeoTIFF (CRS and geotransform of the bbox; tiled, "
            "deflate), written by the service whatever the server offers."
        ),
    )
    style: str | None = Field(default=None, max_length=256, pattern=LAYER_PATTERN)
    geometry: AreaGeometry | None = Field(
        default=None,
        description=(
            "Instead of `bbox`: a GeoJSON Polygon or MultiPolygon (or a Feature holding one) in "
            "longitude/latitude (RFC 7946). The image covers its bounds; the local metrics "
            "count only the pixels inside it, and the answer's `area` gives its figures."
        ),
        examples=[EXAMPLE_POLYGON],
    )
    resolution: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description=(
            "Instead of `width`/`height`: metres per pixel. The width is the bbox's geodesic "
            "width along its centre latitude divided by this, the height its geodesic height "
            "along its centre meridian. Larger than the provider serves at once: fetched in "
            "tiles and stitched."
        ),
        examples=[10.0],
    )
    _region: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _area_fields(self) -> ImageFields:
        if self.geometry is not None and self.bbox is not None:
            raise ValueError("give either bbox or geometry, not both")
        if self.resolution is not None and {"width", "height"} & self.model_fields_set:
            raise ValueError("give either resolution or width/height, not both")
        return self

    @property
    def has_area(self) -> bool:
        """True when the request names its area (a bbox or a geometry)."""
        return self.bbox is not None or self.geometry is not None

    def getmap(
        self, default_layer: str, *, time: str | None = None, layer: str | None = None
    ) -> GetMapRequest:
        """The domain request: `layer`, else this request's layer, else the provider's default.

        With a `geometry`, the bbox is its bounds (`InvalidGeometry` when it is not valid);
        with a `resolution`, or a geometry and no width/height, the size follows from the
        area's size on the ground (512 px on its longer side by default).
        """
        # Server-side only (see the imports).
        from satapi.areas import Region, size_fitting, size_for_resolution
        from satapi.wms_client import GetMapRequest

        region = None
        if self.geometry is not None:
            if self._region is None or self._region.crs != self.crs:
                self._region = Region.of(self.geometry.model_dump(exclude_none=True), self.crs)
            region = self._region
            bbox = region.bbox
        else:
            assert self.bbox is not None
            bbox = (self.bbox[0], self.bbox[1], self.bbox[2], self.bbox[3])
        width, height, explicit = self.width, self.height, True
        if self.resolution is not None:
            width, height = size_for_resolution(bbox, self.crs, self.resolution)
            explicit = False
        elif region is not None and not {"width", "height"} & self.model_fields_set:
            width, height = size_fitting(bbox, self.crs, 512)
            explicit = False
        return GetMapRequest(
            layer=layer or self.layer or default_layer,
            bbox=bbox,
            crs=self.crs,
            width=width,
            height=height,
            format=self.format,
            time=time,
            style=self.style or "",
            region=region,
            resolution_m=self.resolution,
            explicit_size=explicit,
        )


class ImageRequest(ImageFields):
    """An image request: the fields below, or (for old clients) a complete `wms_url`."""

    time: TimeOrInterval | None = None
    clearest: Clearest | None = Field(
        default=None,
        description="Instead of `time`: the least cloudy date of the layer in a window.",
    )
    wms_url: str | None = Field(
        default=None,
        max_length=4096,
        description=(
            "A complete GetMap URL (old clients). Accepted only when its scheme, host and port "
            "belong to a configured provider or an allowed host; then the other fields are ignored."
        ),
    )

    model_config = example_config(
        time="2024-06-01",
        width=512,
        height=512,
        format="image/png",
    )

    @model_validator(mode="after")
    def _bbox_or_url(self) -> ImageRequest:
        if self.wms_url is None and not self.has_area:
            raise ValueError(
                "give either bbox or geometry (with the other image fields) or wms_url"
            )
        if self.clearest is not None:
            if self.time is not None:
                raise ValueError("give either time or clearest, not both")
            if self.wms_url is not None:
                raise ValueError(
                    "clearest needs bbox or geometry and the other image fields, not wms_url"
                )
        return self


class AreaOut(BaseModel):
    """An area request's figures (`geometry`, `resolution`, or an image fetched in tiles)."""

    area_km2: float = Field(
        description="Geodesic area inside the geometry (holes excluded), or of the bbox."
    )
    bbox: list[float] = Field(description="The image's bbox, in its CRS.")
    pixels: int = Field(description="Pixels whose centres lie inside the geometry.")
    width: int
    height: int
    resolution_m: float = Field(description="Metres per pixel (asked, or of width/height).")
    tiles: int = Field(description="GetMaps the image took: 1 when it fit in one.")


class ImageMeta(BaseModel):
    """A stored image and where it came from."""

    id: str = Field(description="sha256 of the canonical GetMap request.")
    url: str = Field(description="Where to GET the image bytes.")
    content_type: str
    width: int
    height: int
    bytes: int
    cached: bool = Field(description="True when no download was needed.")
    provider: str | None
    layer: str | None
    bbox: list[float] | None
    time: str | None
    attribution: str | None
    coverage: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description=(
            "The share of the image inside the layer's extent (0-1), from its capabilities; "
            "null when the extent is not known. The local analyzer counts only that part."
        ),
    )
    area: AreaOut | None = Field(
        default=None,
        exclude_if=_absent,
        description="With `geometry`, `resolution`, or tiles: the area's figures.",
    )

    @classmethod
    def from_fetched(cls, fetched: FetchedImage) -> ImageMeta:
        """The public view of an image fetched for a request (with its coverage)."""
        meta = cls.from_record(fetched.record, cached=fetched.cached)
        meta.coverage = fetched.coverage
        if fetched.area is not None:
            area = fetched.area
            meta.area = AreaOut(
                area_km2=area.area_km2,
                bbox=list(area.bbox),
                pixels=area.pixels,
                width=area.width,
                height=area.height,
                resolution_m=area.resolution_m,
                tiles=area.tiles,
            )
        return meta

    @classmethod
    def from_record(cls, record: ImageRecord, *, cached: bool) -> ImageMeta:
        """The public view of a store record."""
        return cls(
            id=record.id,
            url=f"/api/images/{record.id}",
            content_type=record.content_type,
            width=record.width,
            height=record.height,
            bytes=record.bytes,
            cached=cached,
            provider=record.provider,
            layer=record.layer,
            bbox=record.bbox,
            time=record.time,
            attribution=record.attribution,
        )


class ImageTimings(BaseModel):
    """Where the time went, in seconds."""

    queue_wait_s: float = 0.0
    download_s: float = 0.0
    total_s: float = 0.0


class ImageResponse(BaseModel):
    """The answer to POST /api/images."""

    success: Literal[True] = True
    image: ImageMeta
    timings: ImageTimings
    selection: SelectionOut | None = Field(
        default=None,
        exclude_if=_absent,
        description="With `clearest`: how the date was chosen (left out without it).",
    )


class StoredImageMeta(BaseModel):
    """The full metadata record of a stored image."""

    success: Literal[True] = True
    image: ImageMeta
    fetched_at: float
    expires_at: float | None
    crs: str | None
    source_url: str | None = Field(description="The GetMap URL, secrets redacted.")
    kind: str


class ErrorResponse(BaseModel):
    """Every error has this shape."""

    model_config = ConfigDict(extra="allow")

    success: Literal[False] = False
    error: str = Field(description="A human sentence saying what went wrong.")
    code: str = Field(description="Machine-readable error code.", examples=["invalid_bbox"])
    request_id: str | None = None


# Examples of 422 answers from the checks against a layer's capabilities (OpenAPI docs).
LAYER_CHECK_EXAMPLES: dict[str, dict[str, Any]] = {
    "time_not_available": {
        "summary": "The layer has no imagery for that date",
        "value": {
            "success": False,
            "error": "The layer 'scene' has no imagery for 2031-01-01 (nearest offered dates: "
            "before 2024-06-01).",
            "code": "time_not_available",
            "layer": "scene",
            "time": "2031-01-01",
            "nearest": {"before": "2024-06-01", "after": None},
        },
    },
    "unknown_layer": {
        "summary": "The provider has no such layer",
        "value": {
            "success": False,
            "error": "The provider 'ms' has no layer 'nope'. Its layers: cloudy, scene, "
            "scene_static.",
            "code": "unknown_layer",
            "layer": "nope",
            "layers": ["cloudy", "scene", "scene_static"],
            "layer_count": 3,
            "layers_url": "/api/providers/ms/layers",
        },
    },
    "outside_layer": {
        "summary": "The bbox does not overlap the layer",
        "value": {
            "success": False,
            "error": "The bbox [100.0, 45.0, 104.0, 47.0] (EPSG:4326) lies outside the layer "
            "'scene', which covers lon 10..14, lat 45..47.",
            "code": "outside_layer",
            "layer": "scene",
            "layer_extent": [10.0, 45.0, 14.0, 47.0],
            "crs": "CRS:84",
        },
    },
    "unsupported_crs": {
        "summary": "The layer is not offered in that CRS",
        "value": {
            "success": False,
            "error": "The layer 'scene' is not offered in EPSG:2154; it is offered in CRS:84, "
            "EPSG:3857, EPSG:4326. EPSG:4326 takes the bbox as lon/lat.",
            "code": "unsupported_crs",
            "crs": "EPSG:2154",
            "supported": ["CRS:84", "EPSG:3857", "EPSG:4326"],
        },
    },
}


class ProviderInfo(BaseModel):
    """A configured provider (secrets redacted)."""

    name: str
    kind: Literal["wms", "sentinelhub"] = Field(
        description="`wms` (GetMap) or `sentinelhub` (Process API with OAuth tokens)."
    )
    title: str | None
    url: str
    version: str | None = Field(description="The WMS version; null for other kinds.")
    default_layer: str = Field(description="The layer used when a request names none.")
    max_concurrency: int
    attribution: str | None
    default: bool


class ProvidersResponse(BaseModel):
    """The answer to GET /api/providers."""

    success: Literal[True] = True
    providers: list[ProviderInfo]


class LayerOut(BaseModel):
    """A layer from the provider's capabilities."""

    name: str
    title: str | None
    crs: list[str]
    bbox: list[float] | None
    times: list[str]
    default_time: str | None


class LayersResponse(BaseModel):
    """The answer to GET /api/providers/{name}/layers."""

    success: Literal[True] = True
    provider: str
    layers: list[LayerOut]


class HealthResponse(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, Any] = Field(default_factory=dict)


# --- analyses ------------------------------------------------------------------------------------

AnalyzerName = Literal["auto", "claude", "local"]

Prompt = Annotated[
    str | None,
    Field(
        default=None,
        max_length=4000,
        description="An optional question about the image(s), at most 4,000 characters.",
        examples=["Is there standing water or flooding in this area?"],
    ),
]
Analyzer = Annotated[
    AnalyzerName,
    Field(
        description=(
            "`auto`: Claude when an Anthropic key is configured, else the local pixel analyzer; "
            "`claude`; or `local` (heuristic pixel metrics, no key needed)."
        )
    ),
]


class VisionRequest(ImageRequest):
    """An image request plus what to ask about it and which analyzer answers."""

    prompt: Prompt = None
    analyzer: Analyzer = "auto"

    model_config = example_config(
        time="2024-06-01",
        width=512,
        height=512,
        format="image/png",
        analyzer="local",
        prompt="How much of this area is vegetated, and is any of it under cloud?",
    )


class AnalysisOut(BaseModel):
    """What the analyzer said."""

    analyzer: str = Field(description="`claude` or `local`.")
    model: str | None = Field(description="The AI model, or null for the local analyzer.")
    text: str
    metrics: dict[str, Any] = Field(
        description=(
            "Local analyzer: vegetation_fraction, water_fraction, bare_fraction, built_fraction, "
            "cloud_fraction, nodata_fraction, mean_brightness, dominant_colors. Empty for Claude."
        )
    )
    usage: dict[str, int] | None = Field(description="AI input/output tokens, when an AI ran.")
    cached: bool = Field(default=False, description="True when served from the result cache.")


class AnalysisTimings(BaseModel):
    """Where the time went, in seconds."""

    queue_wait_s: float
    download_s: float
    analysis_s: float
    total_s: float


class VisionResponse(BaseModel):
    """The answer to POST /api/vision/analyze_satellite (and the stream's `result` event)."""

    success: Literal[True] = True
    analysis_id: str
    image: ImageMeta
    analysis: AnalysisOut
    timings: AnalysisTimings
    selection: SelectionOut | None = Field(
        default=None,
        exclude_if=_absent,
        description="With `clearest`: how the date was chosen (left out without it).",
    )


class StoredAnalysis(BaseModel):
    """A persisted analysis answer, as GET /api/analyses/{id} returns it."""

    model_config = ConfigDict(extra="allow")

    success: Literal[True] = True
    analysis_id: str
    analysis: AnalysisOut
    created_at: float | None = None


# --- comparison ----------------------------------------------------------------------------------


class Side(BaseModel):
    """One side of a comparison: its date, and optionally its own layer. A plain string is
    shorthand for `{"time": ...}`."""

    model_config = ConfigDict(extra="forbid")

    time: TimeOrInterval | None = None
    clearest: Clearest | None = Field(
        default=None, description="Instead of `time`: the least cloudy date in a window."
    )
    layer: str | None = Field(
        default=None,
        pattern=LAYER_PATTERN,
        description="Overrides the request's layer (e.g. EOX's per-year s2cloudless-<year>).",
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_date(cls, value: Any) -> Any:
        # `"before": "2024-01-01"` is shorthand for `{"time": "2024-01-01"}` (as the CLI's
        # `--before DATE`); anything else is validated as the object it should be.
        return {"time": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _time_or_clearest(self) -> Side:
        if self.time is not None and self.clearest is not None:
            raise ValueError("give either time or clearest, not both")
        return self


class ComparisonRequest(ImageFields):
    """Two images of one area: `before` and `after` dates, or two complete GetMap URLs."""

    before: Side | None = Field(
        default=None,
        description='The earlier image: `{"time": ...}`, `{"clearest": ...}`, or a plain date '
        '(`"2024-01-01"`, shorthand for `{"time": "2024-01-01"}`).',
    )
    after: Side | None = Field(
        default=None, description="The later image, as `before`: an object or a plain date."
    )
    image1_url: str | None = Field(
        default=None, max_length=4096, description="Old clients: the before GetMap URL."
    )
    image2_url: str | None = Field(
        default=None, max_length=4096, description="Old clients: the after GetMap URL."
    )

    model_config = example_config(
        width=512,
        height=512,
        before={"time": "2024-01-15"},
        after={"time": "2024-07-15"},
    )

    @model_validator(mode="after")
    def _sides_or_urls(self) -> ComparisonRequest:
        urls = (self.image1_url, self.image2_url)
        if any(urls):
            if not all(urls):
                raise ValueError("give both image1_url and image2_url")
            return self
        if not self.has_area or self.before is None or self.after is None:
            raise ValueError(
                "give bbox (or geometry), before and after (or image1_url and image2_url)"
            )
        return self


class ComparisonAnalyzeRequest(ComparisonRequest):
    """A comparison plus the question and the analyzer."""

    prompt: Prompt = None
    analyzer: Analyzer = "auto"

    model_config = example_config(
        width=512,
        height=512,
        before={"time": "2024-01-15"},
        after={"time": "2024-07-15"},
        analyzer="local",
    )


class SideTimings(BaseModel):
    """Queue wait and download time of one side, in seconds."""

    queue_wait_s: float
    download_s: float


class ComparisonTimings(BaseModel):
    """Per-side timings and the whole request's."""

    before: SideTimings
    after: SideTimings
    analysis_s: float | None = None
    total_s: float


class ComparisonDownloadResponse(BaseModel):
    """The answer to POST /api/comparison/download."""

    success: Literal[True] = True
    images: dict[str, ImageMeta] = Field(description="`before` and `after`.")
    timings: ComparisonTimings
    selection: dict[str, SelectionOut] | None = Field(
        default=None,
        exclude_if=_absent,
        description="Per side that used `clearest`: how its date was chosen (else left out).",
    )


class ComparisonResponse(BaseModel):
    """The answer to POST /api/comparison/analyze (and the stream's `result` event)."""

    success: Literal[True] = True
    analysis_id: str
    images: dict[str, ImageMeta] = Field(
        description="`before`, `after`, and `change_mask` (local analyzer) to look at."
    )
    analysis: AnalysisOut
    timings: ComparisonTimings
    selection: dict[str, SelectionOut] | None = Field(
        default=None,
        exclude_if=_absent,
        description="Per side that used `clearest`: how its date was chosen (else left out).",
    )


# --- time series ---------------------------------------------------------------------------------


class TimeseriesRequest(ImageFields):
    """An image request over several dates: a list of `times`, or `start`, `end` and `step`."""

    times: list[Time] | None = Field(default=None, description="The dates, in any order.")
    start: Time | None = None
    end: Time | None = None
    step: str | None = Field(
        default=None,
        pattern=DURATION_PATTERN,
        max_length=32,
        description="ISO 8601 duration between dates, e.g. P1M, P7D, P1Y.",
        examples=["P1M"],
    )
    clearest_per: str | None = Field(
        default=None,
        pattern=DURATION_PATTERN,
        max_length=32,
        description=(
            "Instead of `step`: one window per period from `start` to `end`, each point being "
            "the clearest date of its window (`chosen_time`)."
        ),
        examples=["P1M"],
    )
    max_candidates: MaxCandidates = 12
    max_cloud: MaxCloud = 1.0

    model_config = example_config(
        width=256,
        height=256,
        start="2024-01-01",
        end="2024-06-01",
        step="P1M",
    )

    @model_validator(mode="after")
    def _times_or_range(self) -> TimeseriesRequest:
        ranged = (self.start, self.end, self.step)
        if not self.has_area:
            raise ValueError("bbox or geometry is required")
        if self.clearest_per is not None:
            if self.times is not None or self.step is not None:
                raise ValueError("give clearest_per with start and end, without times or step")
            if self.start is None or self.end is None:
                raise ValueError("clearest_per needs start and end")
            return self
        if self.times is not None and any(ranged):
            raise ValueError("give either times or start/end/step, not both")
        if self.times is None and not all(ranged):
            raise ValueError("give times, or all of start, end and step")
        return self


class TimeseriesPoint(BaseModel):
    """One date: its image and metrics, or its error."""

    time: str = Field(description="The date; with clearest_per, the start of the period.")
    chosen_time: str | None = Field(
        default=None,
        exclude_if=_absent,
        description="With clearest_per: the clearest date of the period.",
    )
    selection: SelectionOut | None = Field(default=None, exclude_if=_absent)
    image: ImageMeta | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    code: str | None = None


class TimeseriesResponse(BaseModel):
    """The answer to POST /api/timeseries (JSON; `Accept: text/csv` gives CSV)."""

    success: Literal[True] = True
    partial: bool = Field(description="True when at least one date failed.")
    points: list[TimeseriesPoint]


class JobProgress(BaseModel):
    """How far a job is: steps (images settled) done of the total."""

    done: int
    total: int


class JobOut(BaseModel):
    """A job as GET /api/jobs/{id} shows it (and its webhook sends)."""

    id: str = Field(description="32 lower-case hex.")
    kind: Literal["timeseries", "analyze", "compare"]
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: JobProgress
    result: dict[str, Any] | None = Field(
        default=None, description="With `succeeded`: exactly what the route answers."
    )
    error: dict[str, Any] | None = Field(
        default=None, description="With `failed`: the error envelope the route would answer."
    )
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    url: str = Field(description="This job: GET it, DELETE it to cancel.")
    events_url: str = Field(description="Its Server-Sent Events stream.")

    @property
    def final(self) -> bool:
        """True once it succeeded, failed or was cancelled."""
        return self.state in ("succeeded", "failed", "cancelled")


class JobAccepted(BaseModel):
    """The 202 answer of POST /api/jobs."""

    job: JobOut
