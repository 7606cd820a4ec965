"""Shared fixtures. httpx2 is aliased as httpx before anything imports respx, so respx mocks it."""

from __future__ import annotations

import functools
import gc

# No cyclic collection while the test modules are imported and collected (~0.6 s of a worker's
# ~5 s of collection went to full collections of objects that live as long as the process);
# then those objects are frozen out of the collector's reach (`pytest_collection_finish`).
gc.disable()

import httpcore2  # noqa: E402
import httpx2  # noqa: E402

httpx2.alias_httpx()

# Every httpx client made without a transport (`httpx.get(...)`, `httpx.Client()`) loads
# certifi's CA bundle into a new SSL context, ~30 ms of CPU; the tests make hundreds of them to
# talk plain HTTP to local servers. One default context per test process (the service does the
# same: `satapi.providers.transport.default_tls`).
httpcore2.default_ssl_context = functools.cache(httpcore2.default_ssl_context)

import io  # noqa: E402
from collections.abc import AsyncIterator, Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402
import respx  # noqa: E402
from asgi_lifespan import LifespanManager  # noqa: E402
from PIL import Image  # noqa: E402

from satapi.app import create_app  # noqa: E402
from satapi.config import Settings  # noqa: E402
from tests.support.route_state import share_route_state_across_apps  # noqa: E402
from tests.support.wms_mock import mock_transport  # noqa: E402

share_route_state_across_apps()

pytest_plugins = [
    "tests.support.mapserver_plugin",
    "tests.support.fake_anthropic_plugin",
    "tests.support.s3server",
    "tests.support.redis_server",
]

WMS_URL = "http://wms.test/wms"

# How `python3 dev.py test` spreads the suite over pytest-xdist workers (`-n`).
# Each module here starts a server in a module-scoped fixture that its tests share: its tests
# go to one worker as one unit, so the server starts once, not once per worker.
SHARED_SERVER_MODULES = frozenset(
    {
        "test_bench_smoke",
        "test_cli_client",
        "test_client",
        "test_contract_fuzz",
        "test_docs_browser",
        "test_docs_examples",
        "test_fault_matrix",
        "test_jobs_workers",
        "test_mapserver_areas",
        "test_security",
        "test_ssrf_dns",
        "test_tiles",
        "test_viewer_browser",
        "test_vision_sse",
    }
)
# Modules whose tests wait on real processes and real timeouts (seconds each), longest first:
# they are handed out first, so that no worker is still busy with one when the rest are done.
LONG_MODULES = (
    "test_bench_smoke",
    "test_jobs_workers",
    "test_contract_fuzz",
    "test_scale_out_redis",
    "test_shutdown",
    "test_soak_smoke",
    "test_fault_matrix",
    "test_crash_recovery",
    "test_sentinelhub",
    "test_docs_examples",
    "test_docs_browser",
    "test_redis_coordination",
    "test_viewer_browser",
    "test_ai_cap_fleet",
    "test_s3_store",
    "test_security",
)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Collection made the modules, models and test items: keep them out of every collection."""
    gc.enable()
    gc.freeze()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """And on in a process that collects nothing (pytest-xdist's controller)."""
    gc.enable()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long modules first (see above); the rest keep their order."""
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: no error without the plugin
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `--dist load` (the default with `-n`): each test is a unit of work, except that
    the tests of a shared-server module are one unit. (`xdist_group` marks would say the same,
    but `--dist loadgroup` does not group under pytest 9.2: pytest-xdist issue 1386.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the order above

    class SharedServerModules(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if Path(path).stem in SHARED_SERVER_MODULES else nodeid

    return SharedServerModules(config, log)


def png_bytes(width: int, height: int, color: tuple[int, ...] = (34, 139, 34)) -> bytes:
    """A solid PNG of the given size."""
    buf = io.BytesIO()
    Image.new("RGB" if len(color) == 3 else "RGBA", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test app: data in tmp_path, one provider `test` at http://wms.test/wms."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "default_provider": "test",
            "providers": {
                "test": {
                    "url": WMS_URL,
                    "version": "1.3.0",
                    "default_layer": "scene",
                    "max_concurrency": 50,
                }
            },
            "retry_wait_initial_s": 0.01,
            "retry_wait_max_s": 0.05,
            "anthropic_api_key": None,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Default test settings."""
    return make_settings()


@pytest.fixture
async def client(
    settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to an app built from `settings`, with its lifespan running.

    When the test uses the `wms` router (itself or through a fixture), the app's WMS requests
    are answered by it; otherwise they go out for real (e.g. to a MapServer on 127.0.0.1).
    """
    router = request.getfixturevalue("wms") if "wms" in request.fixturenames else None
    app = create_app(settings, http_transport=mock_transport(router))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://satapi.test"
        ) as c,
    ):
        c.app = app  # type: ignore[attr-defined]
        yield c


@pytest.fixture
def wms() -> Any:
    """respx router for the fake WMS host (other hosts are not mocked and fail loudly).

    GetCapabilities answers 404 unless a test mocks a route named "caps" itself, so the layer
    checks are skipped (as for any server without capabilities) and GetMap routes see GetMaps.
    """
    with respx.mock(assert_all_called=False) as router:
        router.get(
            url__startswith=WMS_URL, params__contains={"REQUEST": "GetCapabilities"}, name="caps"
        ).mock(return_value=httpx.Response(404, content=b"no capabilities here"))
        yield router


def store_files(data_dir: Path) -> list[Path]:
    """Every file under the image store, temp files included."""
    root = data_dir / "images"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
