"""The map page at `/` in headless Chromium, with every non-local request blocked.

`python -m satapi serve` (API keys required) runs over the real MapServer WMS. The test enters
the key when the page asks, sees XYZ tiles from satapi, draws an area with the mouse, runs a
streamed analysis, a comparison (change mask and legend on the map) and a time series (chart),
and saves screenshots to test-artifacts/. Skipped without Chromium or playwright unless
SATAPI_REQUIRE_BROWSER=1, or without MapServer unless SATAPI_REQUIRE_MAPSERVER=1.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fault_upstream import SatapiProcess
from tests.support.mapserver import MapServerWMS
from tests.test_docs_browser import (
    ARTIFACTS,
    REQUIRE_ENV_VAR,
    _missing,
    offline_page,
)

pytestmark = [pytest.mark.browser, pytest.mark.mapserver]

KEY = "viewer-test-key-9f8e7d"
# The clearcut (brown on 2024-06-01) with a margin of forest: drawn with the mouse.
DRAW_FROM = (10.1, 46.3)  # lon, lat of the north-west corner
DRAW_TO = (11.9, 45.1)


@pytest.fixture(scope="module", autouse=True)
def _require_browser() -> None:
    missing = _missing()
    if missing is None:
        return
    if os.environ.get(REQUIRE_ENV_VAR) == "1":
        pytest.fail(f"{missing} ({REQUIRE_ENV_VAR}=1)", pytrace=False)
    pytest.skip(missing)


@pytest.fixture(scope="module")
def service(
    mapserver_wms: MapServerWMS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """`python -m satapi serve` over the MapServer, keys required; yields its URL and log."""
    settings = {
        "default_provider": "mapserver",
        "api_keys": [KEY],
        "log_format": "json",
        "providers": {
            "mapserver": {
                "url": mapserver_wms.url,
                "default_layer": "scene",
                "title": "Local MapServer",
                "max_concurrency": 8,
            },
            "gibs": {"enabled": False},
            "eox": {"enabled": False},
        },
    }
    server = SatapiProcess(tmp_path_factory.mktemp("viewer-browser"), settings).start()
    try:
        yield server.url, server.log_path
    finally:
        server.stop()


def _screen_point(page: Any, lon: float, lat: float) -> tuple[float, float]:
    """Page coordinates of a lon/lat on the Leaflet map."""
    point = page.evaluate(
        "([lat, lon]) => satapiViewer.map.latLngToContainerPoint([lat, lon])", [lat, lon]
    )
    box = page.locator("#map").bounding_box()
    return box["x"] + point["x"], box["y"] + point["y"]


def _wait_for(page: Any, expression: str, timeout_s: float = 20.0) -> None:
    """Poll a JS expression from here: `wait_for_function` evaluates strings with `eval`, which
    the page's Content-Security-Policy (rightly) forbids."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def test_map_page_end_to_end(service: tuple[str, Path]) -> None:
    from playwright.sync_api import expect

    base, log_path = service
    blocked: list[str] = []

    with offline_page(blocked, width=1400, height=1000) as page:
        problems: list[str] = []
        tile_statuses: list[int] = []
        page.on(
            "response",
            lambda r: tile_statuses.append(r.status) if "/api/tiles/" in r.url else None,
        )
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda m: (
                problems.append(f"console {m.type}: {m.text}")
                if m.type == "error" and "401" not in m.text
                else None
            ),
        )
        page.goto(f"{base}/", wait_until="domcontentloaded")

        # /api answers 401: the page asks for a key, then fills the pickers
        expect(page.locator("#key-form")).to_be_visible(timeout=15_000)
        # the service's sentence, its `backticked` names shown as code, not as backticks
        assert "`" not in (page.locator("#key-form p").text_content() or "")
        assert page.locator("#key-form p code").count() >= 1
        page.fill("#api-key", KEY)
        page.click("#key-form button")
        expect(page.locator("#key-form")).to_be_hidden()
        expect(page.locator("#provider")).to_have_value("mapserver", timeout=15_000)
        expect(page.locator("#layer")).to_have_value("scene", timeout=15_000)
        assert page.locator("#time option").all_text_contents() == [
            "2024-06-01",
            "2024-01-01",
        ]

        # tiles come from satapi's XYZ endpoint and show the scene
        tiles = page.locator("img.satapi-tile")
        expect(tiles.first).to_be_visible(timeout=20_000)
        _wait_for(
            page,
            "[...document.querySelectorAll('img.satapi-tile')]"
            ".filter(i => i.complete && i.naturalWidth === 256).length >= 2",
        )

        # draw the area with the mouse
        page.click("#draw")
        x0, y0 = _screen_point(page, *DRAW_FROM)
        x1, y1 = _screen_point(page, *DRAW_TO)
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
        page.mouse.move(x1, y1, steps=5)
        page.mouse.up()
        drawn = [float(page.input_value(f"#{n}")) for n in ("west", "south", "east", "north")]
        expected = [DRAW_FROM[0], DRAW_TO[1], DRAW_TO[0], DRAW_FROM[1]]
        assert drawn == pytest.approx(expected, abs=0.05)

        # analyse: the text arrives piece by piece (one DOM change per delta)
        page.select_option("#analyzer", "local")
        page.evaluate(
            """() => {
                window.textChanges = 0;
                new MutationObserver(() => window.textChanges++).observe(
                    document.getElementById('text'),
                    {childList: true, characterData: true, subtree: true});
            }"""
        )
        page.click("#analyze")
        expect(page.locator("#status")).to_contain_text("Analysed by local", timeout=30_000)
        text = page.locator("#text").text_content() or ""
        assert text.startswith("Heuristic pixel analysis (not AI)")
        assert "bare soil" in text
        assert page.evaluate("window.textChanges") >= 3  # cleared, then several deltas
        overlay = page.locator("img.satapi-overlay")
        expect(overlay).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "viewer-analysis.png"))

        # compare the two dates: the change mask lies over the map, with its legend
        page.click("#compare")
        expect(page.locator("#status")).to_contain_text("Compared 2024-01-01", timeout=30_000)
        expect(page.locator("#legend")).to_be_visible()
        expect(page.locator("#legend")).to_contain_text("changed")
        assert "changed class" in (page.locator("#text").text_content() or "")
        mask_id = overlay.get_attribute("data-image-id")
        mask = httpx.get(f"{base}/api/images/{mask_id}/meta", headers={"X-API-Key": KEY})
        assert mask.json()["kind"] == "derived"  # the change mask, not a WMS image

        # time series: a chart with a line per class
        page.click("#series")
        expect(page.locator("#status")).to_contain_text("2 dates", timeout=30_000)
        assert page.locator("#chart svg polyline").count() >= 2
        page.screenshot(path=str(ARTIFACTS / "viewer.png"))

        # a polygon: click its corners, close it on the first; the analysis is of its inside
        # (a triangle over the clear-cut on 2024-06-01: all bare soil, although its box is not)
        page.click("#draw-polygon")
        triangle = [(10.3, 46.1), (11.7, 46.1), (10.3, 45.3)]
        for lon, lat in [*triangle, triangle[0]]:
            page.mouse.click(*_screen_point(page, lon, lat))
        expect(page.locator("#clear-polygon")).to_be_visible()
        page.click("#analyze")
        expect(page.locator("#status")).to_contain_text("px inside", timeout=30_000)
        assert "100 % of the area is bare soil" in (page.locator("#text").text_content() or "")
        page.screenshot(path=str(ARTIFACTS / "viewer-polygon.png"))
        page.click("#clear-polygon")
        expect(page.locator("#clear-polygon")).to_be_hidden()
        assert not problems, problems  # no script error, no CSP violation, no failed load

        # the clearest date of a window: the status says which date was chosen
        page.select_option("#layer", "cloudy")
        page.check("#clearest-on")
        page.fill("#clearest-start", "2024-05-01")
        page.fill("#clearest-end", "2024-09-30")
        page.click("#fetch")
        expect(page.locator("#status")).to_contain_text("clearest date 2024-08-02", timeout=30_000)
        expect(overlay).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "viewer-clearest.png"))
        page.uncheck("#clearest-on")
        page.select_option("#layer", "scene")

        # errors: the sentence in the form's own words; the map stays where the user left it and
        # the earlier results (overlay, text, chart) go, since they answer another question
        page.click("#series")
        expect(page.locator("#chart svg")).to_be_visible(timeout=30_000)
        page.fill("#west", "12")
        page.fill("#east", "11")
        page.locator("#east").blur()
        page.wait_for_timeout(600)  # typing a valid area on the way fits the map to it; then still
        center = page.evaluate("(() => satapiViewer.map.getCenter())()")
        page.click("#fetch")
        error = page.locator("#error")
        expect(error).to_contain_text("West must be less than East", timeout=15_000)
        expect(page.locator("#error")).to_contain_text("invalid_bbox")
        assert "minx" not in (page.locator("#error").text_content() or "")
        assert page.evaluate("(() => satapiViewer.map.getCenter())()") == center
        expect(page.locator("#results")).to_be_hidden()
        assert page.locator("img.satapi-overlay").count() == 0
        # a server error (not caught in the page) shows its sentence too
        page.fill("#west", "10.1")
        page.fill("#east", "11.9")
        page.evaluate("(() => { document.getElementById('prompt').value = 'x'.repeat(4001); })()")
        page.click("#analyze")
        expect(page.locator("#error")).to_contain_text("validation_error", timeout=15_000)

    assert blocked == [], f"the page tried to reach the network: {blocked}"
    assert len(tile_statuses) >= 4 and set(tile_statuses) == {200}
    assert KEY not in log_path.read_text()
