"""`satapi.client` against the real app and the real MapServer WMS.

Plain calls go through the app in-process (ASGI); the streams go through a real uvicorn server
on 127.0.0.1. Retries and forward compatibility (unknown and `selection` events) use small
in-process ASGI apps that answer exactly what the test needs.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from asgi_lifespan import LifespanManager
from PIL import Image

from satapi.app import create_app
from satapi.client import (
    APIConnectionError,
    AuthenticationError,
    DeltaEvent,
    ErrorEvent,
    ImageEvent,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    ResultEvent,
    SatapiClient,
    SatapiError,
    SelectionEvent,
    StatusEvent,
    UnknownEvent,
    UpstreamError,
)
from satapi.config import Settings
from satapi.models import (
    ComparisonResponse,
    ImageRequest,
    LayerOut,
    ProviderInfo,
    VisionRequest,
    VisionResponse,
)
from tests.support.mapserver import CLOUDY_BROKEN, CLOUDY_LAYER, SCENE_BBOX, MapServerWMS
from tests.test_vision_sse import ThreadedServer

pytestmark = pytest.mark.mapserver

EARLY, LATE = "2024-01-01", "2024-06-01"
AREA: dict[str, Any] = {"bbox": list(SCENE_BBOX), "width": 200, "height": 100}


def mapserver_settings(data_dir: Path, wms: MapServerWMS, **overrides: Any) -> Settings:
    """satapi with the MapServer as its only provider."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "default_provider": "mapserver",
        "providers": {
            "mapserver": {
                "url": wms.url,
                "version": "1.3.0",
                "default_layer": wms.layer,
                "max_concurrency": 8,
            },
            "gibs": {"enabled": False},
            "eox": {"enabled": False},
        },
        "anthropic_api_key": None,
        "retry_wait_initial_s": 0.01,
        "retry_wait_max_s": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_client(tmp_path: Path, mapserver_wms: MapServerWMS) -> Callable[..., Any]:
    """An async context manager: a `SatapiClient` over the app in-process (ASGI)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def make(api_key: str | None = None, **overrides: Any) -> AsyncIterator[SatapiClient]:
        app = create_app(mapserver_settings(tmp_path / "data", mapserver_wms, **overrides))
        async with (
            LifespanManager(app) as manager,
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=manager.app)) as http,
            SatapiClient("http://satapi.test", api_key=api_key, http_client=http) as client,
        ):
            yield client

    return make


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mapserver_wms: MapServerWMS) -> Iterator[str]:
    """satapi under a real uvicorn on 127.0.0.1 (for streams); yields its base URL."""
    settings = mapserver_settings(tmp_path_factory.mktemp("client-served"), mapserver_wms)
    server = ThreadedServer(create_app(settings), "satapi-client-test", lifespan="on").start()
    try:
        yield server.url
    finally:
        server.stop()


# --- plain calls (in-process) ---


async def test_providers_and_layers_are_the_service_models(make_client: Any) -> None:
    async with make_client() as client:
        providers = await client.providers()
        assert [p.name for p in providers] == ["mapserver"]
        assert isinstance(providers[0], ProviderInfo) and providers[0].default
        layers = {layer.name: layer for layer in await client.layers("mapserver")}
        assert isinstance(layers["scene"], LayerOut)
        assert layers["scene"].times == [EARLY, LATE]


async def test_fetch_image_then_its_bytes_and_meta(make_client: Any) -> None:
    async with make_client() as client:
        first = await client.fetch_image(**AREA, time=LATE)
        assert (first.image.width, first.image.height, first.image.cached) == (200, 100, False)
        again = await client.fetch_image(ImageRequest(**AREA, time=LATE))
        assert again.image.id == first.image.id and again.image.cached
        data = await client.image_bytes(first.image.id)
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (200, 100)
            # the north-west corner is the red marker, the east half water
            assert image.convert("RGB").getpixel((5, 5)) == (220, 40, 40)
            assert image.convert("RGB").getpixel((190, 50)) == (20, 50, 120)
        meta = await client.image_meta(first.image.id)
        assert meta.image.id == first.image.id and meta.crs == "EPSG:4326"
        tile = await client.tile("mapserver", 6, 33, 22, layer="scene", time=LATE)
        with Image.open(io.BytesIO(tile)) as image:
            assert image.size == (256, 256)


async def test_analyze_compare_timeseries_and_stored_analysis(make_client: Any) -> None:
    async with make_client() as client:
        answer = await client.analyze(**AREA, time=LATE, analyzer="local")
        assert isinstance(answer, VisionResponse)
        metrics = answer.analysis.metrics
        assert metrics["water_fraction"] == pytest.approx(0.5, abs=0.02)
        assert metrics["bare_fraction"] == pytest.approx(0.2, abs=0.02)
        stored = await client.analysis(answer.analysis_id)
        assert stored.analysis.text == answer.analysis.text

        change = await client.compare(**AREA, before=EARLY, after=LATE, analyzer="local")
        assert isinstance(change, ComparisonResponse)
        assert set(change.images) == {"before", "after", "change_mask"}
        assert change.analysis.metrics["gains"]["bare"] == pytest.approx(0.2, abs=0.03)
        mask = await client.image_bytes(change.images["change_mask"].id)
        assert mask.startswith(b"\x89PNG")

        series = await client.timeseries(**AREA, times=[LATE, EARLY])
        assert [p.time for p in series.points] == [EARLY, LATE]  # the service sorts them
        assert not series.partial
        assert series.points[0].metrics is not None
        assert series.points[0].metrics["bare_fraction"] == 0.0
        csv = await client.timeseries_csv(**AREA, times=[EARLY, LATE])
        header, *rows = csv.splitlines()
        assert header.startswith("time,status,image_id,")
        assert [r.split(",")[0] for r in rows] == [EARLY, LATE]


async def test_errors_mirror_the_envelope(make_client: Any) -> None:
    async with make_client() as client:
        with pytest.raises(NotFoundError) as missing:
            await client.image_bytes("0" * 64)
        assert (missing.value.code, missing.value.status) == ("not_found", 404)
        assert missing.value.request_id  # the service's X-Request-ID

        with pytest.raises(InvalidRequestError) as bad_bbox:
            await client.fetch_image(bbox=[14, 47, 10, 45])
        assert (bad_bbox.value.code, bad_bbox.value.status) == ("invalid_bbox", 422)

        with pytest.raises(InvalidRequestError) as unknown:
            await client.fetch_image(**AREA, provider="nowhere")
        assert unknown.value.code == "unknown_provider"

        with pytest.raises(InvalidRequestError) as no_layer:
            await client.fetch_image(**AREA, layer="no_such_layer")
        assert (no_layer.value.code, no_layer.value.status) == ("unknown_layer", 422)
        assert "scene" in no_layer.value.details["layers"]

        # a date the capabilities list, whose file on the server is broken
        with pytest.raises(UpstreamError) as upstream:
            await client.fetch_image(**AREA, layer=CLOUDY_LAYER, time=CLOUDY_BROKEN)
        assert (upstream.value.code, upstream.value.status) == ("wms_exception", 502)

        # refused by the service's own models before anything is sent
        with pytest.raises(InvalidRequestError) as local:
            await client.fetch_image(**{**AREA, "width": 0})
        assert (local.value.code, local.value.status) == ("validation_error", None)
        assert "width" in str(local.value)


async def test_api_key(make_client: Any) -> None:
    async with make_client(api_keys=["k-123"]) as anonymous:
        with pytest.raises(AuthenticationError) as denied:
            await anonymous.providers()
        assert (denied.value.code, denied.value.status) == ("unauthorized", 401)
    async with make_client(api_key="k-123", api_keys=["k-123"]) as client:
        assert [p.name for p in await client.providers()] == ["mapserver"]


async def test_unreachable_service_is_a_connection_error() -> None:
    async with SatapiClient("http://127.0.0.1:9") as client:
        with pytest.raises(APIConnectionError) as failed:
            await client.providers()
    assert failed.value.status is None and "127.0.0.1:9" in str(failed.value)


# --- retries (a tiny ASGI app that sheds load) ---


class Shedding:
    """Answers 503 `overloaded` (with `Retry-After` unless told not to) `times` times, then 200."""

    def __init__(self, times: int, *, retry_after: str | None = "1") -> None:
        self.times = times
        self.retry_after = retry_after
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        if self.calls <= self.times:
            body = {"success": False, "error": "Busy.", "code": "overloaded", "request_id": "r1"}
            headers = [(b"content-type", b"application/json")]
            if self.retry_after is not None:
                headers.append((b"retry-after", self.retry_after.encode()))
            status = 503
        else:
            body = {"success": True, "providers": []}
            headers = [(b"content-type", b"application/json")]
            status = 200
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's back-off sleeps, recorded instead of slept."""
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr("satapi.client.api._sleep", fake_sleep)
    return recorded


def _client_for(app: Any, **kwargs: Any) -> SatapiClient:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    return SatapiClient("http://shed.test", http_client=http, **kwargs)


async def test_503_with_retry_after_is_retried_a_bounded_number_of_times(
    sleeps: list[float],
) -> None:
    app = Shedding(2)
    assert await _client_for(app).providers() == []  # default: 2 retries
    assert (app.calls, sleeps) == (3, [1.0, 1.0])

    app, sleeps[:] = Shedding(3), []
    with pytest.raises(OverloadedError) as shed:
        await _client_for(app, max_retries=2).providers()
    assert app.calls == 3 and shed.value.retry_after == 1.0 and shed.value.status == 503

    app = Shedding(1)
    with pytest.raises(OverloadedError):
        await _client_for(app, max_retries=0).providers()
    assert app.calls == 1

    app, sleeps[:] = Shedding(1, retry_after="120"), []
    assert await _client_for(app, max_retry_wait=5).providers() == []
    assert sleeps == [5]  # capped


async def test_503_without_retry_after_is_not_retried(sleeps: list[float]) -> None:
    app = Shedding(1, retry_after=None)
    with pytest.raises(OverloadedError):
        await _client_for(app).providers()
    assert app.calls == 1 and sleeps == []


# --- streams (a real uvicorn) ---


async def test_analyze_stream_typed_events_text_and_final(served: str) -> None:
    async with (
        SatapiClient(served) as client,
        client.analyze_stream(**AREA, time=LATE, analyzer="local") as stream,
    ):
        events = [event async for event in stream]
        result = await stream.final()
    stages = [e.stage for e in events if isinstance(e, StatusEvent)]
    assert stages[0] == "queued" and stages[-1] == "analyzing" and "downloaded" in stages
    images = [e for e in events if isinstance(e, ImageEvent)]
    assert len(images) == 1 and images[0].image.id == result.image.id
    deltas = "".join(e.text for e in events if isinstance(e, DeltaEvent))
    assert deltas == result.analysis.text == stream.text
    assert isinstance(events[-1], ResultEvent) and events[-1].result == result
    assert isinstance(result, VisionResponse)
    assert [int(e.event_id) for e in events] == list(range(1, len(events) + 1))  # type: ignore[union-attr]


async def test_text_stream_then_final(served: str) -> None:
    async with SatapiClient(served) as client:
        request = VisionRequest(**AREA, time=EARLY, analyzer="local")
        async with client.analyze_stream(request) as stream:
            pieces = [text async for text in stream.text_stream]
            result = await stream.final()
    assert len(pieces) >= 1 and "".join(pieces) == result.analysis.text
    assert result.analysis.metrics["vegetation_fraction"] > 0.3


async def test_compare_stream(served: str) -> None:
    async with (
        SatapiClient(served) as client,
        client.compare_stream(**AREA, before=EARLY, after=LATE, analyzer="local") as stream,
    ):
        events = [event async for event in stream]
        result = await stream.final()
    sides = [e.side for e in events if isinstance(e, ImageEvent)]
    assert sorted(s or "" for s in sides) == ["after", "before"]
    assert isinstance(result, ComparisonResponse) and "change_mask" in result.images


async def test_stream_error_event_raises_on_final(served: str) -> None:
    async with (
        SatapiClient(served) as client,
        client.analyze_stream(
            **AREA, layer=CLOUDY_LAYER, time=CLOUDY_BROKEN, analyzer="local"
        ) as stream,
    ):
        events = [event async for event in stream]
        with pytest.raises(UpstreamError) as failed:
            await stream.final()
    assert isinstance(events[-1], ErrorEvent) and events[-1].code == "wms_exception"
    assert failed.value.code == "wms_exception" and failed.value.status is None
    assert failed.value.request_id  # from the stream's X-Request-ID


async def test_stream_refused_before_it_starts_raises_on_enter(served: str) -> None:
    async with SatapiClient(served) as client:
        with pytest.raises(InvalidRequestError) as refused:
            async with client.analyze_stream(**AREA, provider="nowhere"):
                pass
    assert (refused.value.code, refused.value.status) == ("unknown_provider", 422)


# --- forward compatibility: events this service does not send yet ---


class CannedStream:
    """Answers a fixed SSE body, whatever the request."""

    def __init__(self, body: str) -> None:
        self.body = body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"x-request-id", b"q")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body.encode()})


def _sse(name: str, data: Any, event_id: int) -> str:
    return f"event: {name}\nid: {event_id}\ndata: {json.dumps(data)}\n\n"


async def test_selection_and_unknown_events_do_not_break_the_stream(served: str) -> None:
    async with SatapiClient(served) as real:
        result = await real.analyze(**AREA, time=LATE, analyzer="local")
    selection = {
        "window": ["2024-05-01", "2024-06-30"],
        "chosen": LATE,
        "candidates": [{"time": LATE, "cloud_fraction": 0.0, "score": 0.0, "status": "ok"}],
    }
    body = (
        ": keep-alive comment\n\n"
        + _sse("status", {"stage": "queued"}, 1)
        + _sse("selection", selection, 2)
        + _sse("sparkles", {"new": "feature"}, 3)
        + _sse("image", result.image.model_dump(mode="json"), 4)
        + _sse("delta", {"text": "hello "}, 5)
        + _sse("delta", {"text": "world"}, 6)
        + _sse("result", result.model_dump(mode="json"), 7)
    )
    client = _client_for(CannedStream(body))
    async with client.analyze_stream(**AREA) as stream:
        events = [e async for e in stream]
        final = await stream.final()
    assert [type(e) for e in events] == [
        StatusEvent,
        SelectionEvent,
        UnknownEvent,
        ImageEvent,
        DeltaEvent,
        DeltaEvent,
        ResultEvent,
    ]
    chosen = events[1]
    assert isinstance(chosen, SelectionEvent) and chosen.chosen == LATE
    assert chosen.candidates[0]["score"] == 0.0
    assert isinstance(events[2], UnknownEvent) and events[2].data == {"new": "feature"}
    assert stream.text == "hello world" and final == result


class SheddingThenStream(CannedStream):
    """503 `overloaded` with `Retry-After` once, then the canned stream."""

    def __init__(self, body: str) -> None:
        super().__init__(body)
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        if self.calls > 1:
            await super().__call__(scope, receive, send)
            return
        body = json.dumps({"success": False, "error": "Busy.", "code": "overloaded"}).encode()
        headers = [(b"content-type", b"application/json"), (b"retry-after", b"2")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def test_a_shed_stream_is_retried_before_it_starts(sleeps: list[float]) -> None:
    app = SheddingThenStream(_sse("delta", {"text": "hi"}, 1))
    async with _client_for(app).analyze_stream(**AREA) as stream:
        assert [t async for t in stream.text_stream] == ["hi"]
    assert app.calls == 2 and sleeps == [2.0]


async def test_stream_without_result_is_an_error() -> None:
    client = _client_for(CannedStream(_sse("status", {"stage": "queued"}, 1)))
    async with client.analyze_stream(**AREA) as stream:
        with pytest.raises(SatapiError) as ended:
            await stream.final()
    assert ended.value.code == "stream_ended" and ended.value.request_id == "q"


# --- the client needs none of the server's modules ---

SERVER_ONLY = [
    "fastapi",
    "starlette",
    "uvicorn",
    "numpy",
    "PIL",
    "aiofiles",
    "anthropic",
    "owslib",
    "lxml",
    "stamina",
    "prometheus_client",
    "pydantic_settings",
]


def test_client_works_without_the_server_modules(served: str) -> None:
    """In a fresh interpreter where the server's libraries cannot be imported, the client still
    imports, calls and streams against the live service."""
    script = textwrap.dedent(
        f"""
        import asyncio, importlib.abc, sys

        BLOCKED = {SERVER_ONLY!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        from satapi.client import SatapiClient

        async def main():
            async with SatapiClient({served!r}) as client:
                print([p.name for p in await client.providers()])
                async with client.analyze_stream(
                    bbox={list(SCENE_BBOX)!r}, width=64, height=32, analyzer="local"
                ) as stream:
                    text = "".join([t async for t in stream.text_stream])
                    result = await stream.final()
                print(text == result.analysis.text, result.analysis.analyzer)

        asyncio.run(main())
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(loaded)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATAPI_")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['mapserver']", "True local", "[]"]
