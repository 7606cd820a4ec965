"""The Claude analyzer: sends downscaled images to the Anthropic Messages API, streams the reply."""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Literal, cast

import anthropic
import httpx2
from anthropic.types import ImageBlockParam, Message, MessageParam, TextBlockParam

from satapi.analyzers.base import (
    AnalysisEvent,
    AnalysisResult,
    AnalysisTask,
    ImageInput,
    TextDelta,
)
from satapi.analyzers.imageprep import PreparedImage, prepare_for_claude
from satapi.analyzers.prompts import (
    comparison_label,
    comparison_text,
    single_image_text,
    system_prompt_for,
)
from satapi.cpu import CpuRunner
from satapi.errors import AIAuthError, AIBusy, AIError, InvalidRequest
from satapi.limits import SlotLimiter

_MediaType = Literal["image/jpeg", "image/png", "image/gif", "image/webp"]

# Seconds to tell clients to wait when the API is busy but does not say for how long.
DEFAULT_BUSY_RETRY_AFTER: Final = 30.0


def _rate_limited(exc: BaseException) -> bool:
    return isinstance(exc, anthropic.APIStatusError) and (
        exc.status_code == 429 or _error_type(exc) == "rate_limit_error"
    )


def _overloaded(exc: BaseException) -> bool:
    # 529 before the stream starts, or an SSE `error` event inside a 200 stream (which the SDK
    # raises as a plain APIStatusError, so only the error type in the body tells).
    return isinstance(exc, anthropic.APIStatusError) and (
        exc.status_code == 529 or _error_type(exc) == "overloaded_error"
    )


def _of(cls: type[BaseException]) -> Callable[[BaseException], bool]:
    return lambda exc: isinstance(exc, cls)


# The table: the first matching row wins, so specific rows come before their base classes.
# Messages are fixed sentences, so neither the key nor any request header can end up in them.
_ERROR_RULES: Final[tuple[tuple[Callable[[BaseException], bool], type[AIError], str], ...]] = (
    (_rate_limited, AIBusy, "The Anthropic API is rate limiting requests; try again later."),
    (_overloaded, AIBusy, "The Anthropic API is overloaded; try again later."),
    (_of(anthropic.AuthenticationError), AIAuthError, "The Anthropic API rejected the API key."),
    (
        _of(anthropic.PermissionDeniedError),
        AIAuthError,
        "The configured Anthropic API key is not allowed to make this request.",
    ),
    (_of(anthropic.APITimeoutError), AIError, "The Anthropic API did not answer in time."),
    (_of(anthropic.APIConnectionError), AIError, "Could not connect to the Anthropic API."),
    (_of(anthropic.APIStatusError), AIError, "The Anthropic API failed"),
    # The SDK does not wrap transport errors raised while a stream is being read.
    (_of(httpx2.TimeoutException), AIError, "The Anthropic API stopped answering mid-response."),
    (_of(httpx2.HTTPError), AIError, "The connection to the Anthropic API broke mid-response."),
)


def map_anthropic_error(exc: BaseException) -> AIError:
    """Translate an Anthropic SDK (or transport) exception into the service's `AIError` tree.

    Rate limits and overload (429, 529, or an `overloaded_error`/`rate_limit_error` body, also
    mid-stream) become `AIBusy` with `retry_after` from the `retry-after` header (whole seconds,
    at least 1) or `DEFAULT_BUSY_RETRY_AFTER`; 401/403 become `AIAuthError`; anything else
    `AIError`. The message never includes the API key or request headers.
    """
    for matches, error_cls, message in _ERROR_RULES:
        if not matches(exc):
            continue
        if isinstance(exc, anthropic.APIStatusError):
            if error_cls is AIBusy:
                return AIBusy(message, retry_after=_retry_after(exc.response.headers))
            if error_cls is AIError:
                return AIError(f"{message} ({_status_summary(exc)}).")
        return error_cls(message)
    return AIError("The Anthropic API returned an unexpected response.")


def make_anthropic_client(
    api_key: str,
    *,
    base_url: str | None = None,
    max_retries: int = 2,
    timeout: float = 120.0,
    http_client: httpx2.AsyncClient | None = None,
) -> anthropic.AsyncAnthropic:
    """Build the SDK client the analyzer uses.

    The SDK retries 408/409/429/5xx itself, `max_retries` times, honouring `retry-after`.
    `timeout` bounds each read (so also the gap between streamed chunks); connecting gets 10 s.
    `base_url=None` means the SDK default (or `ANTHROPIC_BASE_URL`). A given `http_client` is
    closed when the returned client is closed.
    """
    return anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=max_retries,
        timeout=httpx2.Timeout(timeout, connect=10.0),
        http_client=http_client,
    )


class ClaudeAnalyzer:
    """Analyses one image, or compares two, with a Claude model, streaming the text as it comes.

    Consumers that may stop early should close the stream (`contextlib.aclosing`), which closes
    the HTTP response to the API at once instead of when the generator is garbage collected.
    """

    name: str = "claude"

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        model: str,
        cpu: CpuRunner,
        max_tokens: int = 1500,
        max_long_edge: int = 1568,
        max_pixels: int = 1_150_000,
        limiter: SlotLimiter | None = None,
    ) -> None:
        self._client = client
        self._limiter = limiter
        self._model = model
        self._cpu = cpu
        self._max_tokens = max_tokens
        self._max_long_edge = max_long_edge
        self._max_pixels = max_pixels

    @property
    def model(self) -> str:
        """The model requested from the API (the result reports the one that answered)."""
        return self._model

    async def stream(self, task: AnalysisTask) -> AsyncGenerator[AnalysisEvent, None]:
        """Analyse `task`: yield a `TextDelta` per streamed text piece, then the `AnalysisResult`.

        Raises `AIBusy`, `AIAuthError` or `AIError` for API failures (also after some deltas),
        `NotAnImage`/`ImageTooLarge` for images that cannot be prepared.
        """
        request = await self._request(task)
        try:
            # The permit covers the API call only (images are prepared before it) and is held
            # until the reply has been read, however slowly the client consumes it.
            async with self._permit(), self._client.messages.stream(**request) as stream:
                # "text" events come only from `text` blocks, so thinking never leaks out.
                async for event in stream:
                    if event.type == "text" and event.text:
                        yield TextDelta(event.text)
                message = await stream.get_final_message()
        except (anthropic.AnthropicError, httpx2.HTTPError) as exc:
            raise map_anthropic_error(exc) from exc
        yield self._result(message)

    async def complete(self, task: AnalysisTask) -> AnalysisResult:
        """`stream` for a caller that wants only the result: one non-streamed reply, which
        spares the SDK's event parsing (~2.5 ms of CPU per call, bench/RESULTS.md)."""
        request = await self._request(task)
        try:
            async with self._permit():
                # `messages.create(**request)`, with the body encoded here (`json_body`).
                message = await self._client.post(
                    "/v1/messages",
                    cast_to=Message,
                    content=json_body(request),
                    options={"headers": {"Content-Type": "application/json"}},
                )
        except (anthropic.AnthropicError, httpx2.HTTPError) as exc:
            raise map_anthropic_error(exc) from exc
        return self._result(message)

    async def _request(self, task: AnalysisTask) -> dict[str, Any]:
        """The Messages API arguments for `task` (its images prepared off the event loop)."""
        if len(task.images) not in (1, 2):
            raise InvalidRequest(f"an analysis takes one or two images, not {len(task.images)}")
        prepared = await asyncio.gather(*(self._prepare(image) for image in task.images))
        message_param: MessageParam = {"role": "user", "content": _user_content(task, prepared)}
        return {
            "model": self._model,
            "max_tokens": self._max_tokens,
            "system": system_prompt_for(task),
            "messages": [message_param],
        }

    def _result(self, message: Message) -> AnalysisResult:
        text = "".join(block.text for block in message.content if block.type == "text")
        if not text:
            raise AIError(f"Claude returned no text (stop reason: {message.stop_reason}).")
        return AnalysisResult(
            analyzer=self.name,
            model=message.model,
            text=text,
            usage={
                "input_tokens": message.usage.input_tokens,
                "output_tokens": message.usage.output_tokens,
            },
        )

    def _permit(self) -> AbstractAsyncContextManager[float]:
        """A permit of the AI cap (raises `AIBusy` when too many calls wait), or none."""
        return self._limiter.slot() if self._limiter is not None else _no_permit()

    async def _prepare(self, image: ImageInput) -> PreparedImage:
        return await self._cpu.run(
            prepare_for_claude,
            image.data,
            max_long_edge=self._max_long_edge,
            max_pixels=self._max_pixels,
            inside=None if image.region is None else image.region.mask,
        )


@asynccontextmanager
async def _no_permit() -> AsyncIterator[float]:
    yield 0.0


def _user_content(
    task: AnalysisTask, prepared: Sequence[PreparedImage]
) -> list[TextBlockParam | ImageBlockParam]:
    """One user turn: image block(s) first (Claude answers better that way), then the text."""
    if task.is_comparison:
        before, after = task.images
        return [
            _text_block(comparison_label(before, "Before")),
            _image_block(prepared[0]),
            _text_block(comparison_label(after, "After")),
            _image_block(prepared[1]),
            _text_block(comparison_text(before, after, task.prompt)),
        ]
    return [_image_block(prepared[0]), _text_block(single_image_text(task.images[0], task.prompt))]


def _image_block(image: PreparedImage) -> ImageBlockParam:
    media_type = cast(_MediaType, image.media_type)  # prepare_for_claude only makes PNG or JPEG
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": image.base64_data},
    }


def _text_block(text: str) -> TextBlockParam:
    return {"type": "text", "text": text}


def json_body(request: dict[str, Any]) -> bytes:
    """The Messages API request body for `request` (`messages.create`'s arguments), as JSON.

    The same JSON the SDK would send, but each image's base64 data is spliced in as it is rather
    than passed through the JSON encoder: base64 has nothing to escape, and escaping the ~530 KB
    of a 512² PNG cost ~2.3 ms of CPU per call (bench/RESULTS.md). Each image is encoded as a
    marker first; should a marker show up anywhere else (a prompt that contains one), the body
    is encoded whole instead.
    """
    images: list[bytes] = []
    messages = []
    for message in request["messages"]:
        content = message["content"]
        if isinstance(content, list):
            blocks = []
            for block in content:
                source = block.get("source") if block.get("type") == "image" else None
                if isinstance(source, dict) and source.get("type") == "base64":
                    blocks.append({**block, "source": {**source, "data": f"\0image:{len(images)}"}})
                    images.append(source["data"].encode("ascii"))  # base64: ASCII only
                else:
                    blocks.append(block)
            message = {**message, "content": blocks}
        messages.append(message)
    encoded = _JSON.encode({**request, "messages": messages}).encode()
    markers = [b'"\\u0000image:%d"' % n for n in range(len(images))]
    if any(encoded.count(marker) != 1 for marker in markers):
        return _JSON.encode(request).encode()  # a marker elsewhere too: no splicing
    pieces: list[bytes] = []
    for marker, data in zip(markers, images, strict=True):
        head, _, encoded = encoded.partition(marker)
        pieces += (head, b'"', data, b'"')
    pieces.append(encoded)
    return b"".join(pieces)


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _error_type(exc: anthropic.APIStatusError) -> str | None:
    # `.type` comes from `error.type` in the body; read the body too in case it was not parsed.
    kind = exc.type or None
    if kind is None and isinstance(exc.body, dict):
        error = exc.body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            kind = error["type"]
    return str(kind) if kind is not None else None


def _status_summary(exc: anthropic.APIStatusError) -> str:
    # Status, error type and request id identify the failure without echoing anything we sent.
    # Errors inside a stream arrive with the stream's own status (200), which would mislead.
    parts = [f"HTTP {exc.status_code}" if exc.status_code >= 400 else "error event mid-stream"]
    if kind := _error_type(exc):
        parts.append(kind)
    if exc.request_id:
        parts.append(f"request {exc.request_id}")
    return ", ".join(parts)


def _retry_after(headers: httpx2.Headers) -> float:
    """Seconds from `retry-after` (seconds or an HTTP date), rounded up, at least 1."""
    value = headers.get("retry-after")
    seconds: float | None = None
    if value:
        try:
            seconds = float(value)
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                seconds = email.utils.mktime_tz(parsed) - time.time()
    if seconds is None or not math.isfinite(seconds):
        return DEFAULT_BUSY_RETRY_AFTER
    return float(max(1, math.ceil(seconds)))
