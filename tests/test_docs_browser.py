"""/docs in headless Chromium with every non-local request blocked: "Try it out" answers 200.

Runs `python -m satapi serve` against a tiny WMS on 127.0.0.1. Skipped without Chromium or the
playwright package, unless SATAPI_REQUIRE_BROWSER=1 (then it fails instead).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import uvicorn
from PIL import Image

from tests.support.fault_upstream import SatapiProcess

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("SATAPI_CHROMIUM", "/usr/bin/chromium")
REQUIRE_ENV_VAR = "SATAPI_REQUIRE_BROWSER"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SECRET = "docs-test-wms-key-5a4b3c2d1e"
BBOX = [10.0, 45.0, 14.0, 47.0]


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _require_browser() -> None:
    missing = _missing()
    if missing is None:
        return
    if os.environ.get(REQUIRE_ENV_VAR) == "1":
        pytest.fail(f"{missing} ({REQUIRE_ENV_VAR}=1)", pytrace=False)
    pytest.skip(missing)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class TinyWMS:
    """GetMap answers a green PNG of the requested WIDTH x HEIGHT; counts the requests."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        params = {k.upper(): v for k, v in parse_qsl(scope["query_string"].decode())}
        if params.get("REQUEST", "").lower() == "getcapabilities":
            # No capabilities: satapi skips its layer checks and sends the GetMap as asked.
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        self.requests.append(params)
        buf = io.BytesIO()
        size = (int(params.get("WIDTH", "1")), int(params.get("HEIGHT", "1")))
        Image.new("RGB", size, (34, 139, 34)).save(buf, format="PNG")
        body = buf.getvalue()
        headers = [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def tiny_wms() -> Iterator[tuple[TinyWMS, str]]:
    """The tiny WMS under uvicorn in a thread; yields it and its GetMap URL."""
    wms = TinyWMS()
    port = free_port()
    config = uvicorn.Config(
        wms, host="127.0.0.1", port=port, lifespan="off", log_config=None, ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tiny-wms", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "tiny WMS did not start"
        time.sleep(0.02)
    try:
        yield wms, f"http://127.0.0.1:{port}/wms"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def service(
    tiny_wms: tuple[TinyWMS, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """`python -m satapi serve` whose only provider is the tiny WMS; yields its URL and log."""
    _, wms_url = tiny_wms
    settings = {
        "default_provider": "local",
        "log_format": "json",
        "providers": {
            "local": {
                "url": wms_url,
                "default_layer": "scene",
                "title": "Local test WMS",
                "secret_params": {"key": SECRET},
            },
            "gibs": {"enabled": False},
            "eox": {"enabled": False},
        },
    }
    server = SatapiProcess(tmp_path_factory.mktemp("docs-browser"), settings).start()
    try:
        yield server.url, server.log_path
    finally:
        server.stop()


@contextmanager
def offline_page(blocked: list[str], *, width: int, height: int) -> Iterator[Any]:
    """A page in headless Chromium that may reach 127.0.0.1 only: every other request is
    aborted and its URL appended to `blocked`."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)

    def only_local(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            context.route("**/*", only_local)
            yield context.new_page()
        finally:
            browser.close()


def try_it_out(page: Any, operation_id: str, body: dict[str, Any]) -> Any:
    """Open an operation, enter `body`, execute it; returns the operation's block."""
    from playwright.sync_api import expect

    block = page.locator(f"[id$='-{operation_id}']")
    block.locator(".opblock-summary").first.click()
    block.get_by_role("button", name="Try it out").click()
    editor = block.locator("textarea.body-param__text")
    expect(editor).to_contain_text('"bbox"')  # the documented example, ready to edit
    editor.fill(json.dumps(body, indent=2))
    block.locator("button.execute").click()
    status = block.locator(".live-responses-table tbody .response-col_status").first
    expect(status).to_have_text("200", timeout=30_000)
    return block


def test_docs_try_it_out_offline(service: tuple[str, Path], tiny_wms: tuple[TinyWMS, str]) -> None:
    from playwright.sync_api import expect

    base, log_path = service
    wms, _ = tiny_wms
    blocked: list[str] = []

    with offline_page(blocked, width=1280, height=1400) as page:
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base}/docs", wait_until="networkidle")
        expect(page.locator(".information-container .title")).to_contain_text("satapi")

        image = {"bbox": BBOX, "width": 96, "height": 64, "format": "image/png"}
        block = try_it_out(page, "fetch_image_api_images_post", image)
        expect(
            block.locator(".live-responses-table tbody .response-col_description")
        ).to_contain_text('"success": true')
        analysis = {**image, "analyzer": "local"}
        block = try_it_out(page, "analyze_satellite_api_vision_analyze_satellite_post", analysis)
        expect(
            block.locator(".live-responses-table tbody .response-col_description")
        ).to_contain_text("vegetation_fraction")
        block.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "docs.png"))

        page.goto(f"{base}/redoc", wait_until="networkidle")
        expect(page.locator("h1").first).to_contain_text("satapi")
        assert not errors, errors

    assert blocked == [], f"the explorer tried to reach the network: {blocked}"
    assert len(wms.requests) == 1  # the analysis reused the stored image
    assert wms.requests[0]["KEY"] == SECRET
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    executed = [e for e in lines if e.get("event") == "request" and e["route"].startswith("/api/")]
    assert [(e["method"], e["route"], e["status"]) for e in executed] == [
        ("POST", "/api/images", 200),
        ("POST", "/api/vision/analyze_satellite", 200),
    ]
    assert SECRET not in log_path.read_text()
