"""ClaudeAnalyzer against the real anthropic SDK: via an httpx2 MockTransport and a fake server."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import functools
import io
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import numpy as np
import pytest
from PIL import Image

from satapi.analyzers.base import (
    AnalysisEvent,
    AnalysisResult,
    AnalysisTask,
    ImageInput,
    TextDelta,
    run_analysis,
)
from satapi.analyzers.claude import (
    DEFAULT_BUSY_RETRY_AFTER,
    ClaudeAnalyzer,
    make_anthropic_client,
    map_anthropic_error,
)
from satapi.analyzers.prompts import (
    COMPARISON_SYSTEM_PROMPT,
    DEFAULT_COMPARISON_QUESTION,
    DEFAULT_QUESTION,
    SINGLE_IMAGE_SYSTEM_PROMPT,
    comparison_text,
    describe_bbox,
    single_image_text,
)
from satapi.cpu import CpuRunner
from satapi.errors import (
    AIAuthError,
    AIBusy,
    AIError,
    InvalidRequest,
    NotAnImage,
    status_for,
)
from tests.support.fake_anthropic import (
    FakeAnthropic,
    RecordedRequest,
    Reply,
    error_json,
    message_json,
    sse_bytes,
)

KEY = "sk-ant-api03-TEST-SECRET-0123456789abcdef"
MODEL = "claude-opus-4-7"
BBOX = (10.0, 45.0, 10.5, 45.3)


# --- helpers -------------------------------------------------------------------------------------


@functools.cache
def jpeg_bytes(width: int, height: int) -> bytes:
    """A smooth colour gradient (cheap to encode, unlike noise), as JPEG."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def solid_png(color: tuple[int, int, int], size: tuple[int, int] = (640, 480)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def single_task(
    data: bytes | None = None, prompt: str | None = "Is there flooding?"
) -> AnalysisTask:
    image = ImageInput(
        data=data if data is not None else jpeg_bytes(640, 480),
        content_type="image/jpeg",
        provider="sentinel-hub",
        layer="TRUE_COLOR",
        bbox=BBOX,
        crs="EPSG:4326",
        time="2024-06-01",
    )
    return AnalysisTask(images=[image], prompt=prompt)


def decode_image_block(block: dict[str, Any]) -> Image.Image:
    assert block["type"] == "image"
    assert block["source"]["type"] == "base64"
    im = Image.open(io.BytesIO(base64.b64decode(block["source"]["data"])))
    assert Image.MIME[im.format or ""] == block["source"]["media_type"]
    return im


async def collect(analyzer: ClaudeAnalyzer, task: AnalysisTask) -> list[AnalysisEvent]:
    return [event async for event in analyzer.stream(task)]


async def deltas_until_error(
    analyzer: ClaudeAnalyzer, task: AnalysisTask, error: type[Exception]
) -> tuple[list[str], Any]:
    deltas: list[str] = []
    with pytest.raises(error) as info:
        async for event in analyzer.stream(task):
            assert isinstance(event, TextDelta)
            deltas.append(event.text)
    return deltas, info.value


def assert_no_secret(err: BaseException) -> None:
    for text in (str(err), repr(err), repr(err.args), repr(getattr(err, "extra", {}))):
        assert KEY not in text
        assert "Bearer" not in text
        assert "authorization" not in text.lower()


# --- two ways to reach the SDK: an httpx2 MockTransport, and the fake server ---------------------


class MockBackend:
    """The SDK on an `httpx2.MockTransport` that answers like the fake server does."""

    name = "mock"

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._replies = [Reply()]
        self._clients: list[anthropic.AsyncAnthropic] = []

    def script(self, *replies: Reply) -> None:
        self._replies = list(replies)

    async def _handle(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(await request.aread())
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(RecordedRequest(request.method, request.url.path, headers, body))
        reply = self._replies.pop(0) if len(self._replies) > 1 else self._replies[0]
        if reply.status != 200:
            return httpx2.Response(
                reply.status,
                json=error_json(reply, "req_mock"),
                headers={"request-id": "req_mock", **reply.headers},
            )
        if body.get("stream"):
            return httpx2.Response(
                200,
                content=sse_bytes(reply),
                headers={"content-type": "text/event-stream", **reply.headers},
            )
        return httpx2.Response(200, json=message_json(reply))

    def client(self, *, max_retries: int = 0) -> anthropic.AsyncAnthropic:
        client = make_anthropic_client(
            KEY,
            base_url="https://api.anthropic.test",
            max_retries=max_retries,
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self._handle)),
        )
        self._clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()


class ServerBackend:
    """The SDK talking HTTP to the fake server."""

    name = "server"

    def __init__(self, fake: FakeAnthropic) -> None:
        self.fake = fake
        self._clients: list[anthropic.AsyncAnthropic] = []

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.fake.requests

    def script(self, *replies: Reply) -> None:
        self.fake.script(*replies)

    def client(self, *, max_retries: int = 0) -> anthropic.AsyncAnthropic:
        client = make_anthropic_client(KEY, base_url=self.fake.base_url, max_retries=max_retries)
        self._clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()


Backend = MockBackend | ServerBackend


@pytest.fixture(params=["mock", "server"])
async def api(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    backend: Backend
    if request.param == "mock":
        backend = MockBackend()
    else:
        backend = ServerBackend(request.getfixturevalue("fake_anthropic"))
    yield backend
    await backend.aclose()


@pytest.fixture
async def server(fake_anthropic: FakeAnthropic) -> AsyncIterator[ServerBackend]:
    backend = ServerBackend(fake_anthropic)
    yield backend
    await backend.aclose()


@pytest.fixture
def cpu() -> CpuRunner:
    return CpuRunner(max_threads=2)


def make_analyzer(backend: Backend, cpu: CpuRunner, *, max_retries: int = 0) -> ClaudeAnalyzer:
    return ClaudeAnalyzer(backend.client(max_retries=max_retries), model=MODEL, cpu=cpu)


# --- the request ---------------------------------------------------------------------------------


async def test_request_carries_downscaled_image_before_text(api: Backend, cpu: CpuRunner) -> None:
    await collect(make_analyzer(api, cpu), single_task(jpeg_bytes(3000, 2000)))

    [request] = api.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    body = request.json
    assert body["model"] == MODEL
    assert body["max_tokens"] == 1500
    assert body["stream"] is True
    assert body["system"] == SINGLE_IMAGE_SYSTEM_PROMPT
    [message] = body["messages"]
    assert message["role"] == "user"
    image_block, text_block = message["content"]

    im = decode_image_block(image_block)
    assert image_block["source"]["media_type"] == "image/jpeg"
    assert max(im.size) <= 1568
    assert im.width * im.height <= 1_150_000
    assert im.size == (1313, 875)  # 3:2 kept, area just under 1.15 MP

    assert text_block["type"] == "text"
    text = text_block["text"]
    assert "Is there flooding?" in text
    assert "lon/lat" in text
    assert "west 10, south 45, east 10.5, north 45.3" in text
    assert "2024-06-01" in text
    assert "sentinel-hub" in text
    assert "TRUE_COLOR" in text
    # The key authenticates the request (this SDK version sends it as a bearer token).
    assert KEY in request.headers.get("x-api-key", "") + request.headers.get("authorization", "")


async def test_default_question_when_none_given(api: Backend, cpu: CpuRunner) -> None:
    result = await run_analysis(make_analyzer(api, cpu), single_task(solid_png((9, 9, 9)), None))
    assert result.text
    assert DEFAULT_QUESTION in api.requests[0].json["messages"][0]["content"][-1]["text"]


async def test_comparison_sends_before_and_after_images_in_order(
    api: Backend, cpu: CpuRunner
) -> None:
    before = ImageInput(
        data=solid_png((20, 160, 30)),
        content_type="image/png",
        label="before",
        layer="TRUE_COLOR",
        bbox=BBOX,
        crs="CRS:84",
        time="2023-06-01",
    )
    after = dataclasses.replace(
        before, data=solid_png((150, 90, 40)), label="after", time="2024-06-01"
    )
    task = AnalysisTask(
        images=[before, after],
        prompt="Has the forest been cleared?",
    )
    await collect(make_analyzer(api, cpu), task)

    body = api.requests[0].json
    assert body["system"] == COMPARISON_SYSTEM_PROMPT
    content = body["messages"][0]["content"]
    assert [block["type"] for block in content] == ["text", "image", "text", "image", "text"]
    assert content[0]["text"] == "Before (2023-06-01):"
    assert content[2]["text"] == "After (2024-06-01):"
    first = decode_image_block(content[1]).convert("RGB").getpixel((5, 5))
    second = decode_image_block(content[3]).convert("RGB").getpixel((5, 5))
    assert isinstance(first, tuple) and isinstance(second, tuple)
    assert first[1] > 120 and second[0] > 120  # green first, brown second
    question = content[4]["text"]
    assert "Has the forest been cleared?" in question
    assert "lon/lat" in question and "north 45.3" in question


# --- the streamed answer -------------------------------------------------------------------------


async def test_deltas_arrive_in_order_and_join_to_the_final_text(
    api: Backend, cpu: CpuRunner
) -> None:
    api.script(
        Reply(
            text=("Alpha ", "beta ", "gamma."),
            thinking="SECRET REASONING",
            model="claude-opus-4-7-20990101",
            input_tokens=999,
            output_tokens=42,
        )
    )
    events = await collect(make_analyzer(api, cpu), single_task())

    *deltas, result = events
    assert all(isinstance(d, TextDelta) for d in deltas)
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == ["Alpha ", "beta ", "gamma."]
    assert isinstance(result, AnalysisResult)
    assert result.text == "Alpha beta gamma."
    assert "SECRET REASONING" not in result.text  # thinking blocks are skipped
    assert result.analyzer == "claude"
    assert result.model == "claude-opus-4-7-20990101"  # what the API reports
    assert result.usage == {"input_tokens": 999, "output_tokens": 42}


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (Reply.error(429, "rate_limit_error", retry_after="7"), 7.0),
        (Reply.error(529, "overloaded_error", retry_after="3"), 3.0),
        (Reply.error(529, "overloaded_error"), DEFAULT_BUSY_RETRY_AFTER),
        (Reply.error(429, "rate_limit_error", retry_after="1.2"), 2.0),  # rounded up
    ],
    ids=["429", "529-retry-after", "529-no-header", "429-fraction"],
)
async def test_rate_limit_and_overload_become_ai_busy(
    api: Backend, cpu: CpuRunner, reply: Reply, retry_after: float
) -> None:
    api.script(reply)
    deltas, err = await deltas_until_error(make_analyzer(api, cpu), single_task(), AIBusy)
    assert deltas == []
    assert err.retry_after == retry_after
    assert status_for(err) == 503
    assert len(api.requests) == 1  # max_retries=0: no retry
    assert_no_secret(err)


async def test_mid_stream_overloaded_error_becomes_ai_busy(api: Backend, cpu: CpuRunner) -> None:
    api.script(Reply(text=("one ", "two ", "three ", "four"), error_after=2))
    deltas, err = await deltas_until_error(make_analyzer(api, cpu), single_task(), AIBusy)
    assert deltas == ["one ", "two "]
    assert err.retry_after == DEFAULT_BUSY_RETRY_AFTER
    assert "overloaded" in err.message


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(401, "authentication_error"), (403, "permission_error")],
)
async def test_bad_key_becomes_ai_auth_error_without_the_key(
    api: Backend, cpu: CpuRunner, status: int, error_type: str
) -> None:
    api.script(Reply.error(status, error_type, f"invalid x-api-key {KEY}"))
    _, err = await deltas_until_error(make_analyzer(api, cpu), single_task(), AIAuthError)
    assert err.code == "ai_auth"
    assert_no_secret(err)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(500, "api_error"), (400, "invalid_request_error"), (404, "not_found_error")],
)
async def test_other_api_errors_become_ai_error(
    api: Backend, cpu: CpuRunner, status: int, error_type: str
) -> None:
    api.script(Reply.error(status, error_type))
    _, err = await deltas_until_error(make_analyzer(api, cpu), single_task(), AIError)
    assert type(err) is AIError
    assert f"HTTP {status}" in err.message and error_type in err.message
    assert status_for(err) == 502
    assert_no_secret(err)


async def test_sdk_retries_then_reports_busy_with_last_retry_after(
    api: Backend, cpu: CpuRunner
) -> None:
    api.script(Reply.error(429, "rate_limit_error", retry_after="0.05"))
    _, err = await deltas_until_error(make_analyzer(api, cpu, max_retries=1), single_task(), AIBusy)
    assert err.retry_after == 1.0  # 0.05 s rounded up to a whole second
    assert [r.headers["x-stainless-retry-count"] for r in api.requests] == ["0", "1"]


async def test_sdk_retry_recovers_from_a_529(api: Backend, cpu: CpuRunner) -> None:
    api.script(Reply.error(529, "overloaded_error", retry_after="0.01"), Reply(text=("fine",)))
    result = await run_analysis(make_analyzer(api, cpu, max_retries=2), single_task())
    assert result.text == "fine"
    assert len(api.requests) == 2


async def test_not_an_image_fails_before_calling_the_api(api: Backend, cpu: CpuRunner) -> None:
    with pytest.raises(NotAnImage):
        await collect(make_analyzer(api, cpu), single_task(b"<ServiceExceptionReport/>"))
    assert api.requests == []


# --- the fake server only: timing, disconnects ---------------------------------------------------


async def test_deltas_are_yielded_as_they_arrive(server: ServerBackend, cpu: CpuRunner) -> None:
    server.script(Reply(text=("a", "b", "c"), delay=0.3))
    stamps: list[float] = []
    async for event in make_analyzer(server, cpu).stream(single_task(solid_png((1, 2, 3)))):
        stamps.append(time.monotonic())
        if isinstance(event, AnalysisResult):
            assert event.text == "abc"
    # The first delta is not held back until the whole answer is there: held back, all would
    # arrive at once; sent 0.3 s apart, the first and the last are ~0.6 s apart (0.25 leaves
    # room for a busy test machine resuming this loop late for the first one).
    assert stamps[-1] - stamps[0] >= 0.25, stamps


async def test_closing_the_generator_closes_the_api_stream(
    server: ServerBackend, cpu: CpuRunner
) -> None:
    server.script(Reply(text=[f"chunk {i} " for i in range(60)], delay=0.05))
    stream = make_analyzer(server, cpu).stream(single_task(solid_png((1, 2, 3))))
    assert await anext(stream) == TextDelta("chunk 0 ")
    assert await anext(stream) == TextDelta("chunk 1 ")
    await stream.aclose()
    assert await server.fake.wait_for_async(lambda: server.fake.disconnects == 1, timeout=2)


async def test_cancelling_the_consumer_closes_the_api_stream(
    server: ServerBackend, cpu: CpuRunner
) -> None:
    server.script(Reply(text=[f"chunk {i} " for i in range(60)], delay=0.05))
    analyzer = make_analyzer(server, cpu)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in analyzer.stream(single_task(solid_png((1, 2, 3)))):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await server.fake.wait_for_async(lambda: server.fake.disconnects == 1, timeout=2)


async def test_connection_dropped_mid_stream_becomes_ai_error(
    server: ServerBackend, cpu: CpuRunner
) -> None:
    server.script(Reply(text=("one ", "two ", "three"), drop_after=1))
    deltas, err = await deltas_until_error(make_analyzer(server, cpu), single_task(), AIError)
    assert type(err) is AIError
    assert deltas == ["one "]
    assert "mid-response" in err.message


def test_fake_server_answers_sync_clients_without_streaming(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(Reply(text=("Hello", " there"), thinking="hmm"))
    with anthropic.Anthropic(api_key=KEY, base_url=fake_anthropic.base_url) as client:
        message = client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[1].type == "text" and message.content[1].text == "Hello there"
    assert fake_anthropic.requests[0].json["messages"][0]["content"] == "hi"


# --- the error table on its own ------------------------------------------------------------------


def _status_error(
    cls: type[anthropic.APIStatusError], status: int, headers: dict[str, str], error_type: str
) -> anthropic.APIStatusError:
    request = httpx2.Request("POST", "https://api.anthropic.test/v1/messages")
    response = httpx2.Response(status, headers=headers, request=request)
    body = {"type": "error", "error": {"type": error_type, "message": "x"}}
    return cls("x", response=response, body=body)


def test_retry_after_as_http_date() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    err = map_anthropic_error(
        _status_error(anthropic.RateLimitError, 429, {"retry-after": when}, "rate_limit_error")
    )
    assert isinstance(err, AIBusy)
    assert err.retry_after is not None and 110 <= err.retry_after <= 121


def test_unparseable_retry_after_uses_the_default() -> None:
    err = map_anthropic_error(
        _status_error(anthropic.RateLimitError, 429, {"retry-after": "soon"}, "rate_limit_error")
    )
    assert isinstance(err, AIBusy) and err.retry_after == DEFAULT_BUSY_RETRY_AFTER


def test_rate_limit_type_in_a_stream_error_is_busy() -> None:
    err = map_anthropic_error(_status_error(anthropic.APIStatusError, 200, {}, "rate_limit_error"))
    assert isinstance(err, AIBusy) and "rate limiting" in err.message


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (anthropic.APITimeoutError(httpx2.Request("POST", "https://a.test")), "in time"),
        (anthropic.APIConnectionError(request=httpx2.Request("POST", "https://a.test")), "connect"),
        (httpx2.ReadTimeout("read timed out"), "stopped answering"),
        (httpx2.RemoteProtocolError("peer closed"), "broke"),
    ],
)
def test_transport_failures_become_ai_error(exc: BaseException, text: str) -> None:
    err = map_anthropic_error(exc)
    assert type(err) is AIError and text in err.message


def test_fake_server_can_run_standalone() -> None:
    with FakeAnthropic() as fake:
        base_url = fake.base_url
        assert base_url.startswith("http://127.0.0.1:")
    with pytest.raises(RuntimeError):
        _ = fake.base_url


# --- prompt text ---------------------------------------------------------------------------------


def test_projected_bbox_is_not_called_lon_lat() -> None:
    image = ImageInput(
        data=b"",
        content_type="image/png",
        bbox=(1113194.9, 5621521.5, 1168854.7, 5670887.7),
        crs="EPSG:3857",
    )
    text = single_image_text(image, "  ")
    assert "lon/lat" not in text
    assert "EPSG:3857 coordinates" in text and "1113194.9, 5621521.5" in text
    assert DEFAULT_QUESTION in text  # a blank question counts as none


def test_lon_lat_bbox_gives_a_sense_of_scale() -> None:
    line = describe_bbox((10.0, 45.0, 10.5, 45.3), "EPSG:4326")
    assert "west 10, south 45, east 10.5, north 45.3" in line
    assert "roughly 39 km east-west by 33 km north-south" in line


def test_comparison_of_different_areas_says_so() -> None:
    before = ImageInput(data=b"", content_type="image/png", layer="A", time="2020-01-01")
    after = dataclasses.replace(before, layer="B", time="2021-01-01")
    text = comparison_text(before, after, None)
    assert "Layer: A" in text and "Layer: B" in text
    assert "may not be real change" in text
    assert DEFAULT_COMPARISON_QUESTION in text


async def test_three_images_are_refused(api: Backend, cpu: CpuRunner) -> None:
    image = single_task().images[0]
    with pytest.raises(InvalidRequest):
        await collect(make_analyzer(api, cpu), AnalysisTask(images=[image, image, image]))
    assert api.requests == []


def test_the_sdk_is_imported_only_when_a_key_is_set(tmp_path: Path) -> None:
    # The anthropic SDK adds ~48 MB to a process: a service without a key never imports it.
    script = """
import asyncio, sys
from pathlib import Path
from satapi.app import create_app, open_resources
from satapi.config import Settings

async def main(key):
    settings = Settings(data_dir=Path(sys.argv[1]), anthropic_api_key=key)
    create_app(settings).openapi()
    async with open_resources(settings) as resources:
        return resources.analysis.ai_available

print(asyncio.run(main(None)), "anthropic" in sys.modules)
print(asyncio.run(main("sk-test")), "anthropic" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.splitlines() == ["False False", "True True"]


def test_json_body_splices_the_images_into_the_same_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from satapi.analyzers import claude

    encoded: list[str] = []  # what went through the JSON encoder
    real = claude._JSON

    class Spy:
        def encode(self, obj: object) -> str:
            encoded.append(real.encode(obj))
            return encoded[-1]

    monkeypatch.setattr(claude, "_JSON", Spy())

    def image(data: bytes) -> dict[str, object]:
        b64 = base64.b64encode(data).decode()
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": b64},
        }

    one, two = image(bytes(range(256)) * 50), image(b"\x89PNG other")
    text = {"type": "text", "text": 'What is in it? «ünïcode» "quoted" \\ \x00'}
    cases = [
        ([one, text], "system", True),
        (
            [{"type": "text", "text": "Before"}, one, {"type": "text", "text": "After"}, two],
            "s",
            True,
        ),
        # A marker elsewhere: encoded whole, the same JSON all the same.
        ([one, {"type": "text", "text": "\x00image:0"}], "system", False),
        ([one, two, {"type": "text", "text": "\x00image:1"}], "system", False),
        ([one, text], "\x00image:0", False),
        ("text only", "system", True),
    ]
    for content, system, spliced in cases:
        request = {
            "model": "m",
            "max_tokens": 100,
            "system": system,
            "messages": [{"role": "user", "content": content}],
        }
        encoded.clear()
        body = claude.json_body(request)
        assert json.loads(body) == request
        assert body.decode() == json.dumps(request, ensure_ascii=False, separators=(",", ":"))
        assert len(encoded) == (1 if spliced else 2), content
        if spliced and not isinstance(content, str):
            assert one["source"]["data"] not in encoded[0]  # type: ignore[index]
