"""POST /api/comparison/{download,analyze,analyze_stream} in-process against a mocked WMS (respx).

The before/after images are synthetic: the whole frame is forest green, and on the later date a
brown patch covers exactly 20 % of it (the top-left 2/5 x 1/2 of the frame).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import respx
from PIL import Image

from satapi.analyzers.pixels import CHANGE_MASK_LEGEND
from satapi.config import Settings
from satapi.stores.local import TEMP_PREFIX
from satapi.wms_client import GetMapRequest
from tests.conftest import WMS_URL, store_files
from tests.support.fake_anthropic import FakeAnthropic
from tests.test_images_api import SERVICE_EXCEPTION, SlowWMS, _app_client, permits_back

BEFORE, AFTER = "2024-01-01", "2024-06-01"
GREEN = (34, 139, 34)
BROWN = (150, 110, 70)
BBOX = [10.0, 45.0, 14.0, 47.0]
WIDTH, HEIGHT = 100, 50
PAIR: dict[str, Any] = {
    "bbox": BBOX,
    "width": WIDTH,
    "height": HEIGHT,
    "before": {"time": BEFORE},
    "after": {"time": AFTER},
}
LOCAL: dict[str, Any] = {**PAIR, "analyzer": "local"}
KEY = "sk-ant-api03-COMPARISON-TEST-SECRET-0a1b2c3d"
ALLOWED = "https://maps.allowed.test/wms"


def patch_box(width: int, height: int) -> tuple[slice, slice]:
    """(rows, cols) of the changed patch: 2/5 of the width by 1/2 of the height = 20 %."""
    return slice(0, height // 2), slice(0, width * 2 // 5)


def scene(width: int, height: int, when: str | None) -> np.ndarray:
    """The synthetic scene on `when`: green, with the brown patch from AFTER on."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[...] = GREEN
    if when is not None and when >= AFTER:
        img[patch_box(width, height)] = BROWN
    return img


def png_of(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def scene_response(request: httpx.Request, _n: int) -> httpx.Response:
    """The GetMap answer for the request's WIDTH, HEIGHT and TIME."""
    params = request.url.params
    img = scene(int(params["WIDTH"]), int(params["HEIGHT"]), params.get("TIME"))
    return httpx.Response(200, content=png_of(img), headers={"content-type": "image/png"})


def scene_wms(latency: float = 0.0) -> SlowWMS:
    """A slow mocked WMS serving the synthetic scene (counts in-flight and cancelled requests)."""
    return SlowWMS(latency=latency, responder=scene_response)


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def hex_rgb(value: str) -> tuple[int, int, int]:
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


def leftovers(data_dir: Path, image_id: str | None = None) -> list[Path]:
    """Temp files in the store, and (given an id) any file of that image."""
    return [
        p
        for p in store_files(data_dir)
        if p.name.startswith(TEMP_PREFIX) or (image_id is not None and image_id in p.name)
    ]


@pytest.fixture
def upstream(wms: respx.Router) -> SlowWMS:
    """The synthetic scene without latency, as respx route `wms`."""
    side_effect = scene_wms()
    wms.get(WMS_URL, name="wms").mock(side_effect=side_effect)
    return side_effect


# --- download ------------------------------------------------------------------------------------


async def test_pair_downloads_concurrently_in_about_one_latency(
    client: httpx.AsyncClient, wms: respx.Router
) -> None:
    fast = scene_wms()
    wms.get(WMS_URL, params__contains={"WIDTH": "8"}).mock(side_effect=fast)
    slow = scene_wms(latency=1.0)
    wms.get(WMS_URL).mock(side_effect=slow)
    # A warm-up pair first, so one-off start-up costs do not count against the timing below.
    warm = await client.post("/api/comparison/download", json={**PAIR, "width": 8, "height": 8})
    assert warm.status_code == 200 and fast.calls == 2, warm.text
    started = time.perf_counter()
    r = await client.post("/api/comparison/download", json=PAIR)
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    assert set(body["images"]) == {"before", "after"}
    for side, when in (("before", BEFORE), ("after", AFTER)):
        meta = body["images"][side]
        assert meta["time"] == when and meta["cached"] is False
        assert meta["width"] == WIDTH and meta["height"] == HEIGHT
        assert meta["content_type"] == "image/png" and meta["provider"] == "test"
        assert meta["layer"] == "scene" and meta["bbox"] == BBOX
        assert meta["url"] == f"/api/images/{meta['id']}"
        got = await client.get(meta["url"])
        assert got.status_code == 200
        assert np.array_equal(decode(got.content), scene(WIDTH, HEIGHT, when))
    assert body["images"]["before"]["id"] != body["images"]["after"]["id"]
    timings = body["timings"]
    assert set(timings) == {"before", "after", "analysis_s", "total_s"}
    assert timings["analysis_s"] is None
    for side in ("before", "after"):
        assert set(timings[side]) == {"queue_wait_s", "download_s"}
        assert 0.9 <= timings[side]["download_s"] < 1.6
        assert 0 <= timings[side]["queue_wait_s"] < 0.5
    assert 0.9 <= timings["total_s"] < 1.6
    # Both at once: about one latency, not two, and the upstream saw both in flight together.
    assert elapsed < 1.6
    assert slow.calls == 2 and slow.max_in_flight == 2
    assert permits_back(client)


async def test_each_side_may_override_the_layer(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS
) -> None:
    body = {
        **PAIR,
        "layer": "base",
        "before": {"time": BEFORE, "layer": "s2cloudless-2023"},
        "after": {"time": AFTER},
    }
    r = await client.post("/api/comparison/download", json=body)
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert images["before"]["layer"] == "s2cloudless-2023"
    assert images["after"]["layer"] == "base"
    sent = {c.request.url.params["TIME"]: c.request.url.params for c in wms["wms"].calls}
    assert sent[BEFORE]["LAYERS"] == "s2cloudless-2023"
    assert sent[AFTER]["LAYERS"] == "base"


def _getmap_url(base: str, when: str) -> str:
    query = httpx.QueryParams(
        {
            "SERVICE": "WMS",
            "VERSION": "1.3.0",
            "REQUEST": "GetMap",
            "LAYERS": "scene",
            "STYLES": "",
            "CRS": "EPSG:4326",
            "BBOX": "45,10,47,14",
            "WIDTH": str(WIDTH),
            "HEIGHT": str(HEIGHT),
            "FORMAT": "image/png",
            "TIME": when,
        }
    )
    return f"{base}?{query}"


async def test_image_urls_of_allowed_hosts_work(
    make_settings: Callable[..., Settings], wms: respx.Router, upstream: SlowWMS
) -> None:
    other = scene_wms()
    wms.get(ALLOWED, name="allowed").mock(side_effect=other)
    settings = make_settings(allowed_hosts=["maps.allowed.test"])
    body = {
        "image1_url": _getmap_url(WMS_URL, BEFORE),  # a configured provider's host
        "image2_url": _getmap_url(ALLOWED, AFTER),  # an allowed host
    }
    async with _app_client(settings, wms=wms) as c:
        r = await c.post("/api/comparison/download", json=body)
        assert r.status_code == 200, r.text
        images = r.json()["images"]
        assert images["before"]["provider"] == "test" and images["before"]["time"] == BEFORE
        assert images["after"]["provider"] == "https://maps.allowed.test:443"
        assert images["after"]["time"] == AFTER
        assert (images["before"]["width"], images["before"]["height"]) == (WIDTH, HEIGHT)
    assert wms["wms"].call_count == 1 and wms["allowed"].call_count == 1


@pytest.mark.parametrize("bad_side", ["before", "after"])
async def test_disallowed_image_url_is_400_naming_the_side_and_nothing_is_fetched(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS, bad_side: str
) -> None:
    evil = wms.get(url__startswith="http://169.254.169.254").mock(
        return_value=httpx.Response(200, content=b"secret")
    )
    bad = _getmap_url("http://169.254.169.254/latest/wms", AFTER)
    good = _getmap_url(WMS_URL, BEFORE)
    body = {"image1_url": bad, "image2_url": good}
    if bad_side == "after":
        body = {"image1_url": good, "image2_url": bad}
    r = await client.post("/api/comparison/download", json=body)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["success"] is False and error["code"] == "url_not_allowed"
    assert error["side"] == bad_side
    assert error["error"].startswith(f"The {bad_side} image failed:")
    assert not evil.called
    assert not wms["wms"].called  # validated before anything is fetched


@pytest.mark.parametrize(
    "body",
    [
        {"image1_url": _getmap_url(WMS_URL, BEFORE)},
        {"image2_url": _getmap_url(WMS_URL, AFTER)},
        {**PAIR, "image1_url": _getmap_url(WMS_URL, BEFORE)},
    ],
)
async def test_only_one_image_url_is_422(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS, body: dict[str, Any]
) -> None:
    for path in ("/api/comparison/download", "/api/comparison/analyze"):
        r = await client.post(path, json=body)
        assert r.status_code == 422, r.text
        error = r.json()
        assert error["code"] == "validation_error"
        assert "image1_url and image2_url" in error["error"]
    assert not wms["wms"].called


@pytest.mark.parametrize(
    "body",
    [
        {"bbox": BBOX, "before": {"time": BEFORE}},  # no after
        {"before": {"time": BEFORE}, "after": {"time": AFTER}},  # no bbox
        {**PAIR, "before": {"time": "last week"}},
        {**PAIR, "before": {"time": BEFORE, "colour": "red"}},
    ],
)
async def test_incomplete_pair_is_422(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS, body: dict[str, Any]
) -> None:
    r = await client.post("/api/comparison/download", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error"
    assert not wms["wms"].called


# --- one side fails ------------------------------------------------------------------------------


Failure = Callable[[httpx.Request], Awaitable[httpx.Response]]


def failing(kind: str, other: SlowWMS) -> Failure:
    """A respx side effect failing at once, as soon as `other` has a request in flight.

    Waiting for the other side (bounded) makes sure there is a transfer to cancel.
    """

    async def respond(_request: httpx.Request) -> httpx.Response:
        for _ in range(300):
            if other.in_flight:
                break
            await asyncio.sleep(0.01)
        if kind == "http500":
            return httpx.Response(500, content=b"boom", headers={"content-type": "text/plain"})
        return httpx.Response(
            200, content=SERVICE_EXCEPTION, headers={"content-type": "application/vnd.ogc.se_xml"}
        )

    return respond


async def _settled(client: httpx.AsyncClient) -> None:
    """Wait (bounded) until cancelled downloads have unwound: the answer may come first."""
    images = client.app.state.resources.images  # type: ignore[attr-defined]
    for _ in range(300):
        if images.downloads_in_progress == 0 and permits_back(client):
            return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("side", ["before", "after"])
@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("http500", 502, "upstream_error"), ("service_exception", 502, "wms_exception")],
)
async def test_one_side_fails_fast_the_other_is_cancelled(
    client: httpx.AsyncClient,
    wms: respx.Router,
    settings: Settings,
    side: str,
    kind: str,
    status: int,
    code: str,
) -> None:
    failing_time = BEFORE if side == "before" else AFTER
    slow = scene_wms(latency=5.0)
    broken = wms.get(WMS_URL, params__contains={"TIME": failing_time}).mock(
        side_effect=failing(kind, slow)
    )
    wms.get(WMS_URL).mock(side_effect=slow)

    started = time.perf_counter()
    r = await client.post("/api/comparison/download", json=PAIR)
    elapsed = time.perf_counter() - started
    assert r.status_code == status, r.text
    error = r.json()
    assert error["success"] is False and error["code"] == code
    assert error["side"] == side
    assert error["error"].startswith(f"The {side} image failed: ")
    assert error["request_id"] == r.headers["x-request-id"]
    if code == "wms_exception":
        assert error["wms_code"] == "LayerNotDefined"
    assert elapsed < 2.0  # did not wait for the slow side
    assert broken.call_count == 1 and slow.calls == 1

    await _settled(client)
    # The other side's request was cancelled at the upstream, not left running.
    assert slow.cancelled == 1 and slow.in_flight == 0
    assert client.app.state.resources.images.downloads_in_progress == 0  # type: ignore[attr-defined]
    assert permits_back(client)
    assert leftovers(settings.data_dir) == []
    assert store_files(settings.data_dir) == []  # nothing of either side was kept


async def test_failed_side_is_named_in_the_analysis_too(
    client: httpx.AsyncClient, wms: respx.Router, settings: Settings
) -> None:
    slow = scene_wms(latency=5.0)
    wms.get(WMS_URL, params__contains={"TIME": AFTER}).mock(side_effect=failing("http500", slow))
    wms.get(WMS_URL).mock(side_effect=slow)
    r = await client.post("/api/comparison/analyze", json=LOCAL)
    assert r.status_code == 502, r.text
    assert r.json()["side"] == "after" and r.json()["code"] == "upstream_error"
    await _settled(client)
    assert slow.cancelled == 1
    assert permits_back(client)
    assert store_files(settings.data_dir) == []


def _after_target(client: httpx.AsyncClient, bbox: tuple[float, ...] = tuple(BBOX)) -> Any:
    images = client.app.state.resources.images  # type: ignore[attr-defined]
    request = GetMapRequest(
        layer="scene",
        bbox=bbox,
        width=WIDTH,
        height=HEIGHT,
        time=AFTER,  # type: ignore[arg-type]
    )
    return images, images.target(None, request)


async def test_a_request_right_after_a_cancelled_download_starts_afresh(
    client: httpx.AsyncClient, wms: respx.Router, settings: Settings
) -> None:
    """Regression: it used to join the download being cancelled and fail with CancelledError."""
    slow = scene_wms(latency=0.3)
    wms.get(WMS_URL).mock(side_effect=slow)
    images, target = _after_target(client)
    first = asyncio.create_task(images.fetch(target))
    for _ in range(300):
        if slow.in_flight:
            break
        await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    again = await images.fetch(target)  # while the cancelled one may still be unwinding
    assert again.record.id == target.image_id and not again.shared
    assert slow.calls == 2 and slow.cancelled == 1
    assert permits_back(client)
    assert leftovers(settings.data_dir) == []


async def test_cancelling_a_download_at_any_point_leaves_no_temp_file(
    client: httpx.AsyncClient, wms: respx.Router, settings: Settings
) -> None:
    """Regression: a cancel while the temp file was being opened (in a worker thread) leaked it
    (an open handle and an empty `.tmp-` file)."""
    wms.get(WMS_URL).mock(side_effect=scene_wms(latency=5.0))
    for n in range(48):
        images, target = _after_target(client, (10.0, 45.0, 14.0, 47.0 - n * 0.01))
        task = asyncio.create_task(images.fetch(target))
        for _ in range(n % 16):
            await asyncio.sleep(0)  # cancel after n steps of the event loop
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await _settled(client)
    gc.collect()  # an unclosed file would be reported (and fail the test) here
    assert leftovers(settings.data_dir) == []
    assert store_files(settings.data_dir) == []
    assert permits_back(client)


# --- local change analysis -----------------------------------------------------------------------


async def test_local_change_analysis_finds_the_changed_patch(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS
) -> None:
    r = await client.post("/api/comparison/analyze", json=LOCAL)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"success", "analysis_id", "images", "analysis", "timings"}
    assert len(body["analysis_id"]) == 64
    analysis = body["analysis"]
    assert analysis["analyzer"] == "local" and analysis["model"] is None
    assert analysis["cached"] is False and analysis["usage"] is None
    assert "heuristic" in analysis["text"].lower()
    metrics = analysis["metrics"]
    assert metrics["changed_fraction"] == pytest.approx(0.20, abs=0.03)
    assert metrics["valid_fraction"] == pytest.approx(1.0)
    assert metrics["deltas"]["vegetation_fraction"] == pytest.approx(-0.20, abs=0.03)
    assert metrics["deltas"]["bare_fraction"] == pytest.approx(0.20, abs=0.03)
    assert metrics["losses"]["vegetation"] == pytest.approx(0.20, abs=0.03)
    assert metrics["gains"]["bare"] == pytest.approx(0.20, abs=0.03)
    assert metrics["before"]["vegetation_fraction"] == pytest.approx(1.0)
    assert metrics["after"]["vegetation_fraction"] == pytest.approx(0.80, abs=0.03)
    timings = body["timings"]
    assert timings["analysis_s"] is not None and timings["analysis_s"] >= 0
    assert timings["total_s"] >= timings["analysis_s"]

    images = body["images"]
    assert set(images) == {"before", "after", "change_mask"}
    assert images["before"]["time"] == BEFORE and images["after"]["time"] == AFTER
    mask_meta = images["change_mask"]
    assert mask_meta["content_type"] == "image/png"
    assert (mask_meta["width"], mask_meta["height"]) == (WIDTH, HEIGHT)
    got = await client.get(mask_meta["url"])
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    mask = decode(got.content)
    assert mask.shape == (HEIGHT, WIDTH, 3)
    rows, cols = patch_box(WIDTH, HEIGHT)
    changed = np.zeros((HEIGHT, WIDTH), dtype=bool)
    changed[rows, cols] = True
    loss = np.array(hex_rgb(CHANGE_MASK_LEGEND["vegetation_loss"]), dtype=np.uint8)
    assert (mask[changed] == loss).all()
    unchanged = mask[~changed].astype(int)
    # Dimmed: grey (R = G = B) at no more than 30 % brightness, never a legend colour.
    assert (unchanged[:, 0] == unchanged[:, 1]).all() and (unchanged[:, 1] == unchanged[:, 2]).all()
    assert unchanged.max() <= 255 * 3 // 10
    assert not (mask[~changed] == loss).all(axis=1).any()
    assert wms["wms"].call_count == 2

    # The repeat is served from the caches: same answer, no new upstream call.
    again = await client.post("/api/comparison/analyze", json=LOCAL)
    assert again.status_code == 200, again.text
    repeat = again.json()
    assert repeat["analysis"]["cached"] is True
    assert repeat["analysis_id"] == body["analysis_id"]
    assert {k: v for k, v in repeat["analysis"].items() if k != "cached"} == {
        k: v for k, v in analysis.items() if k != "cached"
    }
    assert repeat["images"]["before"]["cached"] is True
    assert repeat["images"]["after"]["cached"] is True
    assert repeat["images"]["change_mask"]["id"] == mask_meta["id"]
    assert wms["wms"].call_count == 2
    resolved = await client.get(repeat["images"]["change_mask"]["url"])
    assert resolved.status_code == 200 and resolved.content == got.content

    stored = await client.get(f"/api/analyses/{body['analysis_id']}")
    assert stored.status_code == 200, stored.text
    record = stored.json()
    assert record["success"] is True and record["analysis_id"] == body["analysis_id"]
    assert record["analysis"] == analysis
    assert record["images"]["change_mask"]["id"] == mask_meta["id"]
    assert "derived_images" not in record


async def test_evicted_change_mask_is_made_again(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS, settings: Settings
) -> None:
    first = (await client.post("/api/comparison/analyze", json=LOCAL)).json()
    mask_id = first["images"]["change_mask"]["id"]
    for path in store_files(settings.data_dir):
        if path.name.startswith(mask_id):
            path.unlink()  # as eviction would
    assert (await client.get(first["images"]["change_mask"]["url"])).status_code == 404
    again = await client.post("/api/comparison/analyze", json=LOCAL)
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["analysis"]["cached"] is False  # analysed again so the link works
    assert (await client.get(body["images"]["change_mask"]["url"])).status_code == 200
    assert wms["wms"].call_count == 2


# --- Claude ---------------------------------------------------------------------------------------


@pytest.fixture
async def ai_client(
    make_settings: Callable[..., Settings],
    fake_anthropic: FakeAnthropic,
    wms: respx.Router,
    upstream: SlowWMS,
) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose Claude analyzer talks to the fake Messages API (127.0.0.1 passes respx)."""
    wms.route(host="127.0.0.1", name="local").pass_through()
    settings = make_settings(
        anthropic_api_key=KEY,
        anthropic_base_url=fake_anthropic.base_url,
        anthropic_max_retries=0,
    )
    async with _app_client(settings, wms=wms) as c:
        yield c


async def test_claude_gets_both_images_in_one_message_labelled_with_dates(
    ai_client: httpx.AsyncClient, fake_anthropic: FakeAnthropic, wms: respx.Router
) -> None:
    prompt = "Was any forest cleared?"
    r = await ai_client.post(
        "/api/comparison/analyze", json={**PAIR, "analyzer": "claude", "prompt": prompt}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["analysis"]["analyzer"] == "claude"
    assert body["analysis"]["text"] == "The image shows fields, a river and a small town."
    assert body["analysis"]["usage"]["input_tokens"] == 1234
    assert set(body["images"]) == {"before", "after"}  # Claude makes no change mask

    assert len(fake_anthropic.requests) == 1
    (message,) = fake_anthropic.requests[0].json["messages"]
    content = message["content"]
    images = [block for block in content if block["type"] == "image"]
    assert len(images) == 2
    decoded = []
    for block in images:
        assert block["source"]["type"] == "base64"
        with Image.open(io.BytesIO(base64.b64decode(block["source"]["data"]))) as img:
            decoded.append(np.asarray(img.convert("RGB")))
    # Before first, then after: only the after image has the brown patch (the images may be
    # re-encoded as JPEG, so compare the patch's interior on average).
    assert decoded[0].shape == decoded[1].shape == (HEIGHT, WIDTH, 3)
    inner = (slice(4, HEIGHT // 2 - 4), slice(4, WIDTH * 2 // 5 - 4))
    assert np.abs(decoded[0][inner].mean(axis=(0, 1)) - GREEN).max() < 10
    assert np.abs(decoded[1][inner].mean(axis=(0, 1)) - BROWN).max() < 10
    # Each image is preceded by a label with its date.
    kinds = [block["type"] for block in content]
    assert kinds == ["text", "image", "text", "image", "text"]
    assert "Before" in content[0]["text"] and BEFORE in content[0]["text"]
    assert "After" in content[2]["text"] and AFTER in content[2]["text"]
    assert BEFORE in content[4]["text"] and AFTER in content[4]["text"]
    assert prompt in content[4]["text"]
    assert wms["wms"].call_count == 2


# --- SSE -----------------------------------------------------------------------------------------


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """(event name, JSON data) for each event of an SSE body."""
    events: list[tuple[str, Any]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


async def read_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> list[tuple[str, Any]]:
    async with client.stream("POST", "/api/comparison/analyze_stream", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join([chunk async for chunk in r.aiter_text()])
    return parse_sse(text)


async def test_stream_events_and_result_equal_to_the_plain_answer(
    make_settings: Callable[..., Settings], wms: respx.Router, tmp_path: Path
) -> None:
    slow = scene_wms(latency=0.2)
    wms.get(WMS_URL).mock(side_effect=slow)
    async with _app_client(make_settings(data_dir=tmp_path / "stream"), wms=wms) as c:
        events = await read_stream(c, LOCAL)
    names = [name for name, _ in events]
    statuses = [data for name, data in events if name == "status"]
    assert statuses[0] == {"stage": "queued"}
    downloading = [s for s in statuses if s["stage"] == "downloading"]
    assert sorted(s["side"] for s in downloading) == ["after", "before"]
    downloaded = [s for s in statuses if s["stage"] == "downloaded"]
    assert downloaded == [
        {"stage": "downloaded", "side": "before", "cached": False},
        {"stage": "downloaded", "side": "after", "cached": False},
    ]
    assert {"stage": "analyzing", "analyzer": "local"} in statuses
    order = [s["stage"] for s in statuses]
    assert order.index("downloaded") > max(i for i, s in enumerate(order) if s == "downloading")
    assert order.index("analyzing") > order.index("downloaded")
    image_events = [data for name, data in events if name == "image"]
    assert [e["side"] for e in image_events] == ["before", "after"]
    assert [e["time"] for e in image_events] == [BEFORE, AFTER]
    last_downloaded = max(i for i, (n, d) in enumerate(events) if d.get("stage") == "downloaded")
    assert names.index("image") > last_downloaded
    deltas = [data["text"] for name, data in events if name == "delta"]
    assert deltas and names[-1] == "result" and "error" not in names
    assert names.index("delta") > max(i for i, n in enumerate(names) if n == "image")
    result = events[-1][1]
    assert "".join(deltas) == result["analysis"]["text"]

    # The plain endpoint on a fresh app (same requests, nothing cached) gives the same answer.
    async with _app_client(make_settings(data_dir=tmp_path / "plain"), wms=wms) as c:
        plain = await c.post("/api/comparison/analyze", json=LOCAL)
    assert plain.status_code == 200, plain.text
    answer = plain.json()
    assert result["analysis"] == answer["analysis"]
    assert result["analysis_id"] == answer["analysis_id"]
    assert {k: v["id"] for k, v in result["images"].items()} == {
        k: v["id"] for k, v in answer["images"].items()
    }
    assert slow.calls == 4


async def test_stream_of_a_cached_pair_and_the_stored_result(
    client: httpx.AsyncClient, wms: respx.Router, upstream: SlowWMS
) -> None:
    first = await read_stream(client, LOCAL)
    result = first[-1][1]
    stored = (await client.get(f"/api/analyses/{result['analysis_id']}")).json()
    assert stored["analysis"] == result["analysis"]
    again = await read_stream(client, LOCAL)
    statuses = [data for name, data in again if name == "status"]
    assert {"stage": "downloaded", "side": "before", "cached": True} in statuses
    assert {"stage": "downloaded", "side": "after", "cached": True} in statuses
    assert not [s for s in statuses if s["stage"] == "downloading"]
    assert again[-1][0] == "result" and again[-1][1]["analysis"]["cached"] is True
    mask_url = again[-1][1]["images"]["change_mask"]["url"]
    assert (await client.get(mask_url)).status_code == 200
    assert wms["wms"].call_count == 2


async def test_stream_failure_after_start_is_an_error_event_naming_the_side(
    client: httpx.AsyncClient, wms: respx.Router, settings: Settings
) -> None:
    slow = scene_wms(latency=5.0)
    wms.get(WMS_URL, params__contains={"TIME": BEFORE}).mock(side_effect=failing("http500", slow))
    wms.get(WMS_URL).mock(side_effect=slow)
    events = await read_stream(client, LOCAL)
    name, data = events[-1]
    assert name == "error"
    assert data["code"] == "upstream_error" and data["side"] == "before"
    assert "before" in data["error"]
    assert "result" not in [n for n, _ in events]
    await _settled(client)
    assert slow.cancelled == 1
    assert permits_back(client)
    assert store_files(settings.data_dir) == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"image1_url": _getmap_url(WMS_URL, BEFORE)}, 422, "validation_error"),
        ({**LOCAL, "width": 100_000}, 422, "invalid_request"),  # over max_image_px
        ({**LOCAL, "provider": "nope"}, 422, "unknown_provider"),
        ({**LOCAL, "analyzer": "claude"}, 400, "ai_not_configured"),
        (
            {
                "image1_url": _getmap_url("http://169.254.169.254/wms", BEFORE),
                "image2_url": _getmap_url(WMS_URL, AFTER),
            },
            400,
            "url_not_allowed",
        ),
    ],
)
async def test_stream_validation_errors_are_plain_json(
    client: httpx.AsyncClient,
    wms: respx.Router,
    upstream: SlowWMS,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    r = await client.post("/api/comparison/analyze_stream", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["success"] is False and r.json()["code"] == code
    assert not wms["wms"].called
