"""Contract fuzzing: schemathesis against the live OpenAPI schema of a running server.

Every operation gets generated inputs (valid and invalid); no answer may be a 500, and every answer
must be documented (status, content type, body schema). The WMS upstream is mocked with respx, so
downloads succeed for small images and fail (502, documented) for large ones.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx
import uvicorn

from satapi.app import create_app
from satapi.config import Settings
from tests.conftest import png_bytes
from tests.support.wms_mock import mock_transport
from tests.test_images_api import SERVICE_EXCEPTION

ROOT = Path(__file__).resolve().parent.parent
MAX_EXAMPLES = 20  # per operation: a few hundred cases in all


@functools.lru_cache(maxsize=64)
def _png(width: int, height: int) -> bytes:
    return png_bytes(width, height, (60, 140, 60))


def _wms(request: httpx.Request) -> httpx.Response:
    params = request.url.params
    if params.get("REQUEST", "").lower() != "getmap":
        return httpx.Response(200, content=SERVICE_EXCEPTION, headers={"content-type": "text/xml"})
    try:
        width, height = int(params["WIDTH"]), int(params["HEIGHT"])
    except (KeyError, ValueError):
        width = height = 1
    if width * height > 256 * 256:
        width = height = 1  # the wrong size: satapi answers 502 not_an_image (documented)
    return httpx.Response(200, content=_png(width, height), headers={"content-type": "image/png"})


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a thread
        pass


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data: Path = tmp_path_factory.mktemp("fuzz-data")
    app_settings = Settings(
        data_dir=data,
        default_provider="test",
        providers={"test": {"url": "http://wms.test/wms", "default_layer": "scene"}},
        allowed_hosts=["https://allowed.example"],
        anthropic_api_key=None,
        retry_attempts=1,
        wms_total_timeout_s=5,
    )
    with respx.mock(assert_all_called=False) as router:
        # Every host answers like a WMS (the built-in providers too): nothing leaves the machine.
        router.route().mock(side_effect=_wms)
        app = create_app(app_settings, http_transport=mock_transport(router))
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        server = _Server(config)
        thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=20)


CHECKS = ",".join(
    [
        "no_internal_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


def test_every_operation_conforms_and_never_500(live_url: str, tmp_path: Path) -> None:
    # The CLI runs in its own process (its pytest plugin does not load under this pytest); it
    # talks to the server this test process runs, whose WMS upstream respx mocks.
    cli = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(cli),
            "run",
            f"{live_url}/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "20261128",
            "--phases",
            "examples,coverage,fuzzing",
            "--request-timeout",
            "30",
            "--suppress-health-check",
            "all",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=tmp_path,
        env={
            **os.environ,
            "NO_COLOR": "1",
            "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
            "PYTHONPATH": str(ROOT),
        },
    )
    tail = "\n".join(result.stdout.splitlines()[-400:])
    assert result.returncode == 0, f"schemathesis found problems:\n{tail}\n{result.stderr[-2000:]}"
    junit = "".join(p.read_text() for p in tmp_path.glob("junit*.xml"))
    assert junit.count("<testcase") >= 12, "every API operation should have been exercised"
