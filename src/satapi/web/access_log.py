"""Plain ASGI middleware: one structured access-log line and the HTTP metrics per request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Any

from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from satapi.observability.events import NullObserver, Observer, RequestFinished, request_notes
from satapi.web.middleware import CLIENT_CLOSED

log = logging.getLogger("satapi.access")

UNMATCHED = "<unmatched>"
# Probes and scrapes arrive every few seconds; they are logged at DEBUG unless they fail.
QUIET_ROUTES = frozenset({"/metrics", "/healthz", "/readyz"})
# nginx's "client closed request": the client went away before the response started.
CLIENT_CLOSED_STATUS = 499


def route_template(scope: Scope, original: Scope | None = None) -> str:
    """The path template that served the request (`/api/images/{image_id}`), or `<unmatched>`.

    FastAPI puts the matched route in the scope; mounts (static files) are found by matching
    `original`, the scope as it was before the app changed it.
    """
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    app = scope.get("app")
    routes = getattr(getattr(app, "router", None), "routes", None)
    if original is None or not routes:
        return UNMATCHED
    partial: str | None = None
    for candidate in routes:
        match, _ = candidate.matches(original)
        template = _template_of(candidate)
        if match is Match.FULL:
            return template
        if match is Match.PARTIAL and partial is None:
            partial = template
    return partial or UNMATCHED


def _is_cancel(error: BaseException) -> bool:
    return isinstance(error, asyncio.CancelledError)


def _template_of(route: Any) -> str:
    if isinstance(route, Mount):
        return f"{route.path}/{{path}}"
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class AccessLogMiddleware:
    """Logs one line per HTTP request when its response is complete, and reports it.

    Streaming responses (images, server-sent events) are logged when the last byte has gone, with
    their whole duration; `ttfb_ms` says when the response started. The line carries the route
    template, never the query string. A request whose client went away before the response
    started is logged (and counted) as 499, like nginx does; an exception before the response
    started is a 500.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        observer: Observer | None = None,
        quiet_routes: Collection[str] = QUIET_ROUTES,
    ) -> None:
        self.app = app
        self.observer: Observer = observer if observer is not None else NullObserver()
        self.quiet_routes = frozenset(quiet_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        original = dict(scope)
        started = time.perf_counter()
        status = 0
        first_byte: float | None = None
        sent = 0

        async def send_and_watch(message: Message) -> None:
            nonlocal status, first_byte, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
                first_byte = time.perf_counter()
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        error: BaseException | None = None
        notes: dict[str, Any] = {}
        token = request_notes.set(notes)
        try:
            await self.app(scope, receive, send_and_watch)
        except BaseException as exc:
            error = exc
            raise
        finally:
            request_notes.reset(token)
            self._finish(scope, original, started, status, first_byte, sent, error, notes)

    def _finish(
        self,
        scope: Scope,
        original: Scope,
        started: float,
        status: int,
        first_byte: float | None,
        sent: int,
        error: BaseException | None,
        notes: dict[str, Any],
    ) -> None:
        duration = time.perf_counter() - started
        state = scope.get("state") or {}
        if not status:
            # No response started: the client left first (its request was cancelled), or an
            # exception that becomes a 500 further out, even if the client left meanwhile.
            left = state.get(CLIENT_CLOSED) and (error is None or _is_cancel(error))
            status = CLIENT_CLOSED_STATUS if left else 500
        route = route_template(scope, original)
        method = str(scope.get("method", ""))
        self.observer.observe(
            RequestFinished(method=method, route=route, status=status, duration_s=duration)
        )
        client = scope.get("client")
        if route in self.quiet_routes and status < 400:
            level = logging.DEBUG
        else:
            level = logging.WARNING if status >= 500 else logging.INFO
        if not log.isEnabledFor(level):
            return
        path = str(scope.get("path", ""))
        log.log(
            level,
            "%s %s %d",
            method,
            path,
            status,
            extra={
                "event": "request",
                "request_id": state.get("request_id"),
                "method": method,
                "route": route,
                "path": path,
                "status": status,
                "duration_ms": round(duration * 1000, 1),
                "ttfb_ms": round((first_byte - started) * 1000, 1) if first_byte else None,
                "bytes": sent,
                "client": client[0] if client else None,
                "error": type(error).__name__ if error is not None else None,
                # Images served without a download of their own: "hit", "shared" (per image).
                **{key: ",".join(map(str, values)) for key, values in notes.items()},
            },
        )
