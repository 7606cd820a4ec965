"""Typed events of the analysis streams (`status`, `progress`, `selection`, `image`, `delta`,
`result`, `error`), parsed from httpx-sse's `ServerSentEvent`s.

An event this client does not know (a newer service) becomes an `UnknownEvent`, never an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from satapi.client.errors import SatapiError, ServerError, error_from_envelope
from satapi.models import ImageMeta

R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class StatusEvent:
    """A stage: `queued`, `downloading`, `downloaded`, `analyzing` (`side` on comparisons).
    A download that is retried reports `downloading` again, with `data["attempt"]` and
    `data["attempts"]` (e.g. 2 and 3)."""

    stage: str
    side: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    event_id: str | None = None


@dataclass(frozen=True)
class ProgressEvent:
    """Tiles of a large area arriving: `done` of `total` (`side` on comparisons)."""

    done: int
    total: int
    side: str | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class SelectionEvent:
    """The clearest-date selection: the chosen date and the scored candidates (`side` on
    comparisons). Sent only by services with clearest-date selection."""

    chosen: str | None
    candidates: list[dict[str, Any]]
    side: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    event_id: str | None = None


@dataclass(frozen=True)
class ImageEvent:
    """An image is ready (`side`: `before` or `after` on comparisons)."""

    image: ImageMeta
    side: str | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class DeltaEvent:
    """A piece of the analysis text, as it is written."""

    text: str
    event_id: str | None = None


@dataclass(frozen=True)
class ResultEvent(Generic[R]):
    """The final answer: the same model the non-streaming call returns."""

    result: R
    event_id: str | None = None


@dataclass(frozen=True)
class ErrorEvent:
    """The stream failed after it started; `exception()` is the matching `SatapiError`."""

    code: str
    error: str
    retry_after: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    event_id: str | None = None

    def exception(self) -> SatapiError:
        """The `SatapiError` subclass for this error's code (status None: it came mid-stream)."""
        return error_from_envelope(self.data, status=None, retry_after=self.retry_after)


@dataclass(frozen=True)
class UnknownEvent:
    """An event this client does not know; kept, not fatal."""

    event: str
    data: Any
    event_id: str | None = None


StreamEvent = (
    StatusEvent
    | ProgressEvent
    | SelectionEvent
    | ImageEvent
    | DeltaEvent
    | ResultEvent[R]
    | ErrorEvent
    | UnknownEvent
)


def parse_event(name: str, raw: str, event_id: str | None, result_model: type[R]) -> Any:
    """The typed event for one SSE event (`Any`: a `StreamEvent[R]`; mypy cannot spell it)."""
    try:
        data = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return UnknownEvent(name, raw, event_id)
    try:
        return _typed(name, data, event_id, result_model)
    except (ValidationError, KeyError, TypeError, ValueError) as exc:
        raise ServerError(
            f"The service sent a malformed {name!r} event: {exc}", code="bad_event"
        ) from exc


def _typed(name: str, data: Any, event_id: str | None, result_model: type[R]) -> Any:
    known = {"status", "progress", "selection", "image", "delta", "result", "error"}
    if name not in known or not isinstance(data, dict):
        return UnknownEvent(name, data, event_id)
    side = data.get("side")
    if name == "status":
        return StatusEvent(str(data["stage"]), side, data, event_id)
    if name == "progress":
        return ProgressEvent(int(data["done"]), int(data["total"]), side, event_id)
    if name == "selection":
        return SelectionEvent(
            data.get("chosen"), list(data.get("candidates") or []), side, data, event_id
        )
    if name == "image":
        meta = ImageMeta.model_validate({k: v for k, v in data.items() if k != "side"})
        return ImageEvent(meta, side, event_id)
    if name == "delta":
        return DeltaEvent(str(data["text"]), event_id)
    if name == "result":
        return ResultEvent(result_model.model_validate(data), event_id)
    return _error_event(data, event_id, "The stream failed.")


def _error_event(data: dict[str, Any], event_id: str | None, default: str) -> ErrorEvent:
    retry = data.get("retry_after")
    return ErrorEvent(
        code=str(data.get("code") or "error"),
        error=str(data.get("error") or default),
        retry_after=float(retry) if isinstance(retry, int | float) else None,
        data=data,
        event_id=event_id,
    )


@dataclass(frozen=True)
class JobProgressEvent:
    """A job's state and progress (`done` of `total` steps)."""

    state: str
    done: int
    total: int
    event_id: str | None = None


@dataclass(frozen=True)
class JobResultEvent:
    """The finished job's result: the body its route answers (a dict; validate it with the
    route's response model if you want one)."""

    result: dict[str, Any]
    event_id: str | None = None


JobEvent = JobProgressEvent | JobResultEvent | ErrorEvent | UnknownEvent


def parse_job_event(name: str, raw: str, event_id: str | None) -> JobEvent:
    """The typed event for one SSE event of a job's stream."""
    try:
        data = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return UnknownEvent(name, raw, event_id)
    if not isinstance(data, dict):
        return UnknownEvent(name, data, event_id)
    if name == "progress":
        return JobProgressEvent(
            str(data.get("state")), int(data.get("done", 0)), int(data.get("total", 0)), event_id
        )
    if name == "result":
        return JobResultEvent(data, event_id)
    if name == "error":
        return _error_event(data, event_id, "The job failed.")
    return UnknownEvent(name, data, event_id)
