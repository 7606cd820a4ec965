"""Observations: what the service reports (requests, downloads, shedding, analyses) as values.

Each observation is a small frozen dataclass; a sink (metrics, logs) implements one
`observe(event)` and picks the events it cares about with `match`. A new observation costs one
class here and one `case` in each sink that wants it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from satapi.errors import Overloaded, SatapiError, UpstreamTimeout, WMSServiceException

DOWNLOAD_OUTCOMES = (
    "ok",
    "cache_hit",
    "shared",
    "wms_exception",
    "timeout",
    "shed",
    "error",
    "cancelled",
)
ANALYSIS_OUTCOMES = ("ok", "cached", "error", "cancelled")

# Fields the request being served adds to its access-log line (set by the access log).
request_notes: ContextVar[dict[str, Any] | None] = ContextVar("satapi_request_notes", default=None)


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Base of every observation."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestFinished(Event):
    """An HTTP request finished (streamed responses: when the last byte was sent)."""

    method: str
    route: str
    status: int
    duration_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class DownloadSettled(Event):
    """An image request was settled: from the store, a shared download, or a download.

    `outcome` is one of `DOWNLOAD_OUTCOMES`. `duration_s` excludes `queue_wait_s`. A failed
    download counts once, however many requests waited for it. `source_url` is redacted.
    """

    provider: str
    layer: str | None
    outcome: str
    duration_s: float
    nbytes: int
    queue_wait_s: float
    source_url: str | None = None
    error: str | None = None
    image_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Shed(Event):
    """A WMS request was refused at once because too many already wait for a permit."""

    provider: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AnalysisFinished(Event):
    """An analysis finished; `outcome` is one of `ANALYSIS_OUTCOMES`."""

    analyzer: str
    model: str | None
    outcome: str
    duration_s: float
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreCallFailed(Event):
    """A call to the shared object store failed.

    `operation` is `get`, `put` or `delete`; `kind` is `refused` (credentials), `no_bucket`,
    `timeout` or `unavailable` (unreachable, or a server error).
    """

    operation: str
    kind: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AiSlotSettled(Event):
    """An AI call asked for a permit of the AI cap: `granted` after `waited_s`, `shed` (503
    `ai_busy` at once, `waited_s` 0) or `cancelled` while it waited."""

    outcome: str
    waited_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class LoopLagSampled(Event):
    """How late the event loop woke the lag sampler (`satapi.observability.looplag`)."""

    lag_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RedisCallFailed(Event):
    """A call to Redis (the fleet's coordination backend) failed.

    `operation`: `acquire`, `acquire_retry`, `release`, `renew`, `stats`, `subscribe`, `ping`,
    `value_get`, `value_set`, `value_delete`.
    """

    operation: str


# Clearest-date selection.
SELECTION_OUTCOMES = ("ok", "cached", "too_cloudy", "error", "cancelled")


@dataclass(frozen=True, kw_only=True, slots=True)
class SelectionFinished(Event):
    """A clearest-date selection ran; `outcome` is one of `SELECTION_OUTCOMES`.

    `candidates` previews were scored (or taken from the cache), `failed` of them could not be
    fetched; `duration_s` covers the previews' downloads and scoring.
    """

    provider: str
    layer: str
    window: str
    outcome: str
    candidates: int
    failed: int
    duration_s: float
    chosen: str | None = None
    error: str | None = None


# OAuth tokens (Sentinel Hub / CDSE).
TOKEN_OUTCOMES = ("ok", "refused", "busy", "error")
TOKEN_REASONS = ("new", "after_401")


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenRequested(Event):
    """A provider's token endpoint was asked for an access token (never carries the token).

    `reason`: `new` (none cached, or the cached one runs out) or `after_401` (the Process API
    refused the cached one); `outcome` is one of `TOKEN_OUTCOMES`; `attempts` counts retries.
    """

    provider: str
    reason: str
    outcome: str
    duration_s: float
    attempts: int = 1
    expires_in_s: float | None = None
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSubmitted(Event):
    """A job was accepted (202) by POST /api/jobs."""

    kind: str


@dataclass(frozen=True, kw_only=True, slots=True)
class JobFinished(Event):
    """A job's run reached a final `state` (succeeded, failed) after `duration_s` of work.

    A cancel is reported by the process that accepted it (`state` cancelled, no duration).
    """

    kind: str
    state: str
    duration_s: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class JobQueueSampled(Event):
    """How many jobs wait in the queue for a worker (sampled by the API processes)."""

    length: int


def download_outcome(exc: BaseException) -> str:
    """The download outcome label for an exception raised while downloading."""
    if isinstance(exc, WMSServiceException):
        return "wms_exception"
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, Overloaded):
        return "shed"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"


def analysis_outcome(exc: BaseException | None) -> str:
    """The analysis outcome label: `ok` without an exception, else `cancelled` or `error`."""
    if exc is None:
        return "ok"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"


def error_code(exc: BaseException | None) -> str | None:
    """The domain error code of `exc` (e.g. `wms_exception`), or its class name."""
    if exc is None:
        return None
    if isinstance(exc, SatapiError):
        return exc.code
    return type(exc).__name__


class Observer(Protocol):
    """Receives the service's observations; implementations must not raise."""

    def observe(self, event: Event) -> None:
        """Take one observation (ignore the kinds of no interest)."""
        ...


class NullObserver:
    """An observer that ignores every event."""

    def observe(self, event: Event) -> None:
        """Ignore `event`."""


class Observers:
    """Fans every event out to several observers; one failing observer does not stop the rest."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = list(observers)

    def observe(self, event: Event) -> None:
        """Forward `event` to each observer."""
        for observer in self.observers:
            try:
                observer.observe(event)
            except Exception:
                logging.getLogger("satapi").exception("observer failed")
