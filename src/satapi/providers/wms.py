"""WMS providers: GetMap URLs per version, limited streaming downloads, retries, capabilities."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit, urlunsplit

import httpx2
from lxml import etree

from satapi.config import ProviderConfig
from satapi.cpu import CpuRunner
from satapi.errors import (
    ImageTooLarge,
    InvalidRequest,
    NotAnImage,
    Overloaded,
    RedirectNotAllowed,
    SatapiError,
    UpstreamBusy,
    UpstreamError,
    UpstreamTimeout,
    UrlNotAllowed,
    WMSServiceException,
)
from satapi.limits import Limiter
from satapi.observability.events import NullObserver, Observer, Shed
from satapi.providers.netguard import AddressNotAllowed
from satapi.redaction import redact
from satapi.storage import ImageWriter
from satapi.urlpolicy import UrlPolicy
from satapi.wms_client import (
    FORMATS,
    GEOGRAPHIC_LATLON,
    DownloadStats,
    FetchTarget,
    GetMapRequest,
    LayerInfo,
    RetryPolicy,
    Transient,
    configured_provider,
    retry_after_seconds,
    validate_bbox,
)

XML_TYPES = ("xml",)  # application/vnd.ogc.se_xml, text/xml, application/xml, ...
TRANSIENT_STATUS = frozenset({429, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
MAX_EXCEPTION_BYTES = 256 * 1024
MAX_CAPABILITIES_BYTES = 20 * 1024 * 1024
CAPABILITIES_FAILURE_TTL_S = 60.0


# The GetMap parameters that make the server's no-data background no data to satapi.
NODATA_BACKGROUND: dict[str, tuple[tuple[str, str], ...]] = {
    "image/png": (("TRANSPARENT", "TRUE"),),
    "image/jpeg": (("BGCOLOR", "0x000000"),),
}


def wms_bbox(req: GetMapRequest, version: str) -> str:
    """The BBOX value in the axis order the WMS version expects."""
    minx, miny, maxx, maxy = req.bbox
    if version == "1.3.0" and req.crs.upper() in GEOGRAPHIC_LATLON:
        minx, miny, maxx, maxy = miny, minx, maxy, maxx
    return ",".join(_fmt(v) for v in (minx, miny, maxx, maxy))


def _fmt(value: float) -> str:
    return repr(float(value)).removesuffix(".0") if value == int(value) else repr(float(value))


def _crs_name(crs: str, version: str) -> str:
    """The SRS/CRS value to send: WMS 1.1.1 has no CRS:84 (1.3.0 introduced it), and its
    EPSG:4326 is the same lon/lat order, so 1.1.1 servers get that instead."""
    if version == "1.1.1" and crs.upper() in ("CRS:84", "OGC:CRS84"):
        return "EPSG:4326"
    return crs


def build_target(name: str, provider: ProviderConfig, req: GetMapRequest) -> FetchTarget:
    """The GetMap download for `req` on provider `name` (SRS vs CRS, axis order, exceptions)."""
    validate_bbox(req.bbox, req.crs)
    if req.format not in FORMATS:
        raise InvalidRequest(f"format must be one of {', '.join(FORMATS)}.")
    if req.time and "/" in req.time:
        raise InvalidRequest(
            f"Provider {name!r} is a WMS server: time is one date or date-time here (intervals "
            "are for sentinelhub providers)."
        )
    version = provider.version
    params: list[tuple[str, str]] = [
        ("SERVICE", "WMS"),
        ("VERSION", version),
        ("REQUEST", "GetMap"),
        ("LAYERS", req.layer),
        ("STYLES", req.style),
        ("SRS" if version == "1.1.1" else "CRS", _crs_name(req.crs, version)),
        ("BBOX", wms_bbox(req, version)),
        ("WIDTH", str(req.width)),
        ("HEIGHT", str(req.height)),
        ("FORMAT", req.format),
        ("EXCEPTIONS", "application/vnd.ogc.se_xml" if version == "1.1.1" else "XML"),
    ]
    if req.time:
        params.append(("TIME", req.time))
    reserved = {k for k, _ in params}
    params.extend((k, v) for k, v in provider.params.items() if k.upper() not in reserved)
    # Where the layer has no data, the server paints its background: made transparent in a
    # PNG (alpha 0) and black in a JPEG, both of which the local metrics count as no data
    # rather than as white cloud. A provider's own `params` may say otherwise.
    given = {k.upper() for k, _ in params}
    background = NODATA_BACKGROUND.get(req.format, ())
    params.extend((k, v) for k, v in background if k not in given)
    secrets = tuple((k, v.get_secret_value()) for k, v in provider.secret_params.items())
    return FetchTarget(
        source=name,
        endpoint=provider.url,
        params=tuple(params),
        secret_params=secrets,
        expected_size=(req.width, req.height),
        request=req,
        attribution=provider.attribution,
        has_time=bool(req.time),
    )


def target_from_url(url: str, policy: UrlPolicy, *, max_px: int) -> FetchTarget:
    """A download for a complete GetMap URL from an old client, if the URL is allowed."""
    match = policy.check(url)
    if match.provider is not None and match.provider.kind != "wms":
        raise UrlNotAllowed(
            f"{match.source!r} is a {match.provider.kind} provider; wms_url takes WMS GetMap "
            "URLs only (send the image fields instead)."
        )
    parts = urlsplit(url)
    endpoint = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    upper = {k.upper(): v for k, v in pairs}
    if upper.get("REQUEST", "").lower() != "getmap":
        raise InvalidRequest("The URL must be a WMS GetMap request (REQUEST=GetMap).")
    size: tuple[int, int] | None = None
    try:
        width, height = int(upper["WIDTH"]), int(upper["HEIGHT"])
    except (KeyError, ValueError):
        raise InvalidRequest("The GetMap URL needs integer WIDTH and HEIGHT.") from None
    if not (0 < width <= max_px and 0 < height <= max_px):
        raise InvalidRequest(f"WIDTH and HEIGHT must be between 1 and {max_px}.")
    size = (width, height)
    if "EXCEPTIONS" not in upper:
        version = upper.get("VERSION", "1.3.0")
        pairs.append(("EXCEPTIONS", "application/vnd.ogc.se_xml" if version == "1.1.1" else "XML"))
    secrets: tuple[tuple[str, str], ...] = ()
    if match.provider is not None:
        secret_names = {k.upper() for k in match.provider.secret_params}
        secrets = tuple((k, v.get_secret_value()) for k, v in match.provider.secret_params.items())
        pairs = [(k, v) for k, v in pairs if k.upper() not in secret_names]
    return FetchTarget(
        source=match.source,
        endpoint=endpoint,
        params=tuple(pairs),
        secret_params=secrets,
        expected_size=size,
        attribution=match.provider.attribution if match.provider else None,
        has_time=bool(upper.get("TIME")),
    )


def parse_service_exception(body: bytes) -> tuple[str | None, str] | None:
    """(code, text) of an OGC ServiceException/ExceptionReport document, or None if it isn't one."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError:
        return None
    if not isinstance(root.tag, str) or not etree.QName(root).localname.endswith(
        ("ServiceExceptionReport", "ExceptionReport")
    ):
        return None
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        local = etree.QName(el).localname
        if local in ("ServiceException", "Exception"):
            code = el.get("code") or el.get("exceptionCode")
            texts = [str(t).strip() for t in el.itertext() if str(t).strip()]
            return code, " ".join(texts) or "no message"
    return None, "no message"


def looks_like_xml(head: bytes) -> bool:
    """Sniff the start of a body for an XML document."""
    start = head.lstrip()[:200].lower()
    return start.startswith((b"<?xml", b"<serviceexceptionreport", b"<ows:exceptionreport"))


class WMSClient:
    """Downloads GetMap images and reads capabilities, under the limiter's permits.

    A permit covers only the network transfer; it is released on every path (success, error,
    timeout, cancellation) because it is held by an `async with`.
    """

    def __init__(
        self,
        http: httpx2.AsyncClient,
        limiter: Limiter,
        *,
        providers: Mapping[str, ProviderConfig],
        policy: UrlPolicy,
        cpu: CpuRunner,
        max_bytes: int,
        total_timeout_s: float,
        retry: RetryPolicy,
        secrets: Sequence[str] = (),
        capabilities_ttl_s: float = 3600.0,
        observer: Observer | None = None,
    ) -> None:
        self._http = http
        self._observer: Observer = observer if observer is not None else NullObserver()
        self._limiter = limiter
        self._providers = providers
        self._policy = policy
        self._cpu = cpu
        self._max_bytes = max_bytes
        self._total_timeout_s = total_timeout_s
        self._retry = retry
        self._secrets = list(secrets)
        self._caps_ttl = capabilities_ttl_s
        self._caps: dict[str, tuple[float, list[LayerInfo] | SatapiError]] = {}
        self._caps_locks: dict[str, asyncio.Lock] = {}

    def provider(self, name: str) -> ProviderConfig:
        """The configured provider `name`, or `UnknownProvider`."""
        return configured_provider(self._providers, name)

    def target(self, name: str, provider: ProviderConfig, req: GetMapRequest) -> FetchTarget:
        """The GetMap download for `req` on provider `name` (`ImageClient`)."""
        return build_target(name, provider, req)

    # -- GetMap ---------------------------------------------------------------------------------

    async def download(
        self,
        target: FetchTarget,
        writer: ImageWriter,
        *,
        on_transfer: Callable[[], None] | None = None,
        stats: DownloadStats | None = None,
    ) -> DownloadStats:
        """Stream the image for `target` into `writer`, retrying transient failures.

        Raises a `SatapiError`; `UpstreamTimeout` when the whole download (waiting included)
        outlasts the total timeout. `on_transfer` is called when a permit has been obtained.
        Pass `stats` to read the queue wait and attempts even when the download fails.
        """
        stats = stats if stats is not None else DownloadStats()

        async def attempt() -> None:
            if writer.bytes_written:
                await writer.reset()
            await self._attempt(target, writer, stats, on_transfer)

        try:
            await self._retry.run(
                attempt,
                stats=stats,
                total_timeout_s=self._total_timeout_s,
                timed_out=(
                    f"The WMS server did not deliver the image within {self._total_timeout_s:g} s."
                ),
            )
        except Overloaded:
            self._observer.observe(Shed(provider=target.source))
            raise
        stats.bytes = writer.bytes_written
        return stats

    async def _attempt(
        self,
        target: FetchTarget,
        writer: ImageWriter,
        stats: DownloadStats,
        on_transfer: Callable[[], None] | None,
    ) -> None:
        async with self._limiter.slot(target.source) as waited:
            stats.queue_wait_s += waited
            if on_transfer is not None:
                on_transfer()
            started = time.perf_counter()
            try:
                await self._transfer(target, writer, stats)
            finally:
                stats.transfer_s += time.perf_counter() - started

    async def _transfer(
        self, target: FetchTarget, writer: ImageWriter, stats: DownloadStats
    ) -> None:
        url: str = target.endpoint
        query: Any = target.query
        shown = target.url()
        for hop in range(MAX_REDIRECTS + 1):
            try:
                async with self._http.stream("GET", url, params=query) as response:
                    if response.status_code in REDIRECT_STATUS:
                        url = self._redirect_target(response, shown)
                        query = None
                        continue
                    await self._consume(response, writer, stats, shown)
                    return
            except AddressNotAllowed as exc:
                # Refused at connect time (satapi.providers.netguard): nothing was sent. The
                # client's own URL is a 400; a redirect there is the server's doing, a 502.
                if hop == 0:
                    raise UrlNotAllowed(
                        f"The host {exc.host!r} resolves to an internal address, which is "
                        "never fetched."
                    ) from None
                raise RedirectNotAllowed(
                    f"The WMS server redirected to {exc.host!r}, which resolves to an internal "
                    "address."
                ) from None
            except httpx2.TimeoutException as exc:
                # A server that stops answering is a timeout (504) whichever deadline fires
                # first, the per-read one here or the total one in `download`.
                raise Transient(
                    UpstreamTimeout(
                        f"The WMS server did not answer in time ({type(exc).__name__}) for {shown}."
                    )
                ) from None
            except (
                httpx2.NetworkError,
                httpx2.RemoteProtocolError,
            ) as exc:
                raise Transient(
                    UpstreamError(
                        f"The WMS server could not be reached or broke off the transfer "
                        f"({type(exc).__name__}) for {shown}."
                    )
                ) from None
        raise UpstreamError(f"Too many redirects for {shown}.")

    def _redirect_target(self, response: httpx2.Response, shown: str) -> str:
        location = response.headers.get("location")
        if not location:
            raise UpstreamError(f"The WMS server sent a redirect without a Location for {shown}.")
        new_url = urljoin(str(response.url), location)
        if not self._policy.is_allowed(new_url):
            host = urlsplit(new_url).hostname or "?"
            raise RedirectNotAllowed(
                f"The WMS server redirected to {host!r}, which is not an allowed host."
            )
        return new_url

    async def _consume(
        self,
        response: httpx2.Response,
        writer: ImageWriter,
        stats: DownloadStats,
        shown: str,
    ) -> None:
        status = response.status_code
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        stats.content_type = content_type
        if status != 200:
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            head = await _read_limited(response, MAX_EXCEPTION_BYTES)
            detail = parse_service_exception(head) if looks_like_xml(head) else None
            if detail is not None and status < 500:
                raise self._service_exception(detail)
            error = UpstreamError(
                f"The WMS server answered HTTP {status} for {shown}.", retry_after=retry_after
            )
            if status == 429:
                # Rate limited: retried after Retry-After; when retries run out, 503 busy.
                error = UpstreamBusy(
                    f"The WMS server is rate limiting requests (HTTP 429) for {shown}.",
                    retry_after=retry_after if retry_after is not None else 1.0,
                )
            if status in TRANSIENT_STATUS:
                raise Transient(error, retry_after)
            raise error
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_bytes:
            raise self._too_large()
        if any(t in content_type for t in XML_TYPES):
            head = await _read_limited(response, MAX_EXCEPTION_BYTES)
            detail = parse_service_exception(head)
            if detail is not None:
                raise self._service_exception(detail)
            raise NotAnImage(f"The WMS server sent {content_type} instead of an image.")
        if content_type.startswith("text/"):
            raise NotAnImage(f"The WMS server sent {content_type} instead of an image.")
        chunks = response.aiter_bytes()
        first = True
        async for chunk in chunks:
            if first and chunk:
                first = False
                if looks_like_xml(chunk):
                    rest = await _read_limited(chunks, MAX_EXCEPTION_BYTES)
                    detail = parse_service_exception(chunk + rest)
                    if detail is not None:
                        raise self._service_exception(detail)
                    raise NotAnImage("The WMS server sent an XML document instead of an image.")
            if writer.bytes_written + len(chunk) > self._max_bytes:
                raise self._too_large()
            await writer.write(chunk)

    def _service_exception(self, detail: tuple[str | None, str]) -> WMSServiceException:
        code, text = detail
        text = redact(text, self._secrets)[:1000]
        label = f" ({code})" if code else ""
        return WMSServiceException(
            f"The WMS server reported an error{label}: {text}",
            extra={"wms_code": code} if code else None,
        )

    def _too_large(self) -> ImageTooLarge:
        return ImageTooLarge(f"The image is larger than the {self._max_bytes} byte limit.")

    # -- GetCapabilities --------------------------------------------------------------------------

    async def layers(self, name: str, *, refresh: bool = False) -> list[LayerInfo]:
        """The provider's layers from GetCapabilities, cached for the TTL.

        A failure is remembered for a minute, so callers that only use capabilities as a
        refinement (time-series date checks) don't ask a server without them every time.
        """
        provider = self.provider(name)
        if (cached := self._cached_layers(name, refresh)) is not None:
            return cached
        async with self._caps_locks.setdefault(name, asyncio.Lock()):
            if (cached := self._cached_layers(name, refresh)) is not None:
                return cached
            try:
                body = await self._fetch_capabilities(name, provider)
                layers = await self._cpu.run(
                    parse_capabilities, body, provider.url, provider.version
                )
            except SatapiError as exc:
                self._caps[name] = (time.monotonic(), exc)
                raise
            self._caps[name] = (time.monotonic(), layers)
            return layers

    def _cached_layers(self, name: str, refresh: bool) -> list[LayerInfo] | None:
        entry = None if refresh else self._caps.get(name)
        if entry is None:
            return None
        stamp, value = entry
        fresh_for = self._caps_ttl if isinstance(value, list) else CAPABILITIES_FAILURE_TTL_S
        if time.monotonic() - stamp >= fresh_for:
            return None
        if isinstance(value, SatapiError):
            raise type(value)(value.message, retry_after=value.retry_after, extra=value.extra)
        return value

    async def _fetch_capabilities(self, name: str, provider: ProviderConfig) -> bytes:
        query: Any = [
            ("SERVICE", "WMS"),
            ("REQUEST", "GetCapabilities"),
            ("VERSION", provider.version),
            *provider.params.items(),
            *((k, v.get_secret_value()) for k, v in provider.secret_params.items()),
        ]
        try:
            async with (
                asyncio.timeout(self._total_timeout_s),
                self._limiter.slot(name),
                self._http.stream("GET", provider.url, params=query) as response,
            ):
                body = await _read_limited(response, MAX_CAPABILITIES_BYTES + 1)
                status = response.status_code
        except Overloaded:
            self._observer.observe(Shed(provider=name))
            raise
        except TimeoutError:
            raise UpstreamTimeout(f"GetCapabilities from {name!r} timed out.") from None
        except httpx2.HTTPError as exc:
            raise UpstreamError(
                f"GetCapabilities from {name!r} failed ({type(exc).__name__})."
            ) from None
        if status != 200:
            raise UpstreamError(f"GetCapabilities from {name!r} answered HTTP {status}.")
        if len(body) > MAX_CAPABILITIES_BYTES:
            raise UpstreamError(f"GetCapabilities from {name!r} is too large.")
        detail = parse_service_exception(body) if looks_like_xml(body) else None
        if detail is not None:
            raise self._service_exception(detail)
        return body


async def _read_limited(source: httpx2.Response | AsyncIterator[bytes], limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    iterator = source.aiter_bytes() if isinstance(source, httpx2.Response) else source
    async for chunk in iterator:
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def parse_capabilities(body: bytes, url: str, version: str) -> list[LayerInfo]:
    """Parse a GetCapabilities document (blocking; run it in a worker thread)."""
    from owslib.wms import WebMapService

    try:
        wms = WebMapService(url, version=version, xml=body)
    except Exception as exc:  # OWSLib raises many kinds on malformed documents
        raise UpstreamError(f"The capabilities document could not be parsed ({exc}).") from None
    max_width, max_height = _service_max_size(body)
    layers: list[LayerInfo] = []
    for name, layer in wms.contents.items():
        times: list[str] = []
        default: str | None = None
        dims: dict[str, Any] = getattr(layer, "dimensions", None) or {}
        if "time" in dims:
            times = [str(v).strip() for v in dims["time"].get("values") or [] if str(v).strip()]
            default = dims["time"].get("default")
        if not times and getattr(layer, "timepositions", None):
            times = [str(v).strip() for v in layer.timepositions if str(v).strip()]
        default = default or getattr(layer, "defaulttimeposition", None)
        bbox = getattr(layer, "boundingBoxWGS84", None)
        layers.append(
            LayerInfo(
                name=str(name),
                title=getattr(layer, "title", None),
                crs=sorted({str(c[4] if isinstance(c, tuple) else c) for c in layer.crsOptions}),
                bbox=[float(v) for v in bbox[:4]] if bbox else None,
                times=times,
                default_time=str(default) if default else None,
                max_width=max_width,
                max_height=max_height,
            )
        )
    return layers


def _service_max_size(body: bytes) -> tuple[int | None, int | None]:
    """The Service section's MaxWidth and MaxHeight (WMS 1.3.0), when it states them."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError:
        return None, None

    def value(name: str) -> int | None:
        found = root.xpath(f"/*/*[local-name()='Service']/*[local-name()='{name}']/text()")
        try:
            number = int(str(found[0]).strip()) if isinstance(found, list) and found else 0
        except ValueError:
            return None
        return number if number > 0 else None

    return value("MaxWidth"), value("MaxHeight")
