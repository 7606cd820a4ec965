"""`SatapiClient`: the typed async client; requests and answers are the service's own models."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote

import httpx2
from pydantic import BaseModel, ValidationError

from satapi import __version__
from satapi.client.errors import (
    APIConnectionError,
    InvalidRequestError,
    SatapiError,
    ServerError,
    error_from_envelope,
)
from satapi.client.events import JobEvent, parse_job_event
from satapi.client.streams import AnalysisStream
from satapi.models import (
    ComparisonAnalyzeRequest,
    ComparisonDownloadResponse,
    ComparisonRequest,
    ComparisonResponse,
    HealthResponse,
    ImageRequest,
    ImageResponse,
    JobAccepted,
    JobOut,
    LayerOut,
    LayersResponse,
    ProviderInfo,
    ProvidersResponse,
    StoredAnalysis,
    StoredImageMeta,
    TimeseriesRequest,
    TimeseriesResponse,
    VisionRequest,
    VisionResponse,
)

M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx2.Timeout(300.0, connect=10.0)


class SatapiClient:
    """An async client for a satapi service.

    ::

        async with SatapiClient("http://127.0.0.1:8000", api_key=None) as client:
            image = await client.fetch_image(bbox=[10, 45, 12, 46], time="2024-06-01")
            data = await client.image_bytes(image.image.id)

    Methods take a request model or its fields as keywords (validated before sending: a bad
    field raises `InvalidRequestError` without a request). A 503 with `Retry-After`
    (`overloaded`, `ai_busy`) is retried up to `max_retries` times, waiting as told (at most
    `max_retry_wait` seconds each time). Pass `http_client` to reuse your own
    `httpx2.AsyncClient` (then it is not closed here); `base_url` is still used for every path.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx2.Timeout = DEFAULT_TIMEOUT,
        http_client: httpx2.AsyncClient | None = None,
        max_retries: int = 2,
        max_retry_wait: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max(0, max_retries)
        self.max_retry_wait = max_retry_wait
        self._headers = {"User-Agent": f"satapi-client/{__version__}"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._owns_http = http_client is None
        self._http = http_client or httpx2.AsyncClient(timeout=timeout, follow_redirects=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client (unless it was passed in)."""
        if self._owns_http:
            await self._http.aclose()

    # -- resources --------------------------------------------------------------------------

    async def health(self) -> HealthResponse:
        """GET /healthz."""
        return await self._get_model("/healthz", HealthResponse)

    async def providers(self) -> list[ProviderInfo]:
        """The configured WMS providers."""
        return (await self._get_model("/api/providers", ProvidersResponse)).providers

    async def layers(self, provider: str, *, refresh: bool = False) -> list[LayerOut]:
        """A provider's layers from its capabilities, with their TIME values."""
        path = f"/api/providers/{quote(provider, safe='')}/layers"
        params = {"refresh": "true"} if refresh else None
        return (await self._get_model(path, LayersResponse, params=params)).layers

    async def fetch_image(
        self, request: ImageRequest | None = None, **fields: Any
    ) -> ImageResponse:
        """Fetch (or reuse) an image: POST /api/images."""
        body = _build(ImageRequest, request, fields)
        return await self._post_model("/api/images", body, ImageResponse)

    async def image_bytes(self, image_id: str) -> bytes:
        """A stored image's bytes."""
        response = await self._request("GET", f"/api/images/{quote(image_id, safe='')}")
        return response.content

    async def image_meta(self, image_id: str) -> StoredImageMeta:
        """A stored image's metadata."""
        return await self._get_model(
            f"/api/images/{quote(image_id, safe='')}/meta", StoredImageMeta
        )

    async def analyze(self, request: VisionRequest | None = None, **fields: Any) -> VisionResponse:
        """Download and analyse one image: POST /api/vision/analyze_satellite."""
        body = _build(VisionRequest, request, fields)
        return await self._post_model("/api/vision/analyze_satellite", body, VisionResponse)

    def analyze_stream(
        self, request: VisionRequest | None = None, **fields: Any
    ) -> AnalysisStream[VisionResponse]:
        """The same analysis as a stream of typed events (use with `async with`)."""
        body = _build(VisionRequest, request, fields)
        return self._stream("/api/vision/analyze_satellite_stream", body, VisionResponse)

    async def download_pair(
        self, request: ComparisonRequest | None = None, **fields: Any
    ) -> ComparisonDownloadResponse:
        """Download a before/after pair: POST /api/comparison/download."""
        body = _build(ComparisonRequest, request, _sides(fields))
        return await self._post_model("/api/comparison/download", body, ComparisonDownloadResponse)

    async def compare(
        self, request: ComparisonAnalyzeRequest | None = None, **fields: Any
    ) -> ComparisonResponse:
        """Compare two dates: POST /api/comparison/analyze. `before`/`after` may be dates."""
        body = _build(ComparisonAnalyzeRequest, request, _sides(fields))
        return await self._post_model("/api/comparison/analyze", body, ComparisonResponse)

    def compare_stream(
        self, request: ComparisonAnalyzeRequest | None = None, **fields: Any
    ) -> AnalysisStream[ComparisonResponse]:
        """The same comparison as a stream of typed events (use with `async with`)."""
        body = _build(ComparisonAnalyzeRequest, request, _sides(fields))
        return self._stream("/api/comparison/analyze_stream", body, ComparisonResponse)

    async def timeseries(
        self, request: TimeseriesRequest | None = None, **fields: Any
    ) -> TimeseriesResponse:
        """One area over many dates: POST /api/timeseries."""
        body = _build(TimeseriesRequest, request, fields)
        return await self._post_model("/api/timeseries", body, TimeseriesResponse)

    async def timeseries_csv(self, request: TimeseriesRequest | None = None, **fields: Any) -> str:
        """The same time series as CSV text."""
        body = _build(TimeseriesRequest, request, fields)
        response = await self._request(
            "POST", "/api/timeseries", json=_dump(body), headers={"Accept": "text/csv"}
        )
        return response.text

    async def analysis(self, analysis_id: str) -> StoredAnalysis:
        """A stored analysis: GET /api/analyses/{id}."""
        return await self._get_model(f"/api/analyses/{quote(analysis_id, safe='')}", StoredAnalysis)

    async def tile(
        self,
        provider: str,
        z: int,
        x: int,
        y: int,
        *,
        layer: str | None = None,
        time: str | None = None,
    ) -> bytes:
        """A 256 px Web Mercator XYZ tile (PNG) of a provider's layer."""
        params = {k: v for k, v in {"layer": layer, "time": time}.items() if v}
        path = f"/api/tiles/{quote(provider, safe='')}/{z}/{x}/{y}.png"
        return (await self._request("GET", path, params=params)).content

    # -- jobs -------------------------------------------------------------------------------

    async def submit_job(
        self,
        kind: Literal["timeseries", "analyze", "compare"],
        params: BaseModel | dict[str, Any],
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> JobOut:
        """Submit a job (POST /api/jobs): `params` is the body of the kind's route
        (`TimeseriesRequest`, `VisionRequest`, `ComparisonAnalyzeRequest` or a dict)."""
        body: dict[str, Any] = {
            "kind": kind,
            "params": _dump(params) if isinstance(params, BaseModel) else params,
        }
        if webhook_url is not None:
            body["webhook"] = {"url": webhook_url, "secret": webhook_secret or ""}
        response = await self._request("POST", "/api/jobs", json=body)
        return _parse(response, JobAccepted).job

    async def job(self, job_id: str) -> JobOut:
        """The job's state, progress and result: GET /api/jobs/{id}."""
        return await self._get_model(f"/api/jobs/{quote(job_id, safe='')}", JobOut)

    async def cancel_job(self, job_id: str) -> JobOut:
        """Cancel the job: DELETE /api/jobs/{id}."""
        response = await self._request("DELETE", f"/api/jobs/{quote(job_id, safe='')}")
        return _parse(response, JobOut)

    async def wait(
        self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None
    ) -> JobOut:
        """Poll the job until it succeeded, failed or was cancelled, and return it.

        `TimeoutError` when `timeout_s` passes first.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = await self.job(job_id)
            if job.final:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.state} after {timeout_s} s")
            await _sleep(poll_s)

    async def job_events(self, job_id: str) -> AsyncIterator[JobEvent]:
        """The job's event stream: `JobProgressEvent`s, then a `JobResultEvent` or an
        `ErrorEvent` (code `cancelled` for a cancelled job), then it ends."""
        path = f"/api/jobs/{quote(job_id, safe='')}/events"
        headers = {**self._headers, "Accept": "text/event-stream", "Cache-Control": "no-store"}
        request = self._http.build_request("GET", self.base_url + path, headers=headers)
        try:
            response = await self._http.send(request, stream=True)
        except httpx2.TransportError as exc:
            raise _connection_error(exc, self.base_url) from exc
        try:
            if not response.is_success:
                await response.aread()
                raise _error(response)
            async for sse in httpx2.EventSource(response):
                yield parse_job_event(sse.event, sse.data, sse.id or None)
        except httpx2.TransportError as exc:
            raise _connection_error(exc, self.base_url) from exc
        finally:
            await response.aclose()

    # -- plumbing ---------------------------------------------------------------------------

    async def _get_model(
        self, path: str, model: type[M], *, params: dict[str, str] | None = None
    ) -> M:
        return _parse(await self._request("GET", path, params=params), model)

    async def _post_model(self, path: str, body: BaseModel, model: type[M]) -> M:
        return _parse(await self._request("POST", path, json=_dump(body)), model)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx2.Response:
        request = self._http.build_request(
            method,
            self.base_url + path,
            json=json,
            params=params,
            headers={**self._headers, **(headers or {})},
        )
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._http.send(request)
            except httpx2.TransportError as exc:
                raise _connection_error(exc, self.base_url) from exc
            if response.is_success:
                return response
            error = _error(response)
            if not await self._backoff(error, attempt):
                raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def _stream(self, path: str, body: BaseModel, model: type[M]) -> AnalysisStream[M]:
        async def open_response(stack: AsyncExitStack) -> httpx2.Response:
            headers = {**self._headers, "Accept": "text/event-stream", "Cache-Control": "no-store"}
            for attempt in range(self.max_retries + 1):
                request = self._http.build_request(
                    "POST", self.base_url + path, json=_dump(body), headers=headers
                )
                try:
                    response = await self._http.send(request, stream=True)
                except httpx2.TransportError as exc:
                    raise _connection_error(exc, self.base_url) from exc
                if response.is_success:
                    stack.push_async_callback(response.aclose)
                    return response
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                error = _error(response)
                if not await self._backoff(error, attempt):
                    raise error
            raise AssertionError("unreachable")  # pragma: no cover

        return AnalysisStream(open_response, model)

    async def _backoff(self, error: SatapiError, attempt: int) -> bool:
        """Wait before retrying a 503 that said when to come back; False: do not retry."""
        if error.status != 503 or error.retry_after is None or attempt >= self.max_retries:
            return False
        await _sleep(min(max(error.retry_after, 0.0), self.max_retry_wait))
        return True


async def _sleep(seconds: float) -> None:
    """The back-off wait (its own name, so tests can record it without patching asyncio)."""
    await asyncio.sleep(seconds)


def _build(model: type[M], request: M | None, fields: dict[str, Any]) -> M:
    """The request model: as given, or validated from keyword fields."""
    if request is not None:
        if fields:
            raise TypeError("pass a request model or keyword fields, not both")
        return request
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise InvalidRequestError(
            f"Invalid {where}: {first['msg']}.", code="validation_error"
        ) from exc


def _sides(fields: dict[str, Any]) -> dict[str, Any]:
    """`before="2024-01-01"` is short for `before={"time": "2024-01-01"}`."""
    return {
        k: {"time": v} if k in ("before", "after") and isinstance(v, str) else v
        for k, v in fields.items()
    }


def _dump(body: BaseModel) -> Any:
    # Only the fields the caller set: the service applies its own defaults.
    return body.model_dump(mode="json", exclude_unset=True)


def _parse(response: httpx2.Response, model: type[M]) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ServerError(
            f"Unexpected answer from {response.request.url.path}: {exc.error_count()} invalid "
            "field(s).",
            code="bad_response",
            status=response.status_code,
            request_id=response.headers.get("x-request-id"),
        ) from exc


def _retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error(response: httpx2.Response) -> SatapiError:
    """The exception for an error answer (the envelope, or whatever else came back)."""
    request_id = response.headers.get("x-request-id")
    retry_after = _retry_after(response.headers.get("retry-after"))
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body and "error" in body:
        return error_from_envelope(
            body, status=response.status_code, request_id=request_id, retry_after=retry_after
        )
    # Not satapi's envelope: a proxy's page, say. Keep the sentence short and plain.
    return error_from_envelope(
        {
            "code": f"http_{response.status_code}",
            "error": f"HTTP {response.status_code} {response.reason_phrase} from "
            f"{response.request.url.path} (not a satapi error answer).",
        },
        status=response.status_code,
        request_id=request_id,
        retry_after=retry_after,
    )


def _connection_error(exc: httpx2.TransportError, base_url: str) -> APIConnectionError:
    kind = "timed out" if isinstance(exc, httpx2.TimeoutException) else "failed"
    detail = str(exc) or type(exc).__name__
    return APIConnectionError(
        f"The request to {base_url} {kind}: {detail}.",
        code="timeout" if kind == "timed out" else "connection_error",
    )
