"""Logging: set-up (one line per event, text or JSON, secrets redacted) and the log sink."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from satapi.observability.events import (
    AnalysisFinished,
    DownloadSettled,
    Event,
    SelectionFinished,
    TokenRequested,
    request_notes,
)
from satapi.redaction import redact
from satapi.web.middleware import request_id_var

download_log = logging.getLogger("satapi.wms")
analysis_log = logging.getLogger("satapi.analysis")
selection_log = logging.getLogger("satapi.selection")
token_log = logging.getLogger("satapi.oauth")
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class _Redactor(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            record.msg, record.args = redact(record.getMessage(), self._secrets), None
            for key, value in list(record.__dict__.items()):
                if key not in _RESERVED and isinstance(value, str):
                    record.__dict__[key] = redact(value, self._secrets)
            if record.exc_info and not record.exc_text:
                # Tracebacks can quote URLs and headers: format once here, redacted, and let
                # the formatters print this text instead of formatting the exception again.
                text = logging.Formatter().formatException(record.exc_info)
                record.exc_text = redact(text, self._secrets)
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_text:
        return record.exc_text
    assert record.exc_info is not None
    return formatter.formatException(record.exc_info)


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _RESERVED and not k.startswith("_") and v is not None
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(_extra(record))
        if record.exc_info or record.exc_text:
            data["exc"] = _exception_text(self, record)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        pairs = " ".join(f"{k}={v}" for k, v in _extra(record).items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if pairs:
            line += " " + pairs
        if record.exc_info or record.exc_text:
            line += "\n" + _exception_text(self, record)
        return line


def setup_logging(fmt: str = "text", level: str = "info", secrets: Iterable[str] = ()) -> None:
    """Send satapi's and uvicorn's logs to stderr in one format, with secrets redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Redactor(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # satapi writes its own access line per request; uvicorn's would duplicate it.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)


class LogObserver:
    """Writes one structured log line per download and per analysis (requests: see access_log)."""

    def observe(self, event: Event) -> None:
        """Log a settled download or a finished analysis; other events are not logged here.

        Shedding is logged by the download line (outcome=shed).
        """
        match event:
            case DownloadSettled():
                self._download(event)
            case AnalysisFinished():
                self._analysis(event)
            case SelectionFinished():
                self._selection(event)
            case TokenRequested():
                self._token(event)

    @staticmethod
    def _download(event: DownloadSettled) -> None:
        """A cache hit or a share of another request's download is no download: it is noted on
        the request's own access-log line (`cache`, `image_id`) instead of a line of its own.
        """
        outcome = event.outcome
        cache = {"cache_hit": "hit", "shared": "shared"}.get(outcome, "miss")
        notes = request_notes.get()
        if cache != "miss" and notes is not None:
            notes.setdefault("cache", []).append(cache)
            notes.setdefault("image_id", []).append(event.image_id)
            return
        level = logging.INFO if outcome in ("ok", "cache_hit", "shared") else logging.WARNING
        download_log.log(
            level,
            "download %s",
            outcome,
            extra={
                "event": "download",
                "provider": event.provider,
                "layer": event.layer,
                "cache": cache,
                "outcome": outcome,
                "queue_wait_ms": round(event.queue_wait_s * 1000, 1),
                "duration_ms": round(event.duration_s * 1000, 1),
                "bytes": event.nbytes,
                "error": event.error,
                "image_id": event.image_id,
                "source_url": event.source_url,
            },
        )

    @staticmethod
    def _token(event: TokenRequested) -> None:
        # Never the token or the credentials: only who asked, why, and how it went.
        token_log.log(
            logging.INFO if event.outcome == "ok" else logging.WARNING,
            "oauth token %s",
            event.outcome,
            extra={
                "event": "oauth_token",
                "provider": event.provider,
                "reason": event.reason,
                "outcome": event.outcome,
                "attempts": event.attempts,
                "duration_ms": round(event.duration_s * 1000, 1),
                "expires_in_s": event.expires_in_s,
                "error": event.error,
            },
        )

    @staticmethod
    def _analysis(event: AnalysisFinished) -> None:
        analysis_log.info(
            "analysis %s",
            event.outcome,
            extra={
                "event": "analysis",
                "analyzer": event.analyzer,
                "model": event.model,
                "outcome": event.outcome,
                "duration_ms": round(event.duration_s * 1000, 1),
                "input_tokens": event.input_tokens,
                "output_tokens": event.output_tokens,
            },
        )

    @staticmethod
    def _selection(event: SelectionFinished) -> None:
        level = logging.INFO if event.outcome in ("ok", "cached", "too_cloudy") else logging.WARNING
        selection_log.log(
            level,
            "selection %s",
            event.outcome,
            extra={
                "event": "selection",
                "provider": event.provider,
                "layer": event.layer,
                "window": event.window,
                "outcome": event.outcome,
                "chosen": event.chosen,
                "candidates": event.candidates,
                "failed": event.failed,
                "duration_ms": round(event.duration_s * 1000, 1),
                "error": event.error,
            },
        )
