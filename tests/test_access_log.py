"""Access and download log lines: one per request and per download, JSON or text, no secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from xml.sax.saxutils import escape

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from satapi.app import create_app
from satapi.config import Settings
from satapi.observability.events import Event, RequestFinished
from satapi.observability.logs import setup_logging
from satapi.web.access_log import AccessLogMiddleware
from satapi.web.middleware import RequestIdMiddleware
from tests.conftest import WMS_URL, png_bytes
from tests.support.wms_mock import mock_transport

BODY = {"bbox": [10, 45, 14, 47], "width": 64, "height": 32}
SECRET = "wms-key-9f8e7d6c5b4a3210"


def echoing_wms(request: httpx.Request) -> httpx.Response:
    """A PNG, or for LAYERS=broken a ServiceException that echoes the whole request URL."""
    if request.url.params["LAYERS"] == "broken":
        xml = (
            '<?xml version="1.0"?><ServiceExceptionReport version="1.3.0">'
            f'<ServiceException code="LayerNotDefined">bad request {escape(str(request.url))}'
            "</ServiceException></ServiceExceptionReport>"
        )
        return httpx.Response(200, content=xml.encode(), headers={"content-type": "text/xml"})
    w, h = int(request.url.params["WIDTH"]), int(request.url.params["HEIGHT"])
    return httpx.Response(200, content=png_bytes(w, h), headers={"content-type": "image/png"})


@asynccontextmanager
async def app_client(
    settings: Settings, wms: respx.Router | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, http_transport=mock_transport(wms))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://satapi.test"
        ) as c,
    ):
        yield c


@contextmanager
def service_logging(
    fmt: str, secrets: list[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[io.StringIO]:
    """The service's own logging set-up (as `satapi serve` does it), writing to a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("uvicorn.access").disabled)
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    setup_logging(fmt, "debug", secrets)
    try:
        yield buffer
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("uvicorn.access").disabled = saved[2]


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "satapi.access"]


async def test_one_line_per_request_with_id_route_and_status(
    client: httpx.AsyncClient, wms: respx.Router, caplog: pytest.LogCaptureFixture
) -> None:
    wms.get(WMS_URL).mock(side_effect=echoing_wms)
    caplog.set_level(logging.DEBUG)
    created = await client.post("/api/images", json=BODY, headers={"X-Request-ID": "req-1"})
    image_id = created.json()["image"]["id"]
    fetched = await client.get(f"/api/images/{image_id}?token=abc")
    missing = await client.get("/nowhere")
    records = [vars(r) for r in access_records(caplog)]
    assert len(records) == 3
    first, second, third = records
    assert (first["request_id"], first["method"], first["route"], first["status"]) == (
        "req-1",
        "POST",
        "/api/images",
        200,
    )
    assert second["request_id"] == fetched.headers["x-request-id"]
    assert second["route"] == "/api/images/{image_id}" and second["status"] == 200
    assert second["bytes"] == len(png_bytes(64, 32))
    assert second["path"] == f"/api/images/{image_id}" and "token" not in second["msg"]
    assert third["route"] == "<unmatched>" and third["status"] == missing.status_code == 404
    for record in records:
        assert record["duration_ms"] >= 0 and record["client"]
    # One download line, for the first request (the GET reads the store, no download).
    downloads = [vars(r) for r in caplog.records if r.name == "satapi.wms"]
    assert len(downloads) == 1
    line = downloads[0]
    assert (line["provider"], line["layer"], line["cache"], line["outcome"]) == (
        "test",
        "scene",
        "miss",
        "ok",
    )
    assert line["bytes"] > 0 and line["queue_wait_ms"] >= 0 and line["duration_ms"] >= 0


async def test_probes_and_scrapes_are_debug_only(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await client.get("/healthz")
    await client.get("/metrics")
    records = access_records(caplog)
    assert [r.levelno for r in records] == [logging.DEBUG, logging.DEBUG]
    assert [vars(r)["route"] for r in records] == ["/healthz", "/metrics"]


async def test_json_lines_parse_and_no_secret_appears(
    make_settings: Callable[..., Settings], wms: respx.Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(
        providers={
            "test": {
                "url": WMS_URL,
                "default_layer": "scene",
                "secret_params": {"apikey": SECRET},
            }
        },
        log_format="json",
    )
    route = wms.get(WMS_URL).mock(side_effect=echoing_wms)
    with service_logging("json", settings.secrets, monkeypatch) as buffer:
        async with app_client(settings, wms=wms) as c:
            ok = await c.post("/api/images", json=BODY)
            hit = await c.post("/api/images", json=BODY)
            broken = await c.post("/api/images", json={**BODY, "layer": "broken"})
            logging.getLogger("satapi.test").info("a stray mention of %s", SECRET)
    assert (ok.status_code, hit.status_code, broken.status_code) == (200, 200, 502)
    # The WMS did get the key, and echoed it back in its error.
    assert all(call.request.url.params["apikey"] == SECRET for call in route.calls)
    assert SECRET not in broken.text
    output = buffer.getvalue()
    assert SECRET not in output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    requests = [entry for entry in lines if entry.get("event") == "request"]
    downloads = [entry for entry in lines if entry.get("event") == "download"]
    assert [(e["route"], e["status"]) for e in requests] == [
        ("/api/images", 200),
        ("/api/images", 200),
        ("/api/images", 502),
    ]
    assert all(e["request_id"] and e["level"] == "info" for e in requests[:2])
    # A download line carries the id of the request that started it; a cache hit is no
    # download: its request line says so instead.
    assert [e["request_id"] for e in downloads] == [
        requests[0]["request_id"],
        requests[2]["request_id"],
    ]
    assert [(e["cache"], e["outcome"]) for e in downloads] == [
        ("miss", "ok"),
        ("miss", "wms_exception"),
    ]
    assert "cache" not in requests[0] and "cache" not in requests[2]
    assert (requests[1]["cache"], requests[1]["image_id"]) == ("hit", downloads[0]["image_id"])
    assert all("apikey=%2A%2A%2A" in e["source_url"] for e in downloads)
    assert downloads[1]["error"] == "wms_exception" and downloads[1]["level"] == "warning"
    stray = next(e for e in lines if e["logger"] == "satapi.test")
    assert stray["msg"] == "a stray mention of ***"


async def test_text_lines_are_key_value_without_secrets(
    make_settings: Callable[..., Settings], wms: respx.Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(
        providers={
            "test": {"url": WMS_URL, "default_layer": "scene", "secret_params": {"key": SECRET}}
        }
    )
    wms.get(WMS_URL).mock(side_effect=echoing_wms)
    with service_logging("text", settings.secrets, monkeypatch) as buffer:
        async with app_client(settings, wms=wms) as c:
            await c.post("/api/images", json=BODY, headers={"X-Request-ID": "text-1"})
            await c.post("/api/images", json={**BODY, "layer": "broken"})
    output = buffer.getvalue()
    assert SECRET not in output
    access = [line for line in output.splitlines() if "satapi.access:" in line]
    assert len(access) == 2
    assert "POST /api/images 200" in access[0]
    for part in ("request_id=text-1", "route=/api/images", "status=200", "duration_ms="):
        assert part in access[0]
    download = next(line for line in output.splitlines() if "satapi.wms: download ok" in line)
    assert "provider=test" in download and "cache=miss" in download and "queue_wait_ms=" in download
    assert "\x1b[" not in output  # no colour codes, no emoji: plain text


async def test_streamed_response_is_logged_when_it_finishes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            await asyncio.sleep(0.1)
            yield f"data: {i}\n\n".encode()

    async def events(_request: Any) -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/event-stream")

    seen: list[tuple[str, str, int, float]] = []

    class Recorder:
        def observe(self, event: Event) -> None:
            if isinstance(event, RequestFinished):
                seen.append((event.method, event.route, event.status, event.duration_s))

    app = RequestIdMiddleware(
        AccessLogMiddleware(
            Starlette(routes=[Route("/stream/{name}", events)]),
            observer=Recorder(),
        )
    )
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        started = time.perf_counter()
        r = await c.get("/stream/abc")
        elapsed = time.perf_counter() - started
    assert r.status_code == 200 and r.text.count("data:") == 3
    (record,) = (vars(r) for r in access_records(caplog))
    assert record["route"] == "/stream/{name}"
    assert record["duration_ms"] >= 300 * 0.9
    assert record["duration_ms"] <= elapsed * 1000 + 1
    assert record["ttfb_ms"] < record["duration_ms"]
    assert seen and seen[0][:3] == ("GET", "/stream/{name}", 200) and seen[0][3] >= 0.27


async def test_unhandled_error_is_logged_as_500(caplog: pytest.LogCaptureFixture) -> None:
    async def boom(_request: Any) -> None:
        raise RuntimeError("kaboom")

    app = AccessLogMiddleware(Starlette(routes=[Route("/boom", boom)]))
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    ) as c:
        r = await c.get("/boom")
    assert r.status_code == 500
    (record,) = (vars(r) for r in access_records(caplog))
    assert record["status"] == 500 and record["error"] == "RuntimeError"
    assert record["levelno"] == logging.WARNING


def test_tracebacks_are_redacted_too() -> None:
    """A secret inside an exception's text never reaches the log output."""
    import io
    import logging as _logging

    from satapi.observability.logs import JsonFormatter, TextFormatter, _Redactor

    for formatter in (TextFormatter(), JsonFormatter()):
        stream = io.StringIO()
        handler = _logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handler.addFilter(_Redactor(["s3cr3t+/="]))
        logger = _logging.getLogger(f"satapi.test.redact.{type(formatter).__name__}")
        logger.propagate = False
        logger.addHandler(handler)
        try:
            raise RuntimeError("GET http://wms.test/wms?key=s3cr3t%2B%2F%3D failed (s3cr3t+/=)")
        except RuntimeError:
            logger.exception("download failed")
        finally:
            logger.removeHandler(handler)
        out = stream.getvalue()
        assert "RuntimeError" in out and "***" in out
        assert "s3cr3t" not in out


async def test_requests_sharing_one_download_log_one_download_line(
    make_settings: Callable[..., Settings], wms: respx.Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(providers={"test": {"url": WMS_URL, "default_layer": "scene"}})

    async def slow_wms(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.2)
        return echoing_wms(request)

    wms.get(WMS_URL).mock(side_effect=slow_wms)
    with service_logging("json", settings.secrets, monkeypatch) as buffer:
        async with app_client(settings, wms=wms) as c:
            answers = await asyncio.gather(*(c.post("/api/images", json=BODY) for _ in range(3)))
    assert [a.status_code for a in answers] == [200, 200, 200]
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    requests = [e for e in lines if e.get("event") == "request"]
    downloads = [e for e in lines if e.get("event") == "download"]
    assert len(downloads) == 1 and downloads[0]["cache"] == "miss"
    assert sorted(e.get("cache", "-") for e in requests) == ["-", "shared", "shared"]
    image_id = answers[0].json()["image"]["id"]
    assert {e["image_id"] for e in requests if "cache" in e} == {image_id}


# --- a client that leaves before the response starts: 499 ----------------------------------------


async def test_a_client_gone_before_the_response_is_499_and_a_crash_still_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In-process: the disconnect watcher cancels the request (499, INFO); an exception with the
    client still there, or one raised after the client left, is a server failure (500)."""
    from satapi.web.middleware import BodyLimitMiddleware

    release = asyncio.Event()

    async def waits(_request: Any) -> None:
        await asyncio.Event().wait()  # until cancelled

    async def boom(_request: Any) -> None:
        raise RuntimeError("kaboom")

    async def boom_after_cancel(_request: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("clean-up failed") from None

    seen: list[Event] = []

    class Seen:
        def observe(self, event: Event) -> None:
            seen.append(event)

    inner = Starlette(
        routes=[Route("/wait", waits), Route("/boom", boom), Route("/boom2", boom_after_cancel)]
    )
    app = AccessLogMiddleware(BodyLimitMiddleware(inner, max_bytes=1024), observer=Seen())

    async def call(path: str, *, leave: bool) -> None:
        messages: list[dict[str, Any]] = [{"type": "http.request", "body": b""}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            if leave:
                await asyncio.sleep(0.05)
                return {"type": "http.disconnect"}
            await release.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            pass

        scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
        scope.update({"state": {}, "client": ("127.0.0.1", 1), "server": ("t", 80)})
        scope.update({"scheme": "http", "root_path": "", "http_version": "1.1"})
        await app(scope, receive, send)

    caplog.set_level(logging.INFO)
    await call("/wait", leave=True)
    with pytest.raises(RuntimeError):
        await call("/boom", leave=False)
    with pytest.raises(RuntimeError):
        await call("/boom2", leave=True)
    release.set()
    records = [vars(r) for r in access_records(caplog)]
    assert [(r["status"], r["levelno"]) for r in records] == [
        (499, logging.INFO),
        (500, logging.WARNING),
        (500, logging.WARNING),
    ]
    assert [e.status for e in seen if isinstance(e, RequestFinished)] == [499, 500, 500]


async def test_only_a_request_still_running_after_a_moment_gets_a_disconnect_watcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A quick answer costs no watcher task; a slow one gets one; a client that leaves at once
    still cancels its request, noticed when the watcher starts (WATCH_AFTER_S)."""
    from starlette.responses import PlainTextResponse

    from satapi.web import middleware

    watchers: list[str] = []
    ensure_future = asyncio.ensure_future

    def counted(coro: Any, **kwargs: Any) -> Any:
        watchers.append(getattr(coro, "__qualname__", ""))
        return ensure_future(coro, **kwargs)

    monkeypatch.setattr(middleware.asyncio, "ensure_future", counted)

    async def quick(_request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def slow(_request: Any) -> PlainTextResponse:
        await asyncio.sleep(4 * middleware.WATCH_AFTER_S)
        return PlainTextResponse("ok")

    async def waits(_request: Any) -> None:
        await asyncio.Event().wait()  # until cancelled

    inner = Starlette(routes=[Route("/quick", quick), Route("/slow", slow), Route("/w", waits)])
    app = middleware.BodyLimitMiddleware(inner, max_bytes=1024)

    async def call(path: str, *, leave: bool) -> list[int]:
        messages: list[dict[str, Any]] = [{"type": "http.request", "body": b""}]
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            if not leave:
                await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
        scope.update({"state": {}, "client": ("127.0.0.1", 1), "server": ("t", 80)})
        scope.update({"scheme": "http", "root_path": "", "http_version": "1.1"})
        await app(scope, receive, send)
        return statuses

    assert await call("/quick", leave=False) == [200]
    await asyncio.sleep(2 * middleware.WATCH_AFTER_S)  # its timer was cancelled: still none
    assert watchers == []
    assert await call("/slow", leave=False) == [200]
    assert len(watchers) == 1 and "watch" in watchers[0]
    started = time.perf_counter()
    assert await asyncio.wait_for(call("/w", leave=True), 5) == []  # cancelled, no answer
    assert time.perf_counter() - started >= middleware.WATCH_AFTER_S * 0.9
    assert len(watchers) == 2


async def test_a_real_client_that_hangs_up_while_waiting_is_logged_and_counted_as_499(
    tmp_path: Any,
) -> None:
    """A real `satapi serve` (uvicorn) and a client that closes its socket while its request
    waits for a WMS server that never answers: the access line and /metrics both say 499."""
    from tests.support.fault_upstream import FaultUpstream, SatapiProcess

    with FaultUpstream() as upstream:
        server = SatapiProcess(
            tmp_path,
            {
                "log_format": "json",
                "default_provider": "fault",
                "providers": {"fault": {"url": upstream.wms_url, "default_layer": "ok"}},
            },
        ).start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                body = {**BODY, "layer": "hang"}
                task = asyncio.create_task(
                    client.post("/api/images", json=body, headers={"X-Request-ID": "gone-1"})
                )
                assert await upstream.wait_for_async(lambda: upstream.in_flight("hang") == 1)
                task.cancel()  # closes the connection to satapi
                with pytest.raises(asyncio.CancelledError):
                    await task

                def line() -> dict[str, Any] | None:
                    for text in server.log().splitlines():
                        if text.startswith("{") and '"gone-1"' in text:
                            record: dict[str, Any] = json.loads(text)
                            if record.get("event") == "request":
                                return record
                    return None

                deadline = time.monotonic() + 5
                while line() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                record = line()
                assert record is not None, server.log()[-3000:]
                assert record["status"] == 499 and record["route"] == "/api/images"
                assert record["level"] == "info", record
                metrics = (await client.get("/metrics")).text
                counted = (
                    'satapi_http_requests_total{method="POST",route="/api/images",status="499"} 1.0'
                )
                assert counted in metrics
                assert 'route="/api/images",status="500"' not in metrics
        finally:
            server.stop()
    assert "Traceback" not in server.log()
