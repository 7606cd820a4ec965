"""The `sentinelhub` provider kind: Sentinel Hub / CDSE Process API with OAuth client credentials.

`process_request` turns an image request into the Process API's JSON body; `OAuthTokens` gets
and shares the access token (client-credentials grant, cached until shortly before it expires,
one token request for any number of concurrent callers, one shared refresh after a 401);
`SentinelHubClient` is the kind's `ImageClient`: it POSTs the body under the limiter's permits,
retries transient failures like the WMS client, and streams the image into the store's writer.
No secret or token ever goes into a message, a log line or a stored record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx2
import isodate

from satapi.config import ProviderConfig
from satapi.errors import (
    ImageTooLarge,
    InvalidRequest,
    NotAnImage,
    Overloaded,
    ProviderAuthError,
    ProviderError,
    SatapiError,
    UnknownProvider,
    UpstreamBusy,
    UpstreamError,
    UpstreamTimeout,
)
from satapi.limits import Limiter
from satapi.observability.events import NullObserver, Observer, Shed, TokenRequested
from satapi.redaction import redact
from satapi.storage import ImageWriter
from satapi.tokens import Token, TokenCache
from satapi.wms_client import (
    FORMATS,
    BBox,
    DownloadStats,
    FetchTarget,
    GetMapRequest,
    LayerInfo,
    RetryPolicy,
    Transient,
    validate_bbox,
)

PROCESS_PATH = "/api/v1/process"
MAX_PX = 2500  # the Process API's largest output width/height
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
CRS_URLS = {
    "EPSG:4326": CRS84,  # lon/lat order, as satapi's bboxes always are for EPSG:4326
    "CRS:84": CRS84,
    "EPSG:3857": "http://www.opengis.net/def/crs/EPSG/0/3857",
}
TRUE_COLOUR = """//VERSION=3
function setup() {
  return {
    input: ["B04", "B03", "B02"],
    output: { bands: 3 }
  };
}

function evaluatePixel(sample) {
  return [2.5 * sample.B04, 2.5 * sample.B03, 2.5 * sample.B02];
}
"""
LATEST_DAYS = 30  # a request without `time` asks for the last 30 UTC days (mosaicked)
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
MAX_ERROR_BYTES = 64 * 1024
DEFAULT_BUSY_S = 1.0
TOKEN_CREDENTIAL_STATUS = frozenset({400, 401, 403})


# --- the request ------------------------------------------------------------------------------


def _utc(value: str) -> dt.datetime:
    try:
        parsed: dt.datetime = isodate.parse_datetime(value)
    except (ValueError, isodate.ISO8601Error):
        raise InvalidRequest(f"{value!r} is not an ISO 8601 date-time.") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _stamp(value: dt.datetime) -> str:
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def _day(value: str) -> dt.date:
    try:
        day: dt.date = isodate.parse_date(value)
    except (ValueError, isodate.ISO8601Error):
        raise InvalidRequest(f"{value!r} is not an ISO 8601 date.") from None
    return day


def _bound(value: str, *, end: bool) -> str:
    """One end of a time range: a date is its whole UTC day; a date-time is that instant."""
    value = value.strip()
    if "T" in value:
        return _stamp(_utc(value))
    day = _day(value)
    return f"{day.isoformat()}T23:59:59Z" if end else f"{day.isoformat()}T00:00:00Z"


def time_range(value: str | None, *, today: dt.date | None = None) -> tuple[str, str]:
    """dataFilter.timeRange (from, to) for a request's `time`.

    `2024-06-01` is that whole UTC day; `2024-06-01/2024-06-30` the whole range (each end a date
    or a date-time); a date-time alone is that instant; no time means the last 30 UTC days.
    """
    if value is None:
        today = today or dt.datetime.now(dt.UTC).date()
        start = today - dt.timedelta(days=LATEST_DAYS - 1)
        return f"{start.isoformat()}T00:00:00Z", f"{today.isoformat()}T23:59:59Z"
    parts = value.split("/")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise InvalidRequest("time is a date, a date-time, or an interval start/end.")
    first, last = _bound(parts[0], end=False), _bound(parts[-1], end=True)
    if _utc(first) > _utc(last):
        raise InvalidRequest(f"The time interval {value!r} ends before it starts.")
    return first, last


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value


def process_request(
    provider: ProviderConfig, req: GetMapRequest, *, today: dt.date | None = None
) -> dict[str, Any]:
    """The Process API JSON body for `req` (validated; a 422 `SatapiError` when not possible).

    A size above `MAX_PX` is not refused here: `ImageService` fetches such an image as tiles of
    at most `MAX_PX` (`ProviderConfig.tile_limit`), and `download` refuses any single call above
    it."""
    crs = CRS_URLS.get(req.crs.upper())
    if crs is None:
        raise InvalidRequest(
            f"crs {req.crs!r} is not supported by this provider; use EPSG:4326, CRS:84 "
            "or EPSG:3857."
        )
    if req.format not in FORMATS:
        raise InvalidRequest(f"format must be one of {', '.join(FORMATS)}.")
    if req.layer != provider.collection:
        raise InvalidRequest(
            f"This provider serves the collection {provider.collection!r} as its only layer, "
            f"not {req.layer!r}."
        )
    if req.style:
        raise InvalidRequest("This provider has no styles: its evalscript decides the rendering.")
    bbox: BBox = validate_bbox(req.bbox, req.crs)
    start, end = time_range(req.time, today=today)
    return {
        "input": {
            "bounds": {"bbox": list(bbox), "properties": {"crs": crs}},
            "data": [
                {
                    "type": provider.collection,
                    "dataFilter": {
                        "timeRange": {"from": start, "to": end},
                        "maxCloudCoverage": _number(provider.max_cloud_coverage),
                        "mosaickingOrder": req.mosaicking_order or provider.mosaicking_order,
                    },
                }
            ],
        },
        "output": {
            "width": req.width,
            "height": req.height,
            "responses": [{"identifier": "default", "format": {"type": req.format}}],
        },
        "evalscript": provider.evalscript or TRUE_COLOUR,
    }


def build_target(
    name: str, provider: ProviderConfig, req: GetMapRequest, *, today: dt.date | None = None
) -> FetchTarget:
    """The download for `req` on Sentinel Hub provider `name`: the body and a readable summary.

    The image id covers the exact body sent; the summary (shown as the redacted source URL)
    names every input of it, the evalscript by its hash.
    """
    body = process_request(provider, req, today=today)
    data = body["input"]["data"][0]
    script = hashlib.sha256(body["evalscript"].encode()).hexdigest()[:16]
    summary = (
        ("collection", data["type"]),
        ("bbox", ",".join(repr(v) for v in body["input"]["bounds"]["bbox"])),
        ("crs", body["input"]["bounds"]["properties"]["crs"]),
        ("from", data["dataFilter"]["timeRange"]["from"]),
        ("to", data["dataFilter"]["timeRange"]["to"]),
        ("maxCloudCoverage", str(data["dataFilter"]["maxCloudCoverage"])),
        ("mosaickingOrder", data["dataFilter"]["mosaickingOrder"]),
        ("width", str(req.width)),
        ("height", str(req.height)),
        ("format", req.format),
        ("evalscript", f"sha256:{script}"),
    )
    return FetchTarget(
        source=name,
        endpoint=provider.url.rstrip("/") + PROCESS_PATH,
        params=summary,
        expected_size=(req.width, req.height),
        request=req,
        attribution=provider.attribution,
        has_time=req.time is not None,
        body=json.dumps(body, separators=(",", ":"), sort_keys=True),
        kind="sentinelhub",
    )


def parse_error(body: bytes) -> tuple[str | None, str] | None:
    """(code, message) of a Process API error, `{"error": {...}}` or the bare object; else None."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    inner = doc.get("error", doc)
    if isinstance(inner, str):  # OAuth style: {"error": "invalid_client", ...}
        return inner, str(doc.get("error_description") or inner)
    if not isinstance(inner, dict):
        return None
    message = inner.get("message") or inner.get("reason")
    code = inner.get("code")
    if message is None and code is None:
        return None
    return (None if code is None else str(code)), str(message or "no message")


def _retry_after_ms(value: str | None) -> float | None:
    """Sentinel Hub's Retry-After is in milliseconds; seconds are returned."""
    if not value:
        return None
    try:
        return max(0.0, float(value) / 1000.0)
    except ValueError:
        return None


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


async def _read_limited(response: httpx2.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _once(callback: Callable[[], None] | None) -> Callable[[], None] | None:
    if callback is None:
        return None
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            callback()

    return call


# --- tokens -------------------------------------------------------------------------------------


def _token_outcome(error: SatapiError) -> str:
    if isinstance(error, ProviderAuthError):
        return "refused"
    if isinstance(error, UpstreamBusy):
        return "busy"
    return "error"


class _Refused(Exception):
    """The Process API answered 401 for this token."""


class OAuthTokens:
    """One provider's access token: client credentials, cached and shared through a `TokenCache`.

    The cache key is a digest of the token endpoint, the client id and the client secret (no
    credential in a key): entries or replicas with different secrets never share a token, so
    a wrong secret is refused by the token endpoint at once (`provider_auth`) instead of riding
    on a token another entry fetched with the right one.
    """

    def __init__(
        self,
        http: httpx2.AsyncClient,
        name: str,
        provider: ProviderConfig,
        cache: TokenCache,
        *,
        retry: RetryPolicy,
        timeout_s: float,
        secrets: Sequence[str] = (),
        observer: Observer | None = None,
    ) -> None:
        if provider.token_url is None or not provider.has_credentials:
            raise ValueError(f"provider {name!r} has no token_url or client credentials")
        self._http = http
        self._name = name
        self._token_url = provider.token_url
        self._client_id = provider.client_id or ""
        assert provider.client_secret is not None
        self._secret = provider.client_secret
        self._cache = cache
        self._retry = retry
        self._timeout_s = timeout_s
        self._observer: Observer = observer if observer is not None else NullObserver()
        self._secrets = [*secrets, self._secret.get_secret_value(), self._client_id]
        credentials = f"{self._token_url}\0{self._client_id}\0{self._secret.get_secret_value()}"
        digest = hashlib.sha256(credentials.encode()).hexdigest()
        self.key = f"satapi:oauth-token:{digest[:32]}"
        self.issued = 0  # token requests that got a token (for tests and metrics)

    async def token(self, *, stale: str | None = None) -> str:
        """A usable access token; `stale` is one the Process API just refused (401)."""
        reason = "new" if stale is None else "after_401"
        token = await self._cache.get(self.key, functools.partial(self._issue, reason), stale=stale)
        return token.value

    async def _issue(self, reason: str) -> Token:
        """Ask the token endpoint (retrying transients), and report it (never the token)."""
        started = time.perf_counter()
        attempts, outcome, error, expires_in = 0, "error", None, None
        try:
            async with asyncio.timeout(self._timeout_s):
                async for attempt in self._retry.retrying():
                    with attempt:
                        attempts += 1
                        token, expires_in = await self._request()
                        self.issued += 1
                        outcome = "ok"
                        return token
        except Transient as exc:
            outcome, error = _token_outcome(exc.error), exc.error.code
            raise exc.error from None
        except SatapiError as exc:
            outcome, error = _token_outcome(exc), exc.code
            raise
        except TimeoutError:
            error = UpstreamTimeout.code
            raise UpstreamTimeout(
                f"The token endpoint of provider {self._name!r} did not answer within "
                f"{self._timeout_s:g} s."
            ) from None
        finally:
            self._observer.observe(
                TokenRequested(
                    provider=self._name,
                    reason=reason,
                    outcome=outcome,
                    duration_s=time.perf_counter() - started,
                    attempts=attempts,
                    expires_in_s=expires_in,
                    error=error,
                )
            )
        raise AssertionError("unreachable: stamina either returns or raises")  # pragma: no cover

    async def _request(self) -> tuple[Token, float]:
        where = f"The token endpoint of provider {self._name!r}"
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret.get_secret_value(),
        }
        try:
            response = await self._http.post(
                self._token_url, data=form, headers={"Accept": "application/json"}
            )
        except httpx2.TimeoutException as exc:
            raise Transient(
                UpstreamTimeout(f"{where} did not answer in time ({type(exc).__name__}).")
            ) from None
        except httpx2.HTTPError as exc:
            raise Transient(
                UpstreamError(f"{where} could not be reached ({type(exc).__name__}).")
            ) from None
        status = response.status_code
        if status == 200:
            return self._parse_token(response.content, where)
        detail = parse_error(response.content[:MAX_ERROR_BYTES])
        oauth_code = redact(detail[0], self._secrets)[:100] if detail and detail[0] else None
        label = f", {oauth_code}" if oauth_code else ""
        if status in TOKEN_CREDENTIAL_STATUS:
            raise ProviderAuthError(
                f"Provider {self._name!r} refused the client credentials (HTTP {status}{label}); "
                "check its client_id and client_secret."
            )
        if status == 429:
            wait = _retry_after_s(response.headers.get("retry-after"))
            raise Transient(
                UpstreamBusy(
                    f"{where} is rate limiting token requests (HTTP 429).",
                    retry_after=wait if wait is not None else DEFAULT_BUSY_S,
                ),
                wait,
            )
        error = UpstreamError(f"{where} answered HTTP {status}{label}.")
        if status >= 500:
            raise Transient(error)
        raise error

    def _parse_token(self, body: bytes, where: str) -> tuple[Token, float]:
        try:
            doc = json.loads(body)
            value = doc["access_token"]
            expires_in = float(doc.get("expires_in", 300))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise UpstreamError(f"{where} sent no usable access token.") from None
        if not isinstance(value, str) or not value or not math.isfinite(expires_in):
            raise UpstreamError(f"{where} sent no usable access token.")
        return Token.issued(value, expires_in), expires_in


# --- the client ---------------------------------------------------------------------------------


class SentinelHubClient:
    """The `ImageClient` of the `sentinelhub` kind: Process API downloads under OAuth tokens.

    A permit covers only the Process API call (not the token request), as for WMS.
    """

    def __init__(
        self,
        http: httpx2.AsyncClient,
        limiter: Limiter,
        *,
        providers: Mapping[str, ProviderConfig],
        tokens: TokenCache,
        max_bytes: int,
        total_timeout_s: float,
        retry: RetryPolicy,
        secrets: Sequence[str] = (),
        observer: Observer | None = None,
    ) -> None:
        self._http = http
        self._limiter = limiter
        self._providers = dict(providers)
        self._max_bytes = max_bytes
        self._total_timeout_s = total_timeout_s
        self._retry = retry
        self._secrets = list(secrets)
        self._observer: Observer = observer if observer is not None else NullObserver()
        self.tokens = {
            name: OAuthTokens(
                http,
                name,
                p,
                tokens,
                retry=retry,
                timeout_s=total_timeout_s,
                secrets=self._secrets,
                observer=self._observer,
            )
            for name, p in self._providers.items()
        }

    def provider(self, name: str) -> ProviderConfig:
        """The Sentinel Hub provider `name`, or `UnknownProvider`."""
        try:
            return self._providers[name]
        except KeyError:
            raise UnknownProvider(f"{name!r} is not a Sentinel Hub provider.") from None

    def target(self, name: str, provider: ProviderConfig, req: GetMapRequest) -> FetchTarget:
        """The Process API download for `req` on provider `name`."""
        return build_target(name, provider, req)

    async def layers(self, name: str, *, refresh: bool = False) -> list[LayerInfo]:
        """The provider's one layer: its collection (no network call)."""
        del refresh
        provider = self.provider(name)
        return [
            LayerInfo(
                name=provider.collection,
                title=f"{provider.collection} (Process API collection)",
                crs=sorted({"CRS:84", "EPSG:4326", "EPSG:3857"}),
                bbox=None,
            )
        ]

    async def download(
        self,
        target: FetchTarget,
        writer: ImageWriter,
        *,
        on_transfer: Callable[[], None] | None = None,
        stats: DownloadStats | None = None,
    ) -> DownloadStats:
        """POST the target's body and stream the image into `writer`, retrying transients.

        A target larger than `MAX_PX` on a side (one that was not split into tiles) is refused
        before any call.

        A 401 refreshes the token once (shared with every request refused for the same token)
        and repeats the call once; 429 waits Retry-After (ms) within the retry budget, then 503
        `upstream_busy`.
        """
        stats = stats if stats is not None else DownloadStats()
        on_transfer = _once(on_transfer)  # a refused call repeated is still one transfer stage
        tokens = self.tokens.get(target.source)
        if tokens is None or target.body is None:
            raise UnknownProvider(f"{target.source!r} is not a Sentinel Hub provider.")
        width, height = target.expected_size or (0, 0)
        if width > MAX_PX or height > MAX_PX:
            raise InvalidRequest(
                f"The Sentinel Hub Process API renders at most {MAX_PX} x {MAX_PX} pixels per "
                f"call; {width} x {height} must be fetched in tiles."
            )
        try:
            await self._retry.run(
                lambda: self._attempt(target, tokens, writer, stats, on_transfer),
                stats=stats,
                total_timeout_s=self._total_timeout_s,
                timed_out=(
                    f"Provider {target.source!r} did not deliver the image within "
                    f"{self._total_timeout_s:g} s."
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
        tokens: OAuthTokens,
        writer: ImageWriter,
        stats: DownloadStats,
        on_transfer: Callable[[], None] | None,
    ) -> None:
        token = await tokens.token()
        try:
            await self._call(target, token, writer, stats, on_transfer)
            return
        except _Refused:
            pass
        # Revoked or expired early: one refresh (shared by all refused for this token), one retry.
        token = await tokens.token(stale=token)
        try:
            await self._call(target, token, writer, stats, on_transfer)
        except _Refused:
            raise ProviderAuthError(
                f"Provider {target.source!r} refused a freshly issued access token (HTTP 401)."
            ) from None

    async def _call(
        self,
        target: FetchTarget,
        token: str,
        writer: ImageWriter,
        stats: DownloadStats,
        on_transfer: Callable[[], None] | None,
    ) -> None:
        if writer.bytes_written:
            await writer.reset()
        assert target.body is not None and target.request is not None
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": target.request.format,
        }
        async with self._limiter.slot(target.source) as waited:
            stats.queue_wait_s += waited
            if on_transfer is not None:
                on_transfer()
            started = time.perf_counter()
            try:
                async with self._http.stream(
                    "POST", target.endpoint, content=target.body.encode(), headers=headers
                ) as response:
                    await self._consume(response, target, token, writer, stats)
            except httpx2.TimeoutException as exc:
                raise Transient(
                    UpstreamTimeout(
                        f"Provider {target.source!r} did not answer in time ({type(exc).__name__})."
                    )
                ) from None
            except (httpx2.NetworkError, httpx2.RemoteProtocolError) as exc:
                raise Transient(
                    UpstreamError(
                        f"Provider {target.source!r} could not be reached or broke off the "
                        f"transfer ({type(exc).__name__})."
                    )
                ) from None
            finally:
                stats.transfer_s += time.perf_counter() - started

    async def _consume(
        self,
        response: httpx2.Response,
        target: FetchTarget,
        token: str,
        writer: ImageWriter,
        stats: DownloadStats,
    ) -> None:
        status = response.status_code
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        stats.content_type = content_type
        who = f"Provider {target.source!r}"
        if status == 401:
            raise _Refused()
        if status != 200:
            # Redirects are not followed (the client never sends a token to another host).
            body = await _read_limited(response, MAX_ERROR_BYTES)
            if status == 429:
                wait = _retry_after_ms(response.headers.get("retry-after"))
                busy = UpstreamBusy(
                    f"{who} is rate limiting requests (HTTP 429).",
                    retry_after=max(DEFAULT_BUSY_S, math.ceil(wait)) if wait else DEFAULT_BUSY_S,
                )
                raise Transient(busy, wait)
            error = self._error(status, body, token, who)
            if status in TRANSIENT_STATUS - {500}:
                raise Transient(error)
            raise error
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_bytes:
            raise self._too_large()
        if "json" in content_type or "xml" in content_type or content_type.startswith("text/"):
            body = await _read_limited(response, MAX_ERROR_BYTES)
            detail = parse_error(body)
            if detail is not None:
                raise self._error(status, body, token, who)
            raise NotAnImage(f"{who} sent {content_type} instead of an image.")
        async for chunk in response.aiter_bytes():
            if writer.bytes_written + len(chunk) > self._max_bytes:
                raise self._too_large()
            await writer.write(chunk)

    def _error(self, status: int, body: bytes, token: str, who: str) -> SatapiError:
        detail = parse_error(body)
        if detail is None:
            return UpstreamError(f"{who} answered HTTP {status}.")
        code, message = detail
        secrets = [*self._secrets, token]
        message = redact(message, secrets)[:1000]
        code = redact(code, secrets)[:100] if code else None
        label = f" ({code})" if code else ""
        return ProviderError(
            f"{who} reported an error{label}: {message}",
            extra={"provider_code": code} if code else None,
        )

    def _too_large(self) -> ImageTooLarge:
        return ImageTooLarge(f"The image is larger than the {self._max_bytes} byte limit.")
