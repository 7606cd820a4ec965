"""Turns every error into the JSON envelope `{"success": false, "error", "code", "request_id"}`."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from satapi.errors import SatapiError, status_for
from satapi.models import PATTERN_WORDS

log = logging.getLogger("satapi.errors")

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def request_id_of(request: Request) -> str | None:
    """The request's id, set by the request-id middleware."""
    return getattr(request.state, "request_id", None)


def error_body(
    message: str, code: str, request_id: str | None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The envelope every error response carries."""
    body: dict[str, Any] = {
        "success": False,
        "error": message,
        "code": code,
        "request_id": request_id,
    }
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    return body


def error_response(error: SatapiError, request_id: str | None) -> JSONResponse:
    """The HTTP response for a domain error."""
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse(
        error_body(error.message, error.code, request_id, error.extra),
        status_code=status_for(error),
        headers=headers,
    )


def _describe_validation(exc: RequestValidationError, request: Request) -> str:
    errors = exc.errors()
    whole = _whole_body_problem(errors, exc.body, request)
    if whole is not None:
        return whole
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(loc) or "request"
        parts.append(f"{where}: {_in_words(err)}")
    more = len(errors) - 5
    suffix = f" (and {more} more)" if more > 0 else ""
    return "Invalid request: " + "; ".join(parts) + suffix + "."


def _in_words(err: Any) -> str:
    """pydantic's message, with a pattern said as what it expects instead of the expression."""
    ctx = err.get("ctx") or {}
    if err.get("type") == "string_pattern_mismatch":
        pattern = ctx.get("pattern", "")
        return "must be " + PATTERN_WORDS.get(pattern, "in the documented form (see /docs)")
    if err.get("type") == "union_tag_invalid":
        return f"its type must be one of {ctx.get('expected_tags')}, not {ctx.get('tag')!r}"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


def _code(errors: Any) -> str:
    """`invalid_geometry` when every problem is in the `geometry` field, else
    `validation_error`."""
    locs = [tuple(e.get("loc", ()))[:2] for e in errors]
    return (
        "invalid_geometry"
        if locs and all(loc == ("body", "geometry") for loc in locs)
        else ("validation_error")
    )


def _whole_body_problem(errors: Any, body: Any, request: Request) -> str | None:
    """A sentence for a body that is not JSON at all: not sent as JSON, or not parseable."""
    if len(errors) != 1:
        return None
    err = errors[0]
    loc = tuple(err.get("loc", ()))
    if err.get("type") == "json_invalid" and len(loc) == 2 and isinstance(body, str):
        pos = int(loc[1])
        line = body.count("\n", 0, pos) + 1
        column = pos - (body.rfind("\n", 0, pos) + 1) + 1
        what = (err.get("ctx") or {}).get("error", "not valid JSON")
        return f"The body is not valid JSON: {what} at line {line}, column {column}."
    content_type = request.headers.get("content-type", "")
    if loc == ("body",) and err.get("type") in ("model_attributes_type", "dict_type"):
        if "json" not in content_type.lower():
            sent = f"was sent as {content_type!r}" if content_type else "had no Content-Type"
            return (
                "The body must be a JSON object sent with Content-Type: application/json; "
                f"this one {sent}."
            )
        return "The body must be a JSON object ({...}), not another JSON value."
    return None


def add_exception_handlers(app: FastAPI) -> None:
    """Register the handlers that produce the error envelope."""

    @app.exception_handler(SatapiError)
    async def _domain(request: Request, exc: SatapiError) -> JSONResponse:
        return error_response(exc, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": _in_words(e), "type": e.get("type")}
            for e in exc.errors()[:20]
        ]
        return JSONResponse(
            error_body(
                _describe_validation(exc, request),
                _code(exc.errors()),
                request_id_of(request),
                {"details": details},
            ),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        return JSONResponse(
            error_body(message, code, request_id_of(request)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body(
                "Internal server error; the incident was logged.",
                "internal_error",
                request_id_of(request),
            ),
            status_code=500,
        )
