"""The image-client seam every provider implements: the request and target value types, the
`ImageClient` protocol, the retry policy, and `ImageClients`, which dispatches by provider name.

The WMS fetcher itself (GetMap, GetCapabilities, the capabilities cache) is `WMSClient` in
`satapi/providers/wms.py`; the Sentinel Hub / CDSE Process API client is
`providers/sentinelhub.py`; `satapi.providers.make_image_client` builds them from the settings.
`ImageService` and the routers see only this protocol, never the kind.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

import stamina

from satapi.analyzers.base import AreaOfInterest
from satapi.config import ProviderConfig
from satapi.errors import InvalidBBox, SatapiError, UnknownProvider, UpstreamBusy, UpstreamTimeout
from satapi.storage import ImageWriter

if TYPE_CHECKING:
    pass

FORMATS = ("image/png", "image/jpeg")
# EPSG geographic CRSs whose WMS 1.3.0 axis order is latitude first.
GEOGRAPHIC_LATLON = frozenset(
    {"EPSG:4326", "EPSG:4258", "EPSG:4269", "EPSG:4283", "EPSG:4617", "EPSG:4674", "EPSG:4979"}
)
GEOGRAPHIC = GEOGRAPHIC_LATLON | {"CRS:84", "OGC:CRS84"}
WEB_MERCATOR_LIMIT = 20037508.342789244
WEB_MERCATOR = frozenset({"EPSG:3857", "EPSG:900913", "EPSG:102100", "EPSG:102113"})
# Projected CRSs in metres whose real-world coordinates are never all within ±180: Web
# Mercator, World Mercator, ETRS89-LAEA Europe, Lambert-93, British National Grid, US Albers.
METRE_CRS = WEB_MERCATOR | {"EPSG:3395", "EPSG:3035", "EPSG:2154", "EPSG:27700", "EPSG:5070"}
_UTM_PREFIXES = ("EPSG:326", "EPSG:327", "EPSG:258")  # WGS 84 / ETRS89 UTM zones (metres)

BBox = tuple[float, float, float, float]


def _article(word: str) -> str:
    """ "A" or "An" before a code read letter by letter ("an EPSG:4326", "a CRS:84")."""
    return "An" if word[:1].upper() in "AEFHILMNORSX" else "A"


def validate_bbox(bbox: Sequence[float], crs: str) -> BBox:
    """Check a bbox (minx, miny, maxx, maxy; lon/lat for geographic CRSs) before any request."""
    if len(bbox) != 4:
        raise InvalidBBox("A bbox has exactly four numbers: minx, miny, maxx, maxy.")
    minx, miny, maxx, maxy = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise InvalidBBox("Every bbox number must be finite.")
    if not (minx < maxx and miny < maxy):
        raise InvalidBBox("A bbox needs minx < maxx and miny < maxy.")
    crs_u = crs.upper()
    if crs_u in GEOGRAPHIC:
        if not (minx >= -180 and maxx <= 180 and miny >= -90 and maxy <= 90):
            raise InvalidBBox(
                f"{_article(crs)} {crs} bbox is lon/lat: longitudes within -180..180, "
                "latitudes within -90..90."
            )
    elif crs_u in ("EPSG:3857", "EPSG:900913") and not all(
        abs(v) <= WEB_MERCATOR_LIMIT * 1.0001 for v in (minx, miny, maxx, maxy)
    ):
        raise InvalidBBox(f"An {crs} bbox lies within ±{WEB_MERCATOR_LIMIT:.0f} metres.")
    if in_metres(crs_u) and all(abs(v) <= 180 for v in (minx, miny, maxx, maxy)):
        raise InvalidBBox(
            f"The bbox {[minx, miny, maxx, maxy]} looks like degrees, but {crs} is in metres: "
            f"it would be a box {maxx - minx:g} m wide. Send lon/lat with crs EPSG:4326, or the "
            f"bbox in {crs} metres.",
            extra={"crs": crs, "units": "metre"},
        )
    return (minx, miny, maxx, maxy)


def in_metres(crs: str) -> bool:
    """True for the well-known projected CRSs whose coordinates are metres."""
    crs_u = crs.upper()
    return crs_u in METRE_CRS or (
        crs_u.startswith(_UTM_PREFIXES) and crs_u[-2:].isdigit() and len(crs_u) == 10
    )


@dataclass(frozen=True, kw_only=True)
class GetMapRequest:
    """One map image: the API's view, independent of WMS version and axis order."""

    layer: str
    bbox: BBox  # lon/lat order for geographic CRSs
    crs: str = "EPSG:4326"
    width: int
    height: int
    format: str = "image/png"
    time: str | None = None
    style: str = ""
    # For providers that mosaic scenes over a time interval themselves (sentinelhub): the
    # order to mosaic them in, instead of the provider's configured one. WMS ignores it.
    mosaicking_order: str | None = None
    # An area request (`geometry` / `resolution`): the polygon whose pixels count, the metres
    # per pixel asked for, and whether width and height were given (then `max_image_px` bounds
    # each; a size derived from a geometry or resolution is bounded by `max_area_pixels`).
    region: AreaOfInterest | None = field(default=None, compare=False, repr=False)
    resolution_m: float | None = field(default=None, compare=False)
    explicit_size: bool = field(default=True, compare=False)


@dataclass(frozen=True, kw_only=True)
class FetchTarget:
    """A concrete GetMap download: where, with which parameters, what to expect back."""

    source: str  # provider name (or allowed host) -- also the limiter key
    endpoint: str  # URL without a query string
    params: tuple[tuple[str, str], ...]
    secret_params: tuple[tuple[str, str], ...] = ()
    expected_size: tuple[int, int] | None = None
    request: GetMapRequest | None = None
    attribution: str | None = None
    has_time: bool = False
    # A POST body (the Process API's JSON request), part of the canonical request when set.
    body: str | None = None
    kind: str = "wms"  # the provider kind that downloads it; stored as the record's kind

    # image_id and the redacted URL are computed once per target (cached_property writes the
    # instance __dict__, so it works on this frozen dataclass): a download asked for the id five
    # times and the URL (urlencode of every parameter) three times, a cache hit twice and once.

    @functools.cached_property
    def image_id(self) -> str:
        """sha256 of the canonical request: source, endpoint and sorted normalised parameters.

        Secret values are left out (only their names count), so an id reveals nothing.
        """
        canonical: dict[str, Any] = {
            "source": self.source,
            "endpoint": self.endpoint,
            "params": sorted((k.upper(), v) for k, v in self.params),
            "secret_names": sorted(k.upper() for k, _ in self.secret_params),
        }
        if self.body is not None:
            canonical["body"] = self.body
        blob = json.dumps(canonical, separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def url(self, *, redacted: bool = True) -> str:
        """The full GetMap URL; secret values replaced by `***` unless `redacted` is False."""
        return self._redacted_url if redacted else self._build_url(redacted=False)

    @functools.cached_property
    def _redacted_url(self) -> str:
        return self._build_url(redacted=True)

    def _build_url(self, *, redacted: bool) -> str:
        secrets = [(k, "***" if redacted else v) for k, v in self.secret_params]
        return f"{self.endpoint}?{urlencode(list(self.params) + secrets)}"

    @property
    def query(self) -> list[tuple[str, str]]:
        """Every query parameter, secrets included (only ever sent to the server)."""
        return list(self.params) + list(self.secret_params)

    def param(self, name: str) -> str | None:
        """A public query parameter, by case-insensitive name."""
        upper = name.upper()
        return next((v for k, v in self.params if k.upper() == upper), None)

    @property
    def layer(self) -> str | None:
        """The layer asked for (from the request, or an old client's URL)."""
        return self.request.layer if self.request else self.param("LAYERS")

    @property
    def crs(self) -> str | None:
        """The CRS of the bbox (CRS in WMS 1.3.0, SRS in 1.1.1)."""
        return self.request.crs if self.request else (self.param("CRS") or self.param("SRS"))

    @property
    def time(self) -> str | None:
        """The TIME asked for, if any."""
        return self.request.time if self.request else self.param("TIME")


@dataclass
class DownloadStats:
    """How a download went."""

    queue_wait_s: float = 0.0
    transfer_s: float = 0.0
    attempts: int = 0
    max_attempts: int = 1  # what the retry policy allows
    bytes: int = 0
    content_type: str = ""


class Transient(Exception):
    """An attempt failed in a way worth retrying; `error` is what to report if none succeeds."""

    def __init__(self, error: SatapiError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Retries of transient failures: attempts, capped exponential backoff with jitter."""

    attempts: int = 3
    wait_initial: float = 0.5
    wait_max: float = 10.0
    wait_jitter: float = 0.5

    def retrying(self) -> AsyncIterator[stamina.Attempt]:
        """stamina's retry context for this policy: `async for attempt in policy.retrying()`."""
        return stamina.retry_context(
            on=self.hook,
            attempts=self.attempts,
            timeout=None,
            wait_initial=self.wait_initial,
            wait_max=self.wait_max,
            wait_jitter=self.wait_jitter,
        )

    async def run(
        self,
        attempt: Callable[[], Awaitable[None]],
        *,
        stats: DownloadStats,
        total_timeout_s: float,
        timed_out: str,
    ) -> None:
        """Call `attempt` until it succeeds or the retries run out, all within the deadline.

        Each call counts in `stats.attempts`. When none succeeds, the last transient failure's
        error is raised; `UpstreamTimeout(timed_out)` when `total_timeout_s` passes first.
        """
        stats.max_attempts = self.attempts
        try:
            async with asyncio.timeout(total_timeout_s):
                async for retry in self.retrying():
                    with retry:
                        stats.attempts += 1
                        await attempt()
        except Transient as exc:
            raise exc.error from None
        except TimeoutError:
            raise UpstreamTimeout(timed_out) from None

    def hook(self, exc: Exception) -> bool | float:
        """stamina's backoff hook: retry `Transient` only, honouring Retry-After (capped).

        A 429 (`UpstreamBusy`) asking for a longer wait than `wait_max` is not retried: the
        server said when to come back, and that is beyond this request's retry budget.
        """
        if not isinstance(exc, Transient):
            return False
        if exc.retry_after is not None:
            if isinstance(exc.error, UpstreamBusy) and exc.retry_after > self.wait_max:
                return False
            return min(exc.retry_after, self.wait_max)
        return True


@dataclass(frozen=True, kw_only=True)
class LayerInfo:
    """One layer from a GetCapabilities document."""

    name: str
    title: str | None
    crs: list[str]
    bbox: list[float] | None
    times: list[str] = field(default_factory=list)
    default_time: str | None = None
    # The server's largest width and height of one GetMap (WMS 1.3.0 MaxWidth/MaxHeight).
    max_width: int | None = None
    max_height: int | None = None


def configured_provider(providers: Mapping[str, ProviderConfig], name: str) -> ProviderConfig:
    """`providers[name]`, or `UnknownProvider` listing the configured ones."""
    try:
        return providers[name]
    except KeyError:
        known = ", ".join(sorted(providers))
        raise UnknownProvider(
            f"Unknown provider {name!r}; configured providers: {known}."
        ) from None


class ImageClient(Protocol):
    """Downloads images for targets and reads each provider's layers."""

    def provider(self, name: str) -> ProviderConfig:
        """The configured provider `name`, or `UnknownProvider`."""
        ...

    def target(self, name: str, provider: ProviderConfig, req: GetMapRequest) -> FetchTarget:
        """The validated download for `req` on provider `name` (a `SatapiError` if invalid)."""
        ...

    async def download(
        self,
        target: FetchTarget,
        writer: ImageWriter,
        *,
        on_transfer: Callable[[], None] | None = None,
        stats: DownloadStats | None = None,
    ) -> DownloadStats:
        """Stream the image for `target` into `writer` (retries, limits and checks included)."""
        ...

    async def layers(self, name: str, *, refresh: bool = False) -> list[LayerInfo]:
        """The layers provider `name` offers."""
        ...


class ImageClients:
    """Every provider kind's client, dispatched by provider name (an `ImageClient` itself).

    A target whose source is not a configured provider (an old client's `wms_url` on an
    `allowed_hosts` origin) is a WMS download.
    """

    def __init__(
        self,
        providers: Mapping[str, ProviderConfig],
        clients: Mapping[str, ImageClient],
        *,
        default_kind: str = "wms",
    ) -> None:
        self._providers = providers
        self._clients = dict(clients)
        self._default_kind = default_kind

    def provider(self, name: str) -> ProviderConfig:
        """The configured provider `name`, or `UnknownProvider`."""
        return configured_provider(self._providers, name)

    def client_for(self, source: str) -> ImageClient:
        """The client of `source`'s provider kind."""
        provider = self._providers.get(source)
        return self._clients[provider.kind if provider is not None else self._default_kind]

    def target(self, name: str, provider: ProviderConfig, req: GetMapRequest) -> FetchTarget:
        """The download for `req` on provider `name`, built by its kind's client."""
        return self._clients[provider.kind].target(name, provider, req)

    async def download(
        self,
        target: FetchTarget,
        writer: ImageWriter,
        *,
        on_transfer: Callable[[], None] | None = None,
        stats: DownloadStats | None = None,
    ) -> DownloadStats:
        """Download `target` with the client of its provider's kind."""
        return await self.client_for(target.source).download(
            target, writer, on_transfer=on_transfer, stats=stats
        )

    async def layers(self, name: str, *, refresh: bool = False) -> list[LayerInfo]:
        """Provider `name`'s layers (capabilities for WMS, the collection for Sentinel Hub)."""
        return await self._clients[self.provider(name).kind].layers(name, refresh=refresh)
