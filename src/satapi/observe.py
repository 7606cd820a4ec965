"""Observation hooks: the events the service reports (downloads, shedding, analyses, requests)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from contextvars import ContextVar
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

log = logging.getLogger("satapi.wms")
analysis_log = logging.getLogger("satapi.analysis")

# Fields the request being served adds to its access-log line (set by the access log).
request_notes: ContextVar[dict[str, Any] | None] = ContextVar("satapi_request_notes", default=None)


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
    """Receives the service's operational events; implementations must not raise."""

    def request(self, *, method: str, route: str, status: int, duration_s: float) -> None:
        """An HTTP request finished (streamed responses: when the last byte was sent)."""
        ...

    def download(
        self,
        *,
        provider: str,
        layer: str | None,
        outcome: str,
        duration_s: float,
        nbytes: int,
        queue_wait_s: float,
        source_url: str | None = None,
        error: str | None = None,
        image_id: str | None = None,
    ) -> None:
        """An image request was settled: from the store, a shared download, or a download.

        `outcome` is one of `DOWNLOAD_OUTCOMES`. `duration_s` excludes `queue_wait_s`.
        A failed download counts once, however many requests waited for it.
        """
        ...

    def shed(self, provider: str) -> None:
        """A WMS request was refused at once because too many already wait for a permit."""
        ...

    def analysis(
        self,
        *,
        analyzer: str,
        model: str | None,
        outcome: str,
        duration_s: float,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """An analysis finished; `outcome` is one of `ANALYSIS_OUTCOMES`."""
        ...


class NullObserver:
    """An observer that ignores every event."""

    def request(self, *, method: str, route: str, status: int, duration_s: float) -> None:
        """Ignore a finished request."""

    def download(
        self,
        *,
        provider: str,
        layer: str | None,
        outcome: str,
        duration_s: float,
        nbytes: int,
        queue_wait_s: float,
        source_url: str | None = None,
        error: str | None = None,
        image_id: str | None = None,
    ) -> None:
        """Ignore a settled image request."""

    def shed(self, provider: str) -> None:
        """Ignore a shed request."""

    def analysis(
        self,
        *,
        analyzer: str,
        model: str | None,
        outcome: str,
        duration_s: float,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """Ignore a finished analysis."""


class LogObserver(NullObserver):
    """Writes one structured log line per download and per analysis (requests: see access_log)."""

    def download(
        self,
        *,
        provider: str,
        layer: str | None,
        outcome: str,
        duration_s: float,
        nbytes: int,
        queue_wait_s: float,
        source_url: str | None = None,
        error: str | None = None,
        image_id: str | None = None,
    ) -> None:
        """Log a settled image request; the URL is the redacted one the caller passes.

        A cache hit or a share of another request's download is no download: it is noted on
        the request's own access-log line (`cache`, `image_id`) instead of a line of its own.
        """
        cache = {"cache_hit": "hit", "shared": "shared"}.get(outcome, "miss")
        notes = request_notes.get()
        if cache != "miss" and notes is not None:
            notes.setdefault("cache", []).append(cache)
            notes.setdefault("image_id", []).append(image_id)
            return
        level = logging.INFO if outcome in ("ok", "cache_hit", "shared") else logging.WARNING
        log.log(
            level,
            "download %s",
            outcome,
            extra={
                "event": "download",
                "provider": provider,
                "layer": layer,
                "cache": cache,
                "outcome": outcome,
                "queue_wait_ms": round(queue_wait_s * 1000, 1),
                "duration_ms": round(duration_s * 1000, 1),
                "bytes": nbytes,
                "error": error,
                "image_id": image_id,
                "source_url": source_url,
            },
        )

    def shed(self, provider: str) -> None:
        """Shedding is logged by the download line (outcome=shed); nothing more here."""

    def analysis(
        self,
        *,
        analyzer: str,
        model: str | None,
        outcome: str,
        duration_s: float,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """Log a finished analysis with its token use."""
        analysis_log.info(
            "analysis %s",
            outcome,
            extra={
                "event": "analysis",
                "analyzer": analyzer,
                "model": model,
                "outcome": outcome,
                "duration_ms": round(duration_s * 1000, 1),
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
            },
        )


class Observers:
    """Fans every event out to several observers; one failing observer does not stop the rest."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self._observers = list(observers)

    def request(self, *, method: str, route: str, status: int, duration_s: float) -> None:
        """Forward a finished request."""
        for observer in self._observers:
            try:
                observer.request(method=method, route=route, status=status, duration_s=duration_s)
            except Exception:
                logging.getLogger("satapi").exception("observer failed")

    def download(
        self,
        *,
        provider: str,
        layer: str | None,
        outcome: str,
        duration_s: float,
        nbytes: int,
        queue_wait_s: float,
        source_url: str | None = None,
        error: str | None = None,
        image_id: str | None = None,
    ) -> None:
        """Forward a settled image request."""
        for observer in self._observers:
            try:
                observer.download(
                    provider=provider,
                    layer=layer,
                    outcome=outcome,
                    duration_s=duration_s,
                    nbytes=nbytes,
                    queue_wait_s=queue_wait_s,
                    source_url=source_url,
                    error=error,
                    image_id=image_id,
                )
            except Exception:
                logging.getLogger("satapi").exception("observer failed")

    def shed(self, provider: str) -> None:
        """Forward a shed request."""
        for observer in self._observers:
            try:
                observer.shed(provider)
            except Exception:
                logging.getLogger("satapi").exception("observer failed")

    def analysis(
        self,
        *,
        analyzer: str,
        model: str | None,
        outcome: str,
        duration_s: float,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """Forward a finished analysis."""
        for observer in self._observers:
            try:
                observer.analysis(
                    analyzer=analyzer,
                    model=model,
                    outcome=outcome,
                    duration_s=duration_s,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                )
            except Exception:
                logging.getLogger("satapi").exception("observer failed")
