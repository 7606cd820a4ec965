"""Plain ASGI middleware: request ids, the request body size limit, the request deadline."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Sequence
from contextvars import ContextVar

from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from satapi.errors import Unauthorized
from satapi.web.auth import bearer_token, check_api_key

request_id_var: ContextVar[str | None] = ContextVar("satapi_request_id", default=None)
# Set in the request's scope state when the client went away before its answer was complete
# (the access log then says 499 for a response that never started, as nginx does).
CLIENT_CLOSED = "client_closed"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with the JSON error envelope from plain ASGI code."""
    body = json.dumps(
        {
            "success": False,
            "error": message,
            "code": code,
            "request_id": scope.get("state", {}).get("request_id"),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    """Takes `X-Request-ID` from the request (or makes one) and echoes it on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _SAFE_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Reads the (small) request body first: over `max_bytes` it is refused with 413.

    With the body read, the request runs while the connection is watched: when the client goes
    away before the answer is complete, the request is cancelled, and with it its download
    (unless other requests share it), so no WMS permit is held for nobody.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, scope: Scope, send: Send) -> None:
        message = f"The request body is larger than {self.max_bytes} bytes."
        await send_error(scope, send, 413, "payload_too_large", message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(scope, send)
                    return
        # Bodies are small JSON documents: read the whole body (up to the limit) before the app
        # sees it, so an oversized chunked body is refused with 413 like a declared one.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                scope.setdefault("state", {})[CLIENT_CLOSED] = True
                return
            body = message.get("body", b"")
            received += len(body)
            if received > self.max_bytes:
                await self._reject(scope, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await _cancel_on_disconnect(self.app, scope, replay, send, receive)


# A request still unanswered after this long gets a task that watches for its client leaving.
# Most requests (/healthz, cache hits, metadata) are answered sooner and never pay for one
# (creating, running and cancelling it: ~45 µs, a third of a /healthz); a client that leaves
# earlier is noticed when the watcher starts.
WATCH_AFTER_S = 0.05


async def _cancel_on_disconnect(
    app: ASGIApp, scope: Scope, app_receive: Receive, send: Send, client_receive: Receive
) -> None:
    # The request runs in this task; one watcher task, started after WATCH_AFTER_S, cancels it
    # when the client goes away before its answer is complete. (A second task for the handler,
    # `asyncio.wait` and a gather cost every request ~7 % of the event loop's time.)
    task = asyncio.current_task()
    assert task is not None
    finished = running = client_left = False
    watcher: asyncio.Future[None] | None = None

    async def tracking_send(message: Message) -> None:
        nonlocal finished
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finished = True
        await send(message)

    async def watch() -> None:
        nonlocal client_left
        while (await client_receive())["type"] != "http.disconnect":
            pass
        if running and not finished:
            client_left = True
            scope.setdefault("state", {})[CLIENT_CLOSED] = True
            task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        if running and not finished:
            watcher = asyncio.ensure_future(watch())

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
    running = True
    try:
        await app(scope, app_receive, tracking_send)
    except asyncio.CancelledError:
        # Our own cancellation (e.g. the server's shutdown) must go on; the one caused by the
        # client leaving ends here.
        if client_left and task.uncancel() == 0:
            return
        raise
    else:
        if client_left:  # the app swallowed the cancellation: take it back all the same
            task.uncancel()
    finally:
        running = False
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


class DeadlineMiddleware:
    """Gives every HTTP request a deadline of `seconds`.

    A request still without a response at the deadline is cancelled and answered 504
    (`request_timeout`); one whose response already started (a stream) is cancelled and closed.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with asyncio.timeout(self.seconds):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if started:
                return
            message = f"The request did not complete within {self.seconds:g} s."
            await send_error(scope, send, 504, "request_timeout", message)


class ApiKeyMiddleware:
    """When API keys are configured, refuses `/api` requests without a valid one (401).

    It runs before the body is read or validated, so an unauthenticated client learns nothing
    about the request's validity. CORS preflights pass (the CORS middleware answers them).
    """

    def __init__(self, app: ASGIApp, keys: Sequence[SecretStr]) -> None:
        self.app = app
        self.keys = list(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or not self.keys
            or not (path == "/api" or path.startswith("/api/"))
            or scope.get("method") == "OPTIONS"
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            check_api_key(
                bearer_token(headers.get("authorization")), headers.get("x-api-key"), self.keys
            )
        except Unauthorized as exc:
            await send_error(
                scope, send, 401, exc.code, exc.message, [(b"www-authenticate", b"Bearer")]
            )
            return
        await self.app(scope, receive, send)
