"""The client's exception tree, mirroring the service's error envelope (`code`, `error`, ...).

Every failure a caller can see is a `SatapiError`: an HTTP error answer, an `error` event on a
stream, a request the models refuse before sending, or a service that cannot be reached.
"""

from __future__ import annotations

from typing import Any


class SatapiError(Exception):
    """A failed satapi call: `code` (the envelope's), `status` (HTTP, None if no answer),
    `request_id` (the service's `X-Request-ID`), `details` (the envelope's other fields, e.g.
    `side` or `wms_code`) and `retry_after` (seconds, when the service said when to retry)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int | None = None,
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.request_id = request_id
        self.details: dict[str, Any] = dict(details or {})
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, code={self.code!r}, status={self.status!r}, "
            f"request_id={self.request_id!r})"
        )


class AuthenticationError(SatapiError):
    """401 `unauthorized`: no API key, or a wrong one."""


class NotFoundError(SatapiError):
    """404 `not_found`: an unknown image, analysis or provider."""


class InvalidRequestError(SatapiError):
    """The request was refused as invalid (400, 413, 422; or by the models before sending)."""


class OverloadedError(SatapiError):
    """503 `overloaded`, `ai_busy` or `shutting_down`: try again after `retry_after` seconds."""


class UpstreamError(SatapiError):
    """The WMS server or the AI provider failed (502: `wms_exception`, `ai_error`, ...)."""


class UpstreamTimeoutError(UpstreamError):
    """504 `upstream_timeout`: the WMS server did not answer in time."""


class RequestTimeoutError(SatapiError):
    """504 `request_timeout`: the request outran the service's own deadline."""


class ServerError(SatapiError):
    """The service failed (500 `internal_error`; 507 `store_full`, with `retry_after`), or
    answered something that is not satapi's."""


class APIConnectionError(SatapiError):
    """No answer: the service could not be reached, or the connection broke or timed out."""


ERROR_BY_CODE: dict[str, type[SatapiError]] = {
    "unauthorized": AuthenticationError,
    "not_found": NotFoundError,
    "validation_error": InvalidRequestError,
    "invalid_request": InvalidRequestError,
    "invalid_bbox": InvalidRequestError,
    "unknown_provider": InvalidRequestError,
    "too_many_dates": InvalidRequestError,
    "time_not_available": InvalidRequestError,
    "unknown_layer": InvalidRequestError,
    "outside_layer": InvalidRequestError,
    "unsupported_crs": InvalidRequestError,
    "url_not_allowed": InvalidRequestError,
    "ai_not_configured": InvalidRequestError,
    "payload_too_large": InvalidRequestError,
    "overloaded": OverloadedError,
    "ai_busy": OverloadedError,
    "shutting_down": OverloadedError,
    "store_full": ServerError,
    "upstream_error": UpstreamError,
    "wms_exception": UpstreamError,
    "not_an_image": UpstreamError,
    "image_too_large": UpstreamError,
    "redirect_not_allowed": UpstreamError,
    "ai_error": UpstreamError,
    "ai_auth": UpstreamError,
    "upstream_timeout": UpstreamTimeoutError,
    "request_timeout": RequestTimeoutError,
    "internal_error": ServerError,
}

# For codes this client does not know yet (a newer service): the class by HTTP status.
ERROR_BY_STATUS: dict[int, type[SatapiError]] = {
    401: AuthenticationError,
    404: NotFoundError,
    503: OverloadedError,
    502: UpstreamError,
    504: UpstreamTimeoutError,
}


def error_class(code: str, status: int | None) -> type[SatapiError]:
    """The exception class for an envelope's `code` (else its HTTP `status`)."""
    if code in ERROR_BY_CODE:
        return ERROR_BY_CODE[code]
    if status is not None:
        if status in ERROR_BY_STATUS:
            return ERROR_BY_STATUS[status]
        if 400 <= status < 500:
            return InvalidRequestError
    return ServerError if status is not None and status >= 500 else SatapiError


def error_from_envelope(
    body: dict[str, Any],
    *,
    status: int | None,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> SatapiError:
    """The exception for an error envelope (an HTTP body or an `error` event's data)."""
    code = str(body.get("code") or "error")
    message = str(body.get("error") or f"satapi answered {status}")
    details = {
        k: v
        for k, v in body.items()
        if k not in {"success", "error", "code", "request_id", "retry_after"}
    }
    if retry_after is None and isinstance(body.get("retry_after"), int | float):
        retry_after = float(body["retry_after"])
    return error_class(code, status)(
        message,
        code=code,
        status=status,
        request_id=request_id or body.get("request_id"),
        details=details,
        retry_after=retry_after,
    )
