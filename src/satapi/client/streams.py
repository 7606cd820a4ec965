"""`AnalysisStream`: an open SSE analysis stream, read as typed events.

The events are parsed by `httpx2.EventSource`, which is httpx-sse's code merged into httpx2 (the
`httpx_sse` package itself does `import httpx`, which a satapi install does not otherwise have).

Used like the anthropic SDK's streams::

    async with client.analyze_stream(bbox=[10, 45, 12, 46]) as stream:
        async for text in stream.text_stream:
            print(text, end="")
        result = await stream.final()
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Generic, Self, cast

import httpx2

from satapi.client.errors import APIConnectionError, SatapiError, ServerError
from satapi.client.events import DeltaEvent, ErrorEvent, R, ResultEvent, parse_event

# Opens the response (retrying 503s as the client's other calls do); the stack closes it.
Opener = Callable[[AsyncExitStack], Awaitable[httpx2.Response]]


class AnalysisStream(Generic[R]):
    """One analysis stream. Iterate it for typed events (`StatusEvent`, `SelectionEvent`,
    `ImageEvent`, `DeltaEvent`, `ResultEvent`, `ErrorEvent`, `UnknownEvent`), or read
    `text_stream` for the text only; `await final()` returns the result model (or raises the
    stream's error as a `SatapiError`). The events can be read once."""

    def __init__(self, opener: Opener, result_model: type[R]) -> None:
        self._opener = opener
        self._result_model = result_model
        self._stack: AsyncExitStack | None = None
        self._events: AsyncIterator[Any] | None = None
        self.response: httpx2.Response | None = None
        self.result: R | None = None
        self.error: ErrorEvent | None = None
        self.text = ""  # the text of every delta read so far

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        try:
            self.response = await self._opener(stack)
            content_type = self.response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raise ServerError(
                    f"Expected an event stream, got {content_type or 'no content type'}.",
                    code="bad_response",
                    status=self.response.status_code,
                    request_id=self.response.headers.get("x-request-id"),
                )
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._events = self._read(self.response)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (leaving early cancels the work on the service)."""
        if self._events is not None:
            await cast(Any, self._events).aclose()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    @property
    def request_id(self) -> str | None:
        """The service's id for this request (`X-Request-ID`)."""
        return None if self.response is None else self.response.headers.get("x-request-id")

    async def _read(self, response: httpx2.Response) -> AsyncIterator[Any]:
        try:
            async for sse in httpx2.EventSource(response):
                event = parse_event(sse.event, sse.data, sse.id or None, self._result_model)
                if isinstance(event, DeltaEvent):
                    self.text += event.text
                elif isinstance(event, ResultEvent):
                    self.result = event.result
                elif isinstance(event, ErrorEvent):
                    self.error = event
                yield event
        except httpx2.TransportError as exc:
            raise APIConnectionError(
                f"The event stream broke: {exc or type(exc).__name__}.",
                code="connection_error",
                request_id=self.request_id,
            ) from exc

    def __aiter__(self) -> AsyncIterator[Any]:
        """The typed events, in order (each a `StreamEvent[R]`)."""
        if self._events is None:
            raise RuntimeError("use the stream inside `async with`")
        return self._events

    @property
    def text_stream(self) -> AsyncIterator[str]:
        """Only the analysis text, piece by piece, as it arrives."""
        return self._texts()

    async def _texts(self) -> AsyncIterator[str]:
        async for event in self:
            if isinstance(event, DeltaEvent):
                yield event.text

    async def final(self) -> R:
        """Read what is left and return the result; raise the `error` event as a SatapiError."""
        if self._events is not None:
            async for _ in self._events:
                pass
        if self.error is not None:
            raise self._with_request_id(self.error.exception())
        if self.result is None:
            raise ServerError(
                "The stream ended without a result.",
                code="stream_ended",
                request_id=self.request_id,
            )
        return self.result

    def _with_request_id(self, error: SatapiError) -> SatapiError:
        error.request_id = error.request_id or self.request_id
        return error
