"""POST /api/vision/analyze_satellite in-process: local analyzer, Claude via the fake API, errors.

The WMS is mocked with respx; the Anthropic Messages API is the fake server on 127.0.0.1
(`fake_anthropic`), reached through a respx pass-through route.
"""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest
import respx
from asgi_lifespan import LifespanManager
from PIL import Image

from satapi.app import create_app
from satapi.config import Settings
from satapi.imagery import FetchedImage
from satapi.storage import ImageRecord
from satapi.stores.local import LocalImageStore
from satapi.wms_client import GetMapRequest
from tests.conftest import WMS_URL
from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.support.wms_mock import mock_transport

KEY = "sk-ant-api03-VISION-TEST-SECRET-9f8e7d6c5b4a"
BBOX = [10.0, 45.0, 14.0, 47.0]
BODY: dict[str, Any] = {"bbox": BBOX, "width": 100, "height": 50, "analyzer": "local"}

FOREST = (34, 139, 34)
BARE = (150, 110, 70)
WATER = (20, 50, 120)


def land_cover_png(width: int, height: int) -> bytes:
    """Columns: 30 % forest green, 50 % bare brown, 20 % water blue (by width)."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    forest_end = round(width * 0.3)
    bare_end = round(width * 0.8)
    img[:, :forest_end] = FOREST
    img[:, forest_end:bare_end] = BARE
    img[:, bare_end:] = WATER
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


class LandCoverWMS:
    """respx side effect: a land-cover PNG of the requested WIDTH x HEIGHT, counting calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.params: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        params = dict(request.url.params)
        self.params.append(params)
        width, height = int(params["WIDTH"]), int(params["HEIGHT"])
        return httpx.Response(
            200, content=land_cover_png(width, height), headers={"content-type": "image/png"}
        )


@asynccontextmanager
async def app_client(
    settings: Settings, wms: respx.Router | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client for an app built from `settings`, lifespan running."""
    app = create_app(settings, http_transport=mock_transport(wms))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://satapi.test"
        ) as c,
    ):
        yield c


@pytest.fixture
def upstream(wms: respx.Router) -> LandCoverWMS:
    """The mocked WMS; requests to 127.0.0.1 (the fake Anthropic API) pass through."""
    side_effect = LandCoverWMS()
    wms.get(WMS_URL, name="wms").mock(side_effect=side_effect)
    wms.route(host="127.0.0.1", name="local").pass_through()
    return side_effect


@pytest.fixture
async def ai_client(
    make_settings: Callable[..., Settings],
    fake_anthropic: FakeAnthropic,
    upstream: LandCoverWMS,
    wms: respx.Router,
) -> AsyncIterator[httpx.AsyncClient]:
    """An app with an Anthropic key, pointed at the fake Messages API, no SDK retries."""
    settings = make_settings(
        anthropic_api_key=KEY,
        anthropic_base_url=fake_anthropic.base_url,
        anthropic_max_retries=0,
    )
    async with app_client(settings, wms=wms) as c:
        yield c


# --- local analyzer, no key -----------------------------------------------------------------------


async def test_local_analysis_shape_fractions_cache_and_lookup(
    client: httpx.AsyncClient, wms: respx.Router, upstream: LandCoverWMS
) -> None:
    r = await client.post("/api/vision/analyze_satellite", json=BODY)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"success", "analysis_id", "image", "analysis", "timings"}
    assert body["success"] is True
    assert len(body["analysis_id"]) == 64
    analysis = body["analysis"]
    assert set(analysis) == {"analyzer", "model", "text", "metrics", "usage", "cached"}
    assert set(body["timings"]) == {"queue_wait_s", "download_s", "analysis_s", "total_s"}
    assert all(isinstance(v, float) and v >= 0 for v in body["timings"].values())
    assert analysis["analyzer"] == "local" and analysis["model"] is None
    assert analysis["usage"] is None and analysis["cached"] is False
    metrics = analysis["metrics"]
    assert metrics["vegetation_fraction"] == pytest.approx(0.30, abs=0.05)
    assert metrics["bare_fraction"] == pytest.approx(0.50, abs=0.05)
    assert metrics["water_fraction"] == pytest.approx(0.20, abs=0.05)
    assert "heuristic" in analysis["text"].lower()
    image = body["image"]
    assert image["width"] == 100 and image["height"] == 50 and image["cached"] is False
    assert image["url"] == f"/api/images/{image['id']}"
    assert wms["wms"].call_count == 1

    again = await client.post("/api/vision/analyze_satellite", json=BODY)
    assert again.status_code == 200, again.text
    repeat = again.json()
    assert repeat["analysis"]["cached"] is True
    assert repeat["image"]["cached"] is True
    assert repeat["analysis_id"] == body["analysis_id"]
    assert {k: v for k, v in repeat["analysis"].items() if k != "cached"} == {
        k: v for k, v in analysis.items() if k != "cached"
    }
    assert wms["wms"].call_count == 1  # no new upstream call

    stored = await client.get(f"/api/analyses/{body['analysis_id']}")
    assert stored.status_code == 200, stored.text
    record = stored.json()
    assert record["success"] is True and record["analysis_id"] == body["analysis_id"]
    assert record["analysis"] == analysis
    assert record["image"]["id"] == image["id"]
    assert "derived_images" not in record


async def test_unknown_and_malformed_analysis_ids(client: httpx.AsyncClient) -> None:
    unknown = await client.get("/api/analyses/" + "a" * 64)
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    for bad in ("xyz", "A" * 64, "a" * 63):
        r = await client.get(f"/api/analyses/{bad}")
        assert r.status_code == 422, bad
        assert r.json()["code"] == "validation_error"


async def test_claude_without_key_is_400_before_any_download(
    client: httpx.AsyncClient, wms: respx.Router, upstream: LandCoverWMS
) -> None:
    r = await client.post("/api/vision/analyze_satellite", json={**BODY, "analyzer": "claude"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "ai_not_configured"
    assert not wms["wms"].called


async def test_auto_without_key_uses_local(
    client: httpx.AsyncClient, upstream: LandCoverWMS
) -> None:
    r = await client.post("/api/vision/analyze_satellite", json={**BODY, "analyzer": "auto"})
    assert r.status_code == 200, r.text
    assert r.json()["analysis"]["analyzer"] == "local"
    default = await client.post(
        "/api/vision/analyze_satellite", json={k: v for k, v in BODY.items() if k != "analyzer"}
    )
    assert default.status_code == 200 and default.json()["analysis"]["analyzer"] == "local"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"prompt": "x" * 4001}, "validation_error"),
        ({"bbox": [14, 45, 10, 47]}, "invalid_bbox"),
        ({"bbox": [10, 45, 14]}, "validation_error"),
        ({"bbox": [10, 45, 200, 47]}, "invalid_bbox"),
        ({"analyzer": "gpt"}, "validation_error"),
    ],
)
async def test_invalid_requests_are_422_before_any_download(
    client: httpx.AsyncClient,
    wms: respx.Router,
    upstream: LandCoverWMS,
    change: dict[str, Any],
    code: str,
) -> None:
    r = await client.post("/api/vision/analyze_satellite", json={**BODY, **change})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code
    assert not wms["wms"].called


async def test_prompt_of_exactly_4000_chars_is_accepted(
    client: httpx.AsyncClient, upstream: LandCoverWMS
) -> None:
    r = await client.post("/api/vision/analyze_satellite", json={**BODY, "prompt": "y" * 4000})
    assert r.status_code == 200, r.text
    # The local analyzer cannot answer questions and says so.
    assert "prompt was not used" in r.json()["analysis"]["text"]


# --- Claude through the fake Messages API ---------------------------------------------------------


def _decoded_image(block: dict[str, Any]) -> Image.Image:
    assert block["type"] == "image"
    source = block["source"]
    assert source["type"] == "base64"
    assert source["media_type"] in ("image/png", "image/jpeg")
    img = Image.open(io.BytesIO(base64.b64decode(source["data"])))
    img.load()
    return img


async def test_claude_request_carries_downscaled_image_then_context_and_prompt(
    ai_client: httpx.AsyncClient,
    fake_anthropic: FakeAnthropic,
    wms: respx.Router,
    upstream: LandCoverWMS,
) -> None:
    prompt = "Is there standing water or flooding in this area?"
    body = {
        "bbox": BBOX,
        "width": 3000,
        "height": 2000,
        "time": "2024-06-01",
        "prompt": prompt,
        "analyzer": "claude",
    }
    r = await ai_client.post("/api/vision/analyze_satellite", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()

    assert len(fake_anthropic.requests) == 1
    sent = fake_anthropic.requests[0]
    assert sent.path == "/v1/messages"
    assert KEY in (sent.headers.get("x-api-key"), sent.headers.get("authorization", "")[7:])
    # The JSON route reads no deltas: it asks for one non-streamed reply (no SSE to parse).
    assert "stream" not in sent.json
    (message,) = sent.json["messages"]
    assert message["role"] == "user"
    image_block, text_block = message["content"]  # the image comes BEFORE the text
    img = _decoded_image(image_block)
    assert max(img.size) <= 1568
    assert img.width * img.height <= 1_150_000
    assert img.width / img.height == pytest.approx(1.5, rel=0.01)
    assert text_block["type"] == "text"
    text = text_block["text"]
    assert prompt in text
    assert "west 10, south 45, east 14, north 47" in text
    assert "Date: 2024-06-01" in text
    assert "Layer: scene" in text
    assert sent.json["system"]  # a system prompt was sent

    default = Reply()
    analysis = answer["analysis"]
    assert analysis["analyzer"] == "claude"
    assert analysis["text"] == "".join(default.text)
    assert analysis["model"] == default.model  # what the API reported, not the configured one
    assert analysis["usage"] == {
        "input_tokens": default.input_tokens,
        "output_tokens": len(default.text),
    }
    assert analysis["metrics"] == {} and analysis["cached"] is False
    assert answer["image"]["width"] == 3000 and answer["image"]["height"] == 2000
    assert wms["wms"].call_count == 1

    again = await ai_client.post("/api/vision/analyze_satellite", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["analysis"]["cached"] is True
    assert again.json()["analysis"]["text"] == analysis["text"]
    assert len(fake_anthropic.requests) == 1  # no second AI call
    assert wms["wms"].call_count == 1


async def test_auto_with_key_uses_claude(
    ai_client: httpx.AsyncClient, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Reply(text=["Mostly ", "forest."]))
    body = {k: v for k, v in BODY.items() if k != "analyzer"}
    r = await ai_client.post("/api/vision/analyze_satellite", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["analysis"]["analyzer"] == "claude"
    assert r.json()["analysis"]["text"] == "Mostly forest."
    assert len(fake_anthropic.requests) == 1
    # The local analyzer is still available by name.
    local = await ai_client.post("/api/vision/analyze_satellite", json=BODY)
    assert local.status_code == 200 and local.json()["analysis"]["analyzer"] == "local"
    assert len(fake_anthropic.requests) == 1


async def test_rate_limit_is_503_ai_busy_with_retry_after(
    ai_client: httpx.AsyncClient, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Reply.error(429, "rate_limit_error", retry_after="7"))
    r = await ai_client.post("/api/vision/analyze_satellite", json={**BODY, "analyzer": "claude"})
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "ai_busy" and r.json()["success"] is False
    assert r.headers["retry-after"] == "7"
    assert len(fake_anthropic.requests) == 1  # max_retries=0: no SDK retry


async def test_overloaded_529_is_503_ai_busy(
    ai_client: httpx.AsyncClient, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Reply.error(529, "overloaded_error"))
    r = await ai_client.post("/api/vision/analyze_satellite", json={**BODY, "analyzer": "claude"})
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "ai_busy" and int(r.headers["retry-after"]) >= 1


async def test_bad_key_is_502_ai_auth_and_never_echoes_the_key(
    ai_client: httpx.AsyncClient, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(
        Reply.error(401, "authentication_error", f"invalid x-api-key {KEY}")  # a hostile echo
    )
    r = await ai_client.post("/api/vision/analyze_satellite", json={**BODY, "analyzer": "claude"})
    assert r.status_code == 502, r.text
    assert r.json()["code"] == "ai_auth"
    assert KEY not in r.text
    assert KEY[-12:] not in r.text
    assert all(KEY not in v for v in r.headers.values())


async def test_server_error_is_502_ai_error(
    ai_client: httpx.AsyncClient, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Reply.error(500, "api_error", "Internal server error"))
    r = await ai_client.post("/api/vision/analyze_satellite", json={**BODY, "analyzer": "claude"})
    assert r.status_code == 502, r.text
    assert r.json()["code"] == "ai_error"
    assert KEY not in r.text
    assert len(fake_anthropic.requests) == 1
    # A failed analysis is not cached: the next request asks again and can succeed.
    fake_anthropic.script(Reply())
    ok = await ai_client.post("/api/vision/analyze_satellite", json={**BODY, "analyzer": "claude"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["analysis"]["cached"] is False
    assert len(fake_anthropic.requests) == 2


async def test_the_json_route_asks_for_one_reply_and_the_stream_route_streams(
    ai_client: httpx.AsyncClient, fake_anthropic: FakeAnthropic
) -> None:
    # A reply that would fail after its first delta when streamed (mid-stream overloads are
    # tested on the stream route, tests/test_vision_sse.py): the JSON route never streams.
    fake_anthropic.script(Reply(text=["a ", "b ", "c"], error_after=1))
    r = await ai_client.post("/api/vision/analyze_satellite", json={**BODY, "analyzer": "claude"})
    assert r.status_code == 200, r.text
    assert r.json()["analysis"]["text"] == "a b c"
    streamed = await ai_client.post(
        "/api/vision/analyze_satellite_stream",
        json={**BODY, "analyzer": "claude", "prompt": "another question"},
    )
    assert "event: error" in streamed.text and '"code": "ai_busy"' in streamed.text
    assert [("stream" in req.json) for req in fake_anthropic.requests] == [False, True]


# --- the image's bytes: from the download when it never left memory --------------------------


def _sent_image(fake_anthropic: FakeAnthropic, index: int) -> bytes:
    (message,) = fake_anthropic.requests[index].json["messages"]
    return base64.b64decode(message["content"][0]["source"]["data"])


async def test_a_fresh_small_download_goes_to_claude_without_reading_the_store(
    ai_client: httpx.AsyncClient,
    fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[str] = []
    read_bytes = LocalImageStore.read_bytes

    async def counted(self: LocalImageStore, record: ImageRecord) -> bytes:
        reads.append(record.id)
        return await read_bytes(self, record)

    monkeypatch.setattr(LocalImageStore, "read_bytes", counted)
    body = {**BODY, "analyzer": "claude"}  # a 100 x 50 PNG: within Claude's limits, sent as is
    r = await ai_client.post("/api/vision/analyze_satellite", json=body)
    assert r.status_code == 200, r.text
    image_id = r.json()["image"]["id"]
    assert reads == []  # the download's own bytes, not a read-back of the file just written
    stored = await ai_client.get(f"/api/images/{image_id}")
    assert stored.status_code == 200
    assert _sent_image(fake_anthropic, 0) == stored.content

    # The same image with another prompt: a cache hit, so its bytes come from the store.
    reads.clear()
    again = await ai_client.post(
        "/api/vision/analyze_satellite", json={**body, "prompt": "Any standing water?"}
    )
    assert again.status_code == 200, again.text
    assert again.json()["image"]["cached"] is True
    assert reads == [image_id]
    assert _sent_image(fake_anthropic, 1) == stored.content


async def test_fetch_each_keeps_no_image_bytes_in_memory(
    make_settings: Callable[..., Settings], upstream: LandCoverWMS, wms: respx.Router
) -> None:
    # A series holds every date's result at once: none of them may carry its image's bytes.
    app = create_app(make_settings(), http_transport=mock_transport(wms))
    async with LifespanManager(app):
        images = app.state.resources.images
        targets = {
            day: images.target(
                None, GetMapRequest(layer="scene", bbox=BBOX, width=64, height=32, time=day)
            )
            for day in ("2024-06-01", "2024-06-02")
        }
        single = await images.fetch(
            images.target(None, GetMapRequest(layer="scene", bbox=BBOX, width=64, height=64))
        )
        assert single.data is not None and len(single.data) == single.record.bytes
        each = await images.fetch_each(targets)
    assert upstream.calls == 3
    for fetched in each.values():
        assert isinstance(fetched, FetchedImage) and not fetched.cached
        assert fetched.data is None
