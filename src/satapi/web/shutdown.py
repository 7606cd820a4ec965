"""Answers during shutdown: `/readyz` turns 503 at once, cut-off requests get the envelope.

On SIGTERM the server (`satapi.cli.SatapiServer`) marks the process as shutting down before
uvicorn stops accepting connections. When `--graceful-timeout` runs out, uvicorn cancels the
requests still running, and would answer them with a plain-text 500. `ShutdownMiddleware`
catches that cancellation and answers instead: 503 `shutting_down` with `Retry-After` when
no response has started, and a final `error` event for a server-sent event stream. (A plain
body already under way, e.g. image bytes, cannot be turned into an error: it is cut off.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from satapi.web.middleware import send_error

log = logging.getLogger("satapi")

RETRY_AFTER_S = 5  # what cut-off clients are told: by then another instance (or this one) serves
SHUTDOWN_CODE = "shutting_down"
SHUTDOWN_MESSAGE = "The server is shutting down; the request was cut off. Try again."


class ShutdownState:
    """Whether this process is shutting down (set by the server on SIGTERM/SIGINT)."""

    def __init__(self) -> None:
        self.since: float | None = None

    @property
    def draining(self) -> bool:
        """True once shutdown has begun."""
        return self.since is not None

    def begin(self) -> None:
        """Mark the start of the shutdown (idempotent; safe from a signal handler)."""
        if self.since is None:
            self.since = time.monotonic()


# The process's own state: the server that runs the app and the app it runs share it.
process_shutdown = ShutdownState()


def sse_error_event(retry_after_s: int = RETRY_AFTER_S) -> bytes:
    """The final `error` event of a stream cut off by the shutdown (as `EventStream.error`)."""
    data = {"code": SHUTDOWN_CODE, "error": SHUTDOWN_MESSAGE, "retry_after": retry_after_s}
    return f"event: error\ndata: {json.dumps(data)}\nretry: {retry_after_s * 1000}\n\n".encode()


class ShutdownMiddleware:
    """Turns the shutdown's cancellation of a request into a proper answer (see the module)."""

    def __init__(self, app: ASGIApp, *, state: ShutdownState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = stream = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, finished, stream
            if message["type"] == "http.response.start":
                started = True
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        stream = value.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not self.state.draining or finished or (started and not stream):
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # answered below: the cancellation ends here
            if not started:
                headers = [
                    (b"retry-after", str(RETRY_AFTER_S).encode()),
                    (b"connection", b"close"),
                ]
                await send_error(scope, send, 503, SHUTDOWN_CODE, SHUTDOWN_MESSAGE, headers)
            else:
                body = sse_error_event()
                await send({"type": "http.response.body", "body": body, "more_body": False})


def watch_signals(state: ShutdownState, *, delay_s: float = 0.0) -> Callable[[], None]:
    """Mark `state` the moment SIGTERM or SIGINT arrives; returns the function that undoes it.

    Called from the app's start-up, when uvicorn's own handlers are installed (in every worker
    process): ours runs first and then hands the signal to uvicorn's. With `delay_s`, uvicorn
    hears of the first SIGTERM only that much later: meanwhile the server keeps serving and
    `/readyz` says 503, so a load balancer stops sending before connections are refused.
    Does nothing outside the main thread (signal handlers can only be set there).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handle(sig: int, frame: FrameType | None) -> None:
        first = not state.draining
        state.begin()
        before = previous[signal.Signals(sig)]
        if not callable(before):  # no server handler (SIG_DFL): behave as if we weren't here
            signal.signal(sig, before)
            signal.raise_signal(sig)
            return
        if first and delay_s > 0 and sig == signal.SIGTERM:
            log.info("shutting down in %g s; /readyz answers 503 meanwhile", delay_s)
            loop.call_soon_threadsafe(loop.call_later, delay_s, before, sig, None)
            return
        before(sig, frame)

    for sig in previous:
        signal.signal(sig, handle)

    def undo() -> None:
        for sig, before in previous.items():
            if signal.getsignal(sig) is handle:
                signal.signal(sig, before)

    return undo
