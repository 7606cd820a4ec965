"""A typed async Python client for satapi: `SatapiClient`, its stream events and its errors.

Needs only httpx2, pydantic and httpx-sse: it imports none of the server's modules.
"""

from __future__ import annotations

from satapi.client.api import DEFAULT_URL, SatapiClient
from satapi.client.errors import (
    APIConnectionError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    RequestTimeoutError,
    SatapiError,
    ServerError,
    UpstreamError,
    UpstreamTimeoutError,
)
from satapi.client.events import (
    DeltaEvent,
    ErrorEvent,
    ImageEvent,
    ProgressEvent,
    ResultEvent,
    SelectionEvent,
    StatusEvent,
    StreamEvent,
    UnknownEvent,
)
from satapi.client.streams import AnalysisStream

__all__ = [
    "DEFAULT_URL",
    "APIConnectionError",
    "AnalysisStream",
    "AuthenticationError",
    "DeltaEvent",
    "ErrorEvent",
    "ImageEvent",
    "InvalidRequestError",
    "NotFoundError",
    "OverloadedError",
    "ProgressEvent",
    "RequestTimeoutError",
    "ResultEvent",
    "SatapiClient",
    "SatapiError",
    "SelectionEvent",
    "ServerError",
    "StatusEvent",
    "StreamEvent",
    "UnknownEvent",
    "UpstreamError",
    "UpstreamTimeoutError",
]
