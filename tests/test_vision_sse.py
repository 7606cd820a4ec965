"""The SSE analysis stream end to end: a real uvicorn server, a real WMS, a real SSE client.

satapi runs under uvicorn in a background thread on 127.0.0.1; its WMS upstream is `TinyWMS`
(a raw ASGI app under uvicorn in another thread) and its Anthropic API is the fake server.
The client is `httpx_sse` over a real socket, so event timing and disconnects are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from httpx_sse import EventSource, aconnect_sse
from PIL import Image

from satapi.analyzers.claude import DEFAULT_BUSY_RETRY_AFTER
from satapi.app import create_app
from satapi.config import Settings
from tests.support.fake_anthropic import FakeAnthropic, Reply

KEY = "sk-ant-api03-SSE-TEST-SECRET-0a1b2c3d4e5f"
CAP = 3  # max_concurrent_wms of the satapi server under test
BBOX = [10.0, 45.0, 14.0, 47.0]
BODY: dict[str, Any] = {"bbox": BBOX, "width": 80, "height": 40, "analyzer": "local"}
STREAM = "/api/vision/analyze_satellite_stream"
ANALYZE = "/api/vision/analyze_satellite"
BOUND_S = 20.0  # upper bound for any one stream in these tests

SERVICE_EXCEPTION = b"""<?xml version="1.0" encoding="UTF-8"?>
<ServiceExceptionReport version="1.3.0" xmlns="http://www.opengis.net/ogc">
  <ServiceException code="LayerNotDefined">msWMSLoadGetMapParams(): WMS server error.
  Invalid layer(s) given in the LAYERS parameter.</ServiceException>
</ServiceExceptionReport>"""


# --- servers in threads ---------------------------------------------------------------------------


class ThreadedServer:
    """Serves an ASGI app with uvicorn on a free port of 127.0.0.1, in its own thread and loop."""

    def __init__(self, app: Any, name: str, *, lifespan: Literal["on", "off"] = "off") -> None:
        self.app = app
        self.name = name
        self.lifespan = lifespan
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedServer:
        """Start serving; returns once uvicorn accepts connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            loop="asyncio",
            ws="none",
            lifespan=self.lifespan,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=self.name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            self.stop()
            sock.close()
            raise RuntimeError(f"{self.name} did not start")
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            assert not self._thread.is_alive(), f"{self.name} did not stop"
        self._server = None
        self._thread = None


class TinyWMS:
    """A minimal real WMS: GetMap answers a PNG of the requested WIDTH x HEIGHT after `latency`.

    LAYERS=broken answers an OGC ServiceException (HTTP 200, XML); LAYERS=flaky answers 503 to
    its first `flaky_failures` requests. Counts requests in flight
    (and the maximum), and requests whose client closed the connection before the answer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.url = ""  # set once served
        self.latency = 0.0
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0
        self.layers: list[str] = []
        self.times: list[str] = []
        self.flaky_failures = 0

    def reset_counters(self) -> None:
        """Forget counts (not the latency)."""
        with self._lock:
            self.calls = self.max_in_flight = self.cancelled = self.flaky_failures = 0
            self.layers = []
            self.times = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        params = {k.upper(): v for k, v in parse_qsl(scope["query_string"].decode())}
        while (await receive()).get("more_body"):
            pass
        if params.get("REQUEST", "").lower() == "getcapabilities":
            # No capabilities: satapi skips its layer checks and sends the GetMap as asked.
            await _respond(send, b"no capabilities here", "text/plain", status=404)
            return
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.layers.append(params.get("LAYERS", ""))
            self.times.append(params.get("TIME", ""))
            latency = self.latency
        sleeper = asyncio.ensure_future(asyncio.sleep(latency))
        gone = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait({sleeper, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            with self._lock:
                self.in_flight -= 1
                if gone.done() and not sleeper.done():
                    self.cancelled += 1
            for task in (sleeper, gone):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not sleeper.done() or sleeper.cancelled():
            return  # the client went away
        if params.get("LAYERS") == "broken":
            await _respond(send, SERVICE_EXCEPTION, "application/vnd.ogc.se_xml")
            return
        if params.get("LAYERS") == "flaky":
            with self._lock:
                fail = self.flaky_failures > 0
                self.flaky_failures -= fail
            if fail:
                await _respond(send, b"busy", "text/plain", status=503)
                return
        width, height = int(params["WIDTH"]), int(params["HEIGHT"])
        buf = io.BytesIO()
        Image.new("RGB", (width, height), (34, 139, 34)).save(buf, format="PNG")
        await _respond(send, buf.getvalue(), "image/png")


async def _wait_for_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(send: Any, body: bytes, content_type: str, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class Satapi:
    """A running satapi server."""

    url: str
    app: FastAPI

    def permits_back(self) -> bool:
        """No WMS permit held and nobody waiting (read across threads: plain ints)."""
        stats = self.app.state.resources.limiter.stats()
        return all(s.in_flight == 0 and s.waiting == 0 for s in stats.values())

    def waiting(self) -> int:
        """Requests waiting for a global WMS permit."""
        return int(self.app.state.resources.limiter.stats()["*"].waiting)

    def downloads_in_progress(self) -> int:
        """Distinct downloads the image service is running."""
        return int(self.app.state.resources.images.downloads_in_progress)


@contextlib.contextmanager
def serve_satapi(settings: Settings) -> Iterator[Satapi]:
    """satapi built from `settings`, under uvicorn in a thread, lifespan running."""
    app = create_app(settings)
    server = ThreadedServer(app, "satapi", lifespan="on").start()
    try:
        yield Satapi(url=server.url, app=app)
    finally:
        server.stop()


def satapi_settings(data_dir: Path, wms: TinyWMS, fake: FakeAnthropic) -> Settings:
    """The tiny WMS as the default provider, at most CAP downloads, Claude on the fake API."""
    return Settings(
        data_dir=data_dir,
        default_provider="tiny",
        providers={
            "tiny": {
                "url": wms.url,
                "version": "1.3.0",
                "default_layer": "scene",
                "max_concurrency": 50,
            }
        },
        max_concurrent_wms=CAP,
        retry_wait_initial_s=0.01,
        retry_wait_max_s=0.05,
        anthropic_api_key=KEY,
        anthropic_base_url=fake.base_url,
        anthropic_max_retries=0,
    )


@pytest.fixture(scope="module")
def _tiny_wms_server() -> Iterator[TinyWMS]:
    wms = TinyWMS()
    server = ThreadedServer(wms, "tiny-wms").start()
    wms.url = server.url + "/wms"
    try:
        yield wms
    finally:
        server.stop()


@pytest.fixture
def tiny_wms(_tiny_wms_server: TinyWMS) -> TinyWMS:
    """The tiny WMS on 127.0.0.1, with zero counts and no latency."""
    _tiny_wms_server.reset_counters()
    _tiny_wms_server.latency = 0.0
    return _tiny_wms_server


@pytest.fixture
def satapi(tmp_path: Path, tiny_wms: TinyWMS, fake_anthropic: FakeAnthropic) -> Iterator[Satapi]:
    """A fresh satapi server (empty store) for one test."""
    with serve_satapi(satapi_settings(tmp_path / "data", tiny_wms, fake_anthropic)) as server:
        yield server


@pytest.fixture(scope="module")
def shared_satapi(
    tmp_path_factory: pytest.TempPathFactory,
    _tiny_wms_server: TinyWMS,
    _fake_anthropic_server: FakeAnthropic,
) -> Iterator[Satapi]:
    """One satapi server for the tests whose requests never get past validation."""
    data_dir = tmp_path_factory.mktemp("sse-shared") / "data"
    with serve_satapi(satapi_settings(data_dir, _tiny_wms_server, _fake_anthropic_server)) as s:
        yield s


def client_for(server: Satapi) -> httpx.AsyncClient:
    """A real HTTP client for a satapi server."""
    return httpx.AsyncClient(base_url=server.url, timeout=BOUND_S, trust_env=False)


@pytest.fixture
async def http(satapi: Satapi) -> AsyncIterator[httpx.AsyncClient]:
    """A real HTTP client for this test's satapi server."""
    async with client_for(satapi) as c:
        yield c


@pytest.fixture
async def shared_http(shared_satapi: Satapi) -> AsyncIterator[httpx.AsyncClient]:
    """A real HTTP client for the shared satapi server."""
    async with client_for(shared_satapi) as c:
        yield c


# --- reading streams ------------------------------------------------------------------------------


@dataclass
class Got:
    """One received event."""

    event: str
    id: int
    data: Any
    at: float  # time.monotonic() of arrival
    retry: int | None = None  # the SSE `retry` field (ms), when sent


class EventReader:
    """Reads a stream's events, timestamped; keeps its iterator open between reads.

    (Breaking out of `async for ... in source.aiter_sse()` drops the generator, whose
    finalizer closes the response: that would be a disconnect the test did not ask for.)
    """

    def __init__(self, source: EventSource) -> None:
        self._events = source.aiter_sse()

    async def read(self, until: Callable[[Got], bool] | None = None) -> list[Got]:
        """Every further event (or up to the first one `until` accepts)."""
        got: list[Got] = []
        async with asyncio.timeout(BOUND_S):
            async for sse in self._events:
                item = Got(
                    sse.event, int(sse.id), json.loads(sse.data), time.monotonic(), sse.retry
                )
                got.append(item)
                if until is not None and until(item):
                    break
        return got

    async def aclose(self) -> None:
        """Close the iterator (not the connection: leaving `aconnect_sse` does that)."""
        await self._events.aclose()


async def read_events(source: EventSource) -> list[Got]:
    """Every event of the stream, timestamped."""
    reader = EventReader(source)
    try:
        return await reader.read()
    finally:
        await reader.aclose()


def shape(events: list[Got]) -> list[str]:
    """Event names, with status events as `status:<stage>` and runs of deltas as one `delta+`."""
    names: list[str] = []
    for e in events:
        name = f"status:{e.data['stage']}" if e.event == "status" else e.event
        if name == "delta" and names and names[-1] == "delta+":
            continue
        names.append("delta+" if name == "delta" else name)
    return names


def assert_ids_increase(events: list[Got]) -> None:
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)) and ids[0] >= 1, ids


async def stream(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> tuple[httpx.Response, list[Got]]:
    async with aconnect_sse(client, "POST", STREAM, json=body) as source:
        events = await read_events(source)
        return source.response, events


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `predicate` until true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def without_cached(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "cached"}


# --- local analyzer -------------------------------------------------------------------------------


async def test_local_stream_event_order_and_result_equals_json_answer(
    http: httpx.AsyncClient, tiny_wms: TinyWMS
) -> None:
    tiny_wms.latency = 0.1
    response, events = await stream(http, BODY)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert shape(events) == [
        "status:queued",
        "status:downloading",
        "status:downloaded",
        "image",
        "status:analyzing",
        "delta+",
        "result",
    ]
    assert_ids_increase(events)
    assert events[2].data["cached"] is False
    assert events[4].data["analyzer"] == "local"
    image, result = events[3].data, events[-1].data
    assert result["image"] == image
    deltas = [e.data["text"] for e in events if e.event == "delta"]
    assert "".join(deltas) == result["analysis"]["text"]
    assert result["success"] is True and result["analysis"]["cached"] is False
    assert result["analysis"]["metrics"]["vegetation_fraction"] == pytest.approx(1.0, abs=0.01)
    assert tiny_wms.calls == 1

    # The JSON route answers the same (from the caches now: `cached` differs).
    answer = (await http.post(ANALYZE, json=BODY)).json()
    assert answer["analysis_id"] == result["analysis_id"]
    assert answer["image"]["id"] == result["image"]["id"]
    assert without_cached(answer["analysis"]) == without_cached(result["analysis"])
    assert answer["analysis"]["cached"] is True
    assert set(answer) == set(result)
    assert tiny_wms.calls == 1
    stored = (await http.get(f"/api/analyses/{result['analysis_id']}")).json()
    assert stored["analysis"] == result["analysis"]

    # A repeat stream is served from the caches: no download stage, the text as one delta.
    _, again = await stream(http, BODY)
    assert shape(again) == [
        "status:queued",
        "status:downloaded",
        "image",
        "status:analyzing",
        "delta+",
        "result",
    ]
    assert again[1].data["cached"] is True
    assert again[-1].data["analysis"]["cached"] is True
    assert tiny_wms.calls == 1


async def test_get_stream_works_like_post(http: httpx.AsyncClient, tiny_wms: TinyWMS) -> None:
    params = {
        "bbox": "10, 45, 14, 47",
        "width": "80",
        "height": "40",
        "time": "2024-06-01",
        "analyzer": "local",
    }
    async with aconnect_sse(http, "GET", STREAM, params=params) as source:
        assert source.response.status_code == 200
        events = await read_events(source)
    assert shape(events) == [
        "status:queued",
        "status:downloading",
        "status:downloaded",
        "image",
        "status:analyzing",
        "delta+",
        "result",
    ]
    assert_ids_increase(events)
    result = events[-1].data
    assert result["image"]["time"] == "2024-06-01"
    assert tiny_wms.times == ["2024-06-01"]
    # The same request as the POST body: the same image and analysis ids.
    answer = (await http.post(ANALYZE, json={**BODY, "time": "2024-06-01"})).json()
    assert answer["image"]["id"] == result["image"]["id"]
    assert answer["analysis_id"] == result["analysis_id"]
    assert without_cached(answer["analysis"]) == without_cached(result["analysis"])
    assert tiny_wms.calls == 1


# --- Claude through the fake API ------------------------------------------------------------------


async def test_claude_deltas_arrive_as_they_are_written(
    http: httpx.AsyncClient, fake_anthropic: FakeAnthropic
) -> None:
    chunks = ["The scene ", "is mostly ", "dense ", "forest."]
    fake_anthropic.script(Reply(text=chunks, delay=0.3))
    response, events = await stream(http, {**BODY, "analyzer": "claude"})
    assert response.status_code == 200
    assert shape(events)[-3:] == ["status:analyzing", "delta+", "result"]
    assert_ids_increase(events)
    deltas = [e for e in events if e.event == "delta"]
    assert [d.data["text"] for d in deltas] == chunks
    # They came one by one as the fake wrote them (3 pauses of 0.3 s), not all at the end.
    assert deltas[-1].at - deltas[0].at >= 0.5
    result = events[-1].data
    assert result["analysis"]["text"] == "".join(chunks)
    assert result["analysis"]["analyzer"] == "claude"
    assert result["analysis"]["model"] == Reply().model
    assert result["analysis"]["usage"] == {"input_tokens": 1234, "output_tokens": len(chunks)}
    assert len(fake_anthropic.requests) == 1


async def test_claude_mid_stream_overload_is_an_error_event_then_a_clean_end(
    http: httpx.AsyncClient, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Reply(text=["one ", "two ", "three"], error_after=2))
    response, events = await stream(http, {**BODY, "analyzer": "claude"})
    assert response.status_code == 200
    assert shape(events)[-3:] == ["status:analyzing", "delta+", "error"]
    assert [e.data["text"] for e in events if e.event == "delta"] == ["one ", "two "]
    error = events[-1].data
    assert error["code"] == "ai_busy" and error["error"]
    # When to try again, as the JSON route's Retry-After says it: seconds in the data, and
    # the SSE retry field (ms) for EventSource clients.
    assert error["retry_after"] == DEFAULT_BUSY_RETRY_AFTER
    assert events[-1].retry == DEFAULT_BUSY_RETRY_AFTER * 1000
    assert KEY not in json.dumps(error)
    assert not [e for e in events if e.event == "result"]
    # Nothing was cached: the next request asks the API again.
    fake_anthropic.script(Reply())
    _, retry = await stream(http, {**BODY, "analyzer": "claude"})
    assert retry[-1].event == "result"
    assert len(fake_anthropic.requests) == 2


async def test_claude_auth_failure_is_an_error_event(
    http: httpx.AsyncClient, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Reply.error(401, "authentication_error", f"bad key {KEY}"))
    response, events = await stream(http, {**BODY, "analyzer": "claude"})
    assert response.status_code == 200
    assert events[-1].event == "error" and events[-1].data["code"] == "ai_auth"
    # Trying again will not help: no retry time.
    assert "retry_after" not in events[-1].data and events[-1].retry is None
    assert KEY not in json.dumps([e.data for e in events])


# --- failures before and after the stream started -------------------------------------------------


async def test_wms_exception_after_the_stream_started_is_an_error_event(
    http: httpx.AsyncClient, tiny_wms: TinyWMS
) -> None:
    response, events = await stream(http, {**BODY, "layer": "broken"})
    assert response.status_code == 200
    assert shape(events) == ["status:queued", "status:downloading", "error"]
    error = events[-1].data
    assert error["code"] == "wms_exception"
    assert error["wms_code"] == "LayerNotDefined"
    assert "Invalid layer(s)" in error["error"]
    assert tiny_wms.layers == ["broken"]


async def test_a_retried_download_says_which_attempt_it_is(
    http: httpx.AsyncClient, tiny_wms: TinyWMS
) -> None:
    tiny_wms.flaky_failures = 2  # two 503s, then the image: the third of three attempts
    response, events = await stream(http, {**BODY, "layer": "flaky", "analyzer": "local"})
    assert response.status_code == 200
    downloading = [e.data for e in events if e.data.get("stage") == "downloading"]
    assert downloading == [
        {"stage": "downloading"},
        {"stage": "downloading", "attempt": 2, "attempts": 3},
        {"stage": "downloading", "attempt": 3, "attempts": 3},
    ]
    assert events[-1].event == "result"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({**BODY, "bbox": [14, 45, 10, 47]}, 422, "invalid_bbox"),
        ({**BODY, "bbox": [10, 45, 14]}, 422, "validation_error"),
        ({**BODY, "provider": "nope"}, 422, "unknown_provider"),
        ({**BODY, "prompt": "x" * 4001}, 422, "validation_error"),
        (
            {"wms_url": "http://169.254.169.254/latest?REQUEST=GetMap&WIDTH=8&HEIGHT=8"},
            400,
            "url_not_allowed",
        ),
        (
            {"wms_url": "http://127.0.0.1:1/wms?REQUEST=GetMap&WIDTH=8&HEIGHT=8"},
            400,
            "url_not_allowed",
        ),
    ],
)
async def test_invalid_post_is_plain_json_before_streaming(
    shared_http: httpx.AsyncClient,
    tiny_wms: TinyWMS,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    r = await shared_http.post(STREAM, json=body, headers={"Accept": "text/event-stream"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] == code and r.json()["success"] is False
    assert tiny_wms.calls == 0


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"bbox": "1,2,3"}, "validation_error"),
        ({"bbox": "a,b,c,d"}, "validation_error"),
        ({"bbox": "14,45,10,47"}, "invalid_bbox"),
        ({"bbox": "10,45,14,47", "provider": "nope"}, "unknown_provider"),
        ({"bbox": "10,45,14,47", "analyzer": "gpt"}, "validation_error"),
        ({}, "validation_error"),
    ],
)
async def test_invalid_get_is_plain_json_before_streaming(
    shared_http: httpx.AsyncClient, tiny_wms: TinyWMS, params: dict[str, str], code: str
) -> None:
    r = await shared_http.get(STREAM, params=params, headers={"Accept": "text/event-stream"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] == code
    assert tiny_wms.calls == 0


# --- disconnects ----------------------------------------------------------------------------------


async def test_disconnect_during_download_cancels_it_and_releases_permits(
    http: httpx.AsyncClient, tiny_wms: TinyWMS, satapi: Satapi
) -> None:
    tiny_wms.latency = 60.0  # far longer than the test: only a cancellation ends it
    async with aconnect_sse(http, "POST", STREAM, json=BODY) as source:
        reader = EventReader(source)
        seen = await reader.read(until=lambda e: e.data.get("stage") == "downloading")
        assert seen[-1].data["stage"] == "downloading"
        assert await wait_until(lambda: tiny_wms.in_flight == 1)
        await asyncio.sleep(0.3)  # the connection stays open: the download goes on
        assert tiny_wms.in_flight == 1 and tiny_wms.cancelled == 0
        assert not satapi.permits_back()
        await reader.aclose()
    # The client closed the connection while the WMS was still "working".
    assert await wait_until(lambda: tiny_wms.cancelled == 1 and tiny_wms.in_flight == 0)
    assert await wait_until(lambda: satapi.permits_back() and satapi.downloads_in_progress() == 0)

    # Behaviourally: a batch of CAP concurrent downloads all run at once.
    tiny_wms.reset_counters()
    tiny_wms.latency = 0.5
    bodies = [{"bbox": [10, 45, 14, 47 - i * 0.01], "width": 8, "height": 8} for i in range(CAP)]
    results = await asyncio.gather(*(http.post("/api/images", json=b) for b in bodies))
    assert [r.status_code for r in results] == [200] * CAP, results[0].text
    assert tiny_wms.calls == CAP
    assert tiny_wms.max_in_flight == CAP
    assert satapi.permits_back()


async def test_disconnect_mid_claude_stream_closes_the_api_stream(
    http: httpx.AsyncClient, fake_anthropic: FakeAnthropic, satapi: Satapi
) -> None:
    fake_anthropic.script(Reply(text=[f"part {i}. " for i in range(20)], delay=0.2))
    async with aconnect_sse(http, "POST", STREAM, json={**BODY, "analyzer": "claude"}) as source:
        reader = EventReader(source)
        seen = await reader.read(until=lambda e: e.event == "delta")
        assert seen[-1].data == {"text": "part 0. "}
        more = await reader.read(until=lambda e: e.event == "delta")  # still streaming
        assert more[-1].data == {"text": "part 1. "}
        assert fake_anthropic.disconnects == 0
        await reader.aclose()
    # The fake notices the closed connection when it next writes, within one delay.
    assert await fake_anthropic.wait_for_async(lambda: fake_anthropic.disconnects == 1, 10)
    assert len(fake_anthropic.requests) == 1
    assert satapi.permits_back()
    # The unfinished analysis was not stored: asking again calls the API again.
    fake_anthropic.script(Reply())
    answer = (await http.post(ANALYZE, json={**BODY, "analyzer": "claude"})).json()
    assert answer["analysis"]["cached"] is False
    assert len(fake_anthropic.requests) == 2


async def test_disconnect_while_queued_for_a_permit_leaves_the_queue(
    http: httpx.AsyncClient, tiny_wms: TinyWMS, satapi: Satapi
) -> None:
    tiny_wms.latency = 60.0
    async with contextlib.AsyncExitStack() as stack:
        # CAP streams hold every permit, each "downloading" from the slow WMS...
        for i in range(CAP):
            body = {**BODY, "bbox": [10, 45, 14, 46 + i * 0.1]}
            source = await stack.enter_async_context(aconnect_sse(http, "POST", STREAM, json=body))
            reader = EventReader(source)
            stack.push_async_callback(reader.aclose)
            await reader.read(until=lambda e: e.data.get("stage") == "downloading")
        assert await wait_until(lambda: tiny_wms.in_flight == CAP)
        # ...so one more waits in the queue; its client gives up there.
        async with aconnect_sse(http, "POST", STREAM, json=BODY) as source:
            reader = EventReader(source)
            seen = await reader.read(until=lambda e: e.event == "status")
            assert seen[-1].data == {"stage": "queued"}
            assert await wait_until(lambda: satapi.waiting() == 1)
            await reader.aclose()
        assert await wait_until(lambda: satapi.waiting() == 0)
        # The abandoned download leaves the flight table a moment after the permit queue.
        assert await wait_until(lambda: satapi.downloads_in_progress() == CAP)
        assert tiny_wms.in_flight == CAP
    assert await wait_until(lambda: tiny_wms.cancelled == CAP and tiny_wms.in_flight == 0)
    assert await wait_until(lambda: satapi.permits_back() and satapi.downloads_in_progress() == 0)
    assert tiny_wms.calls == CAP  # the queued stream never reached the WMS


async def test_disconnected_json_request_cancels_its_download(
    http: httpx.AsyncClient, tiny_wms: TinyWMS, satapi: Satapi
) -> None:
    tiny_wms.latency = 3.0  # short, so the abandoned download ends soon either way
    body = {"bbox": BBOX, "width": 8, "height": 8}
    task = asyncio.create_task(http.post("/api/images", json=body))
    try:
        assert await wait_until(lambda: tiny_wms.in_flight == 1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cancelled = await wait_until(lambda: tiny_wms.cancelled == 1, timeout=1.5)
    finally:
        task.cancel()
        await wait_until(lambda: tiny_wms.in_flight == 0, timeout=5)
        await wait_until(satapi.permits_back, timeout=5)
    assert cancelled, "the download went on after its only client disconnected"
