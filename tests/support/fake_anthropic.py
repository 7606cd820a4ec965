"""A scriptable fake of the Anthropic Messages API, served by uvicorn on 127.0.0.1 in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn

# ASGI types are kept loose: this is test support, not production code.
Scope = dict[str, Any]


@dataclass
class Reply:
    """What the fake answers to one request.

    `status` 200 gives a message (JSON, or SSE when the request has `"stream": true`) made of an
    optional `thinking` block and a text block whose deltas are `text` (in order, `delay` seconds
    apart; a non-streamed answer comes after the same total delay). Any other status gives an
    error body `{"type": "error", "error": {...}}` with `error_type`, plus `headers` (e.g.
    `retry-after`). `error_after=N` sends an SSE
    `event: error` of `stream_error_type` after N text deltas; `drop_after=N` kills the connection
    after N text deltas. `hold`, when given, keeps the request waiting until the event is set
    (a test then decides when the call ends, whatever the machine's load).
    """

    text: Sequence[str] = ("The image shows ", "fields, ", "a river and a small town.")
    thinking: str | None = None
    delay: float = 0.0
    status: int = 200
    error_type: str = "api_error"
    error_message: str = "Internal server error"
    headers: Mapping[str, str] = field(default_factory=dict)
    error_after: int | None = None
    stream_error_type: str = "overloaded_error"
    drop_after: int | None = None
    model: str = "claude-fake-1"
    input_tokens: int = 1234
    output_tokens: int | None = None  # None: one per text chunk
    hold: threading.Event | None = field(default=None, compare=False)

    @classmethod
    def error(
        cls,
        status: int,
        error_type: str,
        message: str = "error from the fake Anthropic API",
        *,
        retry_after: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """An HTTP error answer, e.g. `Reply.error(429, "rate_limit_error", retry_after="7")`."""
        all_headers = dict(headers or {})
        if retry_after is not None:
            all_headers["retry-after"] = retry_after
        return cls(status=status, error_type=error_type, error_message=message, headers=all_headers)


@dataclass
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    json: Any
    peer: str = ""  # the client's host:port: one per connection it used


@dataclass(frozen=True)
class Event:
    """One server-sent event of a stream."""

    name: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Sleep:
    """A pause in a stream."""

    seconds: float


@dataclass(frozen=True)
class Drop:
    """The connection breaks here."""


def message_json(reply: Reply, message_id: str = "msg_fake") -> dict[str, Any]:
    """The non-streaming Messages API answer for `reply` (thinking block first, if any)."""
    content: list[dict[str, Any]] = []
    if reply.thinking is not None:
        content.append({"type": "thinking", "thinking": reply.thinking, "signature": "sig"})
    content.append({"type": "text", "text": "".join(reply.text), "citations": None})
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": _out_tokens(reply)},
    }


def stream_steps(reply: Reply, message_id: str = "msg_fake") -> Iterator[Event | Sleep | Drop]:
    """The streaming answer for `reply`, in the API's event order, with its pauses and faults."""
    start = {**message_json(reply, message_id), "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": reply.input_tokens, "output_tokens": 1}
    yield Event("message_start", {"type": "message_start", "message": start})
    yield Event("ping", {"type": "ping"})
    index = 0
    if reply.thinking is not None:
        block = {"type": "thinking", "thinking": "", "signature": ""}
        yield _block_start(index, block)
        yield _block_delta(index, {"type": "thinking_delta", "thinking": reply.thinking})
        yield _block_delta(index, {"type": "signature_delta", "signature": "sig"})
        yield Event("content_block_stop", {"type": "content_block_stop", "index": index})
        index += 1
    yield _block_start(index, {"type": "text", "text": "", "citations": None})
    for n, chunk in enumerate(reply.text):
        if reply.error_after is not None and n == reply.error_after:
            yield Event("error", _error_body(reply.stream_error_type, "Overloaded"))
            return
        if reply.drop_after is not None and n == reply.drop_after:
            yield Drop()
            return
        if n and reply.delay:
            yield Sleep(reply.delay)
        yield _block_delta(index, {"type": "text_delta", "text": chunk})
    yield Event("content_block_stop", {"type": "content_block_stop", "index": index})
    yield Event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": _out_tokens(reply)},
        },
    )
    yield Event("message_stop", {"type": "message_stop"})


def sse_bytes(reply: Reply) -> bytes:
    """The whole SSE body for `reply` at once (pauses ignored), e.g. for an httpx2 MockTransport.

    Raises ValueError for a reply with `drop_after`, which a finished body cannot express.
    """
    parts = []
    for step in stream_steps(reply):
        if isinstance(step, Drop):
            raise ValueError("sse_bytes cannot express a dropped connection")
        if isinstance(step, Event):
            parts.append(f"event: {step.name}\ndata: {json.dumps(step.data)}\n\n")
    return "".join(parts).encode()


def error_json(reply: Reply, request_id: str | None = None) -> dict[str, Any]:
    """The JSON error body the API sends for an error `reply`."""
    return _error_body(reply.error_type, reply.error_message, request_id)


def _block_start(index: int, block: dict[str, Any]) -> Event:
    return Event(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def _block_delta(index: int, delta: dict[str, Any]) -> Event:
    return Event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


class _Dropped(Exception):
    """Raised inside the app to make uvicorn abort the connection mid-response."""


class FakeAnthropic:
    """The fake server. Use `start()`/`stop()` or `with FakeAnthropic() as fake:`.

    Point the SDK at `fake.base_url`; script answers with `fake.script(Reply(...), ...)` (used in
    order, the last one repeating; the default is one plain `Reply()`); inspect `fake.requests`.
    It runs on its own event loop in its own thread, so sync and async tests can both use it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0  # streams the client closed before the end
        self.in_flight = 0  # /v1/messages requests being answered now
        self.max_in_flight = 0  # the most answered at once since the last reset
        self._replies: list[Reply] = [Reply()]

    # --- control ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The URL to give the SDK as `base_url`."""
        if not self._port:
            raise RuntimeError("FakeAnthropic is not running")
        return f"http://127.0.0.1:{self._port}"

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with `replies`, in order; the last one then repeats."""
        if not replies:
            raise ValueError("script() needs at least one Reply")
        with self._lock:
            self._replies = list(replies)

    def reset(self) -> None:
        """Forget recorded requests and disconnects, and go back to the default reply."""
        with self._lock:
            self.requests = []
            self.disconnects = 0
            self.max_in_flight = self.in_flight
            self._replies = [Reply()]

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        """Poll `predicate()` (called without the lock) until true or `timeout`; blocks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())

    async def wait_for_async(self, predicate: Any, timeout: float = 5.0) -> bool:
        """Like `wait_for`, without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.01)
        return bool(predicate())

    def start(self) -> FakeAnthropic:
        """Start serving on a free port of 127.0.0.1; returns self once it accepts connections."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self,
            http="h11",
            loop="asyncio",
            ws="none",
            lifespan="off",
            log_config=None,  # leave the test process's logging alone
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        _install_drop_log_filter()
        self._server = server
        # uvicorn closes the socket itself when it shuts down.
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-anthropic", daemon=True
        )
        self._thread.start()
        if not self.wait_for(lambda: server.started or not self._thread_alive(), timeout=10):
            raise RuntimeError("FakeAnthropic did not start")
        if not server.started:
            sock.close()
            raise RuntimeError("FakeAnthropic failed to start")
        return self

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = None
        self._thread = None
        self._port = 0

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._replies.pop(0) if len(self._replies) > 1 else self._replies[0]

    # --- the ASGI app ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = body.decode("utf-8", "replace")
        with self._lock:
            client = scope.get("client") or ("", 0)
            peer = f"{client[0]}:{client[1]}"
            self.requests.append(
                RecordedRequest(scope["method"], scope["path"], headers, payload, peer)
            )

        if scope["method"] != "POST" or scope["path"] != "/v1/messages":
            await self._send_json(send, 404, _error_body("not_found_error", "Not found"))
            return
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._answer(payload, receive, send)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _answer(self, payload: Any, receive: Any, send: Any) -> None:
        reply = self._next_reply()
        request_id = f"req_fake_{next(self._ids)}"
        while reply.hold is not None and not reply.hold.is_set():
            await asyncio.sleep(0.01)
        if reply.status != 200:
            await self._send_json(
                send,
                reply.status,
                error_json(reply, request_id),
                {"request-id": request_id, **reply.headers},
            )
        elif isinstance(payload, dict) and payload.get("stream"):
            await self._stream(reply, request_id, receive, send)
        else:
            # A whole (non-streamed) answer takes as long as the streamed one would.
            if reply.delay and len(reply.text) > 1:
                await asyncio.sleep(reply.delay * (len(reply.text) - 1))
            await self._send_json(
                send,
                200,
                message_json(reply, f"msg_fake_{next(self._ids)}"),
                {"request-id": request_id},
            )

    async def _send_json(
        self, send: Any, status: int, body: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        raw_headers = [(b"content-type", b"application/json")]
        raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": data})

    async def _stream(self, reply: Reply, request_id: str, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"request-id", request_id.encode()),
                    *((k.encode(), v.encode()) for k, v in reply.headers.items()),
                ],
            }
        )
        # After the body is read, `receive()` only returns once the client disconnects (or the
        # response is complete), so a pending receive tells us when the client has gone.
        gone = asyncio.ensure_future(_wait_for_disconnect(receive))

        async def event(name: str, data: dict[str, Any]) -> None:
            if gone.done():
                raise _ClientGone
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        try:
            for step in stream_steps(reply, f"msg_fake_{next(self._ids)}"):
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Drop):
                    raise _Dropped("fake connection drop")
                else:
                    await event(step.name, step.data)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except _ClientGone:
            with self._lock:
                self.disconnects += 1
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone


class _DropFilter(logging.Filter):
    """Hides uvicorn's "Exception in ASGI application" report for deliberate drops."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Dropped))


def _install_drop_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropFilter) for f in logger.filters):
        logger.addFilter(_DropFilter())


async def _wait_for_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _ClientGone(Exception):
    """The client closed the connection while we were still streaming."""


def _out_tokens(reply: Reply) -> int:
    return reply.output_tokens if reply.output_tokens is not None else len(reply.text)


def _error_body(error_type: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body
