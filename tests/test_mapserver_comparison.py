"""Comparison and time series against the real MapServer WMS (the `mapserver_wms` fixture).

The layer `scene` has two dates; on the later one a brown clearcut covers exactly 20 % of the
scene where there was forest. satapi's requests to MapServer are recorded by an httpx hook.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from satapi.analyzers.pixels import CHANGE_MASK_LEGEND
from satapi.config import Settings
from tests.support.mapserver import (
    CLEARCUT,
    FOREST,
    SCENE_BBOX,
    SCENE_HEIGHT,
    SCENE_WIDTH,
    WATER,
    MapServerWMS,
    expected_fractions,
    expected_image,
)
from tests.test_images_api import _app_client, permits_back

pytestmark = pytest.mark.mapserver

EARLY, LATE = "2024-01-01", "2024-06-01"
MISSING = "2024-03-01"
SCENE: dict[str, Any] = {"bbox": list(SCENE_BBOX), "width": SCENE_WIDTH, "height": SCENE_HEIGHT}


class Recorder:
    """An httpx request hook of satapi's WMS client: the query of every request it sends."""

    def __init__(self) -> None:
        self.params: list[httpx.QueryParams] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.params.append(request.url.params)

    def requests(self, kind: str) -> list[httpx.QueryParams]:
        return [p for p in self.params if p.get("REQUEST") == kind]

    def getmap_times(self) -> list[str]:
        return sorted(p["TIME"] for p in self.requests("GetMap"))


@pytest.fixture
def recorded() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], mapserver_wms: MapServerWMS, recorded: Recorder
) -> AsyncIterator[httpx.AsyncClient]:
    """satapi with the MapServer as its default provider (WMS 1.3.0), its requests recorded."""
    settings = make_settings(
        default_provider="mapserver",
        providers={
            "mapserver": {
                "url": mapserver_wms.url,
                "version": "1.3.0",
                "default_layer": mapserver_wms.layer,
                "max_concurrency": 8,
            }
        },
    )
    async with _app_client(settings) as c:
        http = c.app.state.resources.http  # type: ignore[attr-defined]
        http.event_hooks["request"].append(recorded)
        yield c


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def area(colour: tuple[int, int, int], date: str) -> float:
    return expected_fractions(date).get(colour, 0.0)


async def test_local_comparison_finds_the_clearcut(
    client: httpx.AsyncClient, recorded: Recorder
) -> None:
    body = {**SCENE, "before": {"time": EARLY}, "after": {"time": LATE}, "analyzer": "local"}
    r = await client.post("/api/comparison/analyze", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    images = answer["images"]
    assert set(images) == {"before", "after", "change_mask"}
    assert recorded.getmap_times() == [EARLY, LATE]

    # The two images are what MapServer has for each date.
    for side, date in (("before", EARLY), ("after", LATE)):
        meta = images[side]
        assert meta["time"] == date and meta["provider"] == "mapserver"
        assert (meta["width"], meta["height"]) == (SCENE_WIDTH, SCENE_HEIGHT)
        got = await client.get(meta["url"])
        assert got.status_code == 200
        img = decode(got.content)
        wrong = np.abs(img.astype(int) - expected_image(date=date).astype(int)).max(axis=-1) > 8
        assert wrong.mean() < 0.01

    # The metrics match what differs between the dates: forest turned to bare soil on 20 %.
    metrics = answer["analysis"]["metrics"]
    clearcut = area(CLEARCUT, LATE)
    assert clearcut == pytest.approx(0.20)
    assert metrics["changed_fraction"] == pytest.approx(clearcut, abs=0.04)
    assert metrics["deltas"]["vegetation_fraction"] == pytest.approx(-clearcut, abs=0.04)
    assert metrics["deltas"]["bare_fraction"] == pytest.approx(clearcut, abs=0.04)
    assert metrics["deltas"]["water_fraction"] == pytest.approx(0.0, abs=0.01)
    assert metrics["before"]["vegetation_fraction"] == pytest.approx(area(FOREST, EARLY), abs=0.02)
    assert metrics["after"]["vegetation_fraction"] == pytest.approx(area(FOREST, LATE), abs=0.02)
    assert metrics["losses"]["vegetation"] == pytest.approx(clearcut, abs=0.04)
    assert metrics["gains"]["bare"] == pytest.approx(clearcut, abs=0.04)

    # The change mask marks exactly the pixels that differ between the dates as vegetation loss.
    mask_meta = images["change_mask"]
    assert (mask_meta["width"], mask_meta["height"]) == (SCENE_WIDTH, SCENE_HEIGHT)
    got = await client.get(mask_meta["url"])
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    mask = decode(got.content)
    assert mask.shape == (SCENE_HEIGHT, SCENE_WIDTH, 3)
    differs = (expected_image(date=EARLY) != expected_image(date=LATE)).any(axis=-1)
    assert differs.mean() == pytest.approx(clearcut, abs=0.01)
    loss_rgb = CHANGE_MASK_LEGEND["vegetation_loss"]
    loss = (mask == [int(loss_rgb[i : i + 2], 16) for i in (1, 3, 5)]).all(axis=-1)
    assert (loss != differs).mean() < 0.01
    grey = (mask[..., 0] == mask[..., 1]) & (mask[..., 1] == mask[..., 2])
    assert (grey & (mask.max(axis=-1) <= 255 * 3 // 10))[~differs].mean() > 0.99  # dimmed

    stored = await client.get(f"/api/analyses/{answer['analysis_id']}")
    assert stored.status_code == 200 and stored.json()["analysis"] == answer["analysis"]
    assert permits_back(client)


async def test_timeseries_reports_the_missing_date_and_measures_the_others(
    client: httpx.AsyncClient, recorded: Recorder
) -> None:
    body = {**SCENE, "times": [LATE, MISSING, EARLY]}
    r = await client.post("/api/timeseries", json=body)
    assert r.status_code == 200, r.text
    series = r.json()
    assert series["partial"] is True
    assert [p["time"] for p in series["points"]] == [EARLY, MISSING, LATE]
    points = {p["time"]: p for p in series["points"]}

    missing = points[MISSING]
    assert missing["code"] == "time_not_available" and MISSING in missing["error"]
    assert missing["image"] is None and missing["metrics"] is None
    # The capabilities were read once, and no GetMap was sent for the missing date.
    (caps,) = recorded.requests("GetCapabilities")
    assert caps["SERVICE"] == "WMS" and caps["VERSION"] == "1.3.0"
    assert recorded.getmap_times() == [EARLY, LATE]

    for date in (EARLY, LATE):
        point = points[date]
        assert point["error"] is None and point["image"]["time"] == date
        metrics = point["metrics"]
        assert metrics["vegetation_fraction"] == pytest.approx(area(FOREST, date), abs=0.02)
        assert metrics["water_fraction"] == pytest.approx(area(WATER, date), abs=0.02)
        assert metrics["bare_fraction"] == pytest.approx(area(CLEARCUT, date), abs=0.02)
        assert metrics["nodata_fraction"] == pytest.approx(0.0, abs=0.01)
        assert metrics["cloud_fraction"] == pytest.approx(0.0, abs=0.01)
    assert permits_back(client)


async def test_a_plain_date_is_shorthand_for_a_side_with_that_time(
    client: httpx.AsyncClient, recorded: Recorder
) -> None:
    """`"before": "2024-01-01"`, as the CLI's `--before DATE`, means `{"time": "2024-01-01"}`."""
    body = {**SCENE, "analyzer": "local"}
    short = await client.post(
        "/api/comparison/analyze", json={**body, "before": EARLY, "after": LATE}
    )
    assert short.status_code == 200, short.text
    assert recorded.getmap_times() == [EARLY, LATE]
    full = await client.post(
        "/api/comparison/analyze", json={**body, "before": {"time": EARLY}, "after": {"time": LATE}}
    )
    assert full.json()["analysis"]["metrics"] == short.json()["analysis"]["metrics"]
    bad = await client.post(
        "/api/comparison/download", json={**SCENE, "before": "soon", "after": LATE}
    )
    assert bad.status_code == 422 and bad.json()["details"][0]["loc"][:3] == [
        "body",
        "before",
        "time",
    ]
