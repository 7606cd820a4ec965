"""The domain exception tree, and the one table that maps it to HTTP status codes."""

from __future__ import annotations

from typing import Any


class SatapiError(Exception):
    """Base of every error the service reports to a client.

    `code` is the machine-readable name sent in the error envelope; the message is a human sentence.
    `retry_after` (seconds) becomes a `Retry-After` header; `extra` adds fields to the envelope.
    """

    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.extra: dict[str, Any] = dict(extra or {})

    def __str__(self) -> str:
        return self.message


# --- client errors -----------------------------------------------------------------------------


class InvalidRequest(SatapiError):
    """The request is well-formed JSON but asks for something impossible."""

    code = "invalid_request"


class InvalidBBox(InvalidRequest):
    """A bounding box that is not finite, not ordered, or out of the CRS's range."""

    code = "invalid_bbox"


class UnknownProvider(InvalidRequest):
    """The request names a provider that is not configured."""

    code = "unknown_provider"


class UnknownLayer(InvalidRequest):
    """The request names a layer the provider's capabilities do not list."""

    code = "unknown_layer"


class UnsupportedCRS(InvalidRequest):
    """The layer's capabilities do not offer the request's CRS."""

    code = "unsupported_crs"


class TimeNotAvailable(InvalidRequest):
    """The layer offers no imagery for the requested time (or has no TIME dimension)."""

    code = "time_not_available"


class OutsideLayer(InvalidRequest):
    """The bbox does not overlap the layer's extent at all."""

    code = "outside_layer"


class InvalidGeometry(InvalidRequest):
    """A `geometry` that is not a valid lon/lat Polygon or MultiPolygon (422)."""

    code = "invalid_geometry"


class AreaTooLarge(InvalidRequest):
    """An image with more pixels than `max_area_pixels` (422)."""

    code = "area_too_large"


class TooManyDates(InvalidRequest):
    """A time series asks for more dates than allowed."""

    code = "too_many_dates"


# --- clearest-date selection ---------------------------------------------------------


class NoDatesInWindow(InvalidRequest):
    """A `clearest` window holds none of the layer's dates."""

    code = "no_dates_in_window"


class TooCloudy(InvalidRequest):
    """Every candidate date of a `clearest` window scores above its `max_cloud`."""

    code = "too_cloudy"


class UrlNotAllowed(SatapiError):
    """A client-supplied URL points somewhere the service will not fetch from."""

    code = "url_not_allowed"


class AINotConfigured(SatapiError):
    """The Claude analyzer was asked for, but no Anthropic key is configured."""

    code = "ai_not_configured"


class NotFound(SatapiError):
    """An image or analysis id that is well-formed but unknown."""

    code = "not_found"


class JobNotFound(NotFound):
    """A job id that is unknown, or whose record expired (`job_ttl_s`)."""

    code = "job_not_found"


class JobInterrupted(SatapiError):
    """The process running a job stopped before the job finished (in-process jobs)."""

    code = "interrupted"


class WebhookNotAllowed(InvalidRequest):
    """A job's webhook URL is not under `webhook_allowed_hosts` (or not a plain http(s) URL)."""

    code = "webhook_not_allowed"


class Unauthorized(SatapiError):
    """Missing or wrong API key."""

    code = "unauthorized"


class PayloadTooLarge(SatapiError):
    """A request body over the configured limit."""

    code = "payload_too_large"


# --- capacity ----------------------------------------------------------------------------------


class Overloaded(SatapiError):
    """Too many requests are already waiting for a WMS permit; the caller should come back later."""

    code = "overloaded"


# --- shared backends (the object store; Redis coordination uses the same class) -----


class BackendUnavailable(SatapiError):
    """A shared backend (the object store, Redis) refused or did not answer; try again later.

    `backend` names which one ("store", "redis"); it is also sent in the envelope.
    """

    code = "backend_unavailable"

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        retry_after: float | None = 5.0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        extra = dict(extra or {})
        # Kept in `extra` too, so copies made with (message, retry_after, extra) keep it.
        self.backend: str = backend or str(extra.get("backend") or "backend")
        extra["backend"] = self.backend
        super().__init__(message, retry_after=retry_after, extra=extra)


# --- storage -------------------------------------------------


class StoreFull(SatapiError):
    """The data directory has no room for a write; nothing partial was kept."""

    code = "store_full"


# --- upstream (WMS) errors ---------------------------------------------------------------------


class UpstreamError(SatapiError):
    """The WMS server failed in a way that is not more specific below."""

    code = "upstream_error"


class WMSServiceException(UpstreamError):
    """The WMS server answered with an OGC ServiceException (often with HTTP 200)."""

    code = "wms_exception"


class NotAnImage(UpstreamError):
    """The body is not a decodable image of the requested size."""

    code = "not_an_image"


class ImageTooLarge(UpstreamError):
    """The body is larger than the configured byte limit."""

    code = "image_too_large"


class RedirectNotAllowed(UpstreamError):
    """The WMS server redirected to a host the service does not fetch from."""

    code = "redirect_not_allowed"


class UpstreamTimeout(UpstreamError):
    """The download did not finish within its deadline."""

    code = "upstream_timeout"


class UpstreamBusy(UpstreamError):
    """The imagery server kept answering 429 (rate limited) until the retries ran out."""

    code = "upstream_busy"


# --- OAuth imagery providers (Sentinel Hub / CDSE Process API) -----------------------


class ProviderAuthError(UpstreamError):
    """The provider refused the configured client credentials (or a fresh token)."""

    code = "provider_auth"


class ProviderError(UpstreamError):
    """The provider answered with an error document; its code is in `extra["provider_code"]`."""

    code = "provider_error"


# --- AI errors ---------------------------------------------------------------------------------


class AIError(SatapiError):
    """The AI provider failed."""

    code = "ai_error"


class AIBusy(AIError):
    """The AI provider is rate limiting or overloaded."""

    code = "ai_busy"


class AIAuthError(AIError):
    """The AI provider rejected the configured credentials."""

    code = "ai_auth"


# The one table: the most specific class listed wins (looked up along the MRO).
STATUS_BY_ERROR: dict[type[SatapiError], int] = {
    SatapiError: 500,
    InvalidRequest: 422,
    UrlNotAllowed: 400,
    AINotConfigured: 400,
    NotFound: 404,
    Unauthorized: 401,
    PayloadTooLarge: 413,
    Overloaded: 503,
    BackendUnavailable: 503,
    StoreFull: 507,
    UpstreamError: 502,
    UpstreamTimeout: 504,
    UpstreamBusy: 503,
    AIError: 502,
    AIBusy: 503,
}


def status_for(error: SatapiError) -> int:
    """The HTTP status for a domain error, from `STATUS_BY_ERROR`."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500
