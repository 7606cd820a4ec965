"""pytest plugin: the session-scoped ``mapserver_wms`` fixture (a real MapServer WMS).

Load it with ``pytest_plugins = ["tests.support.mapserver_plugin"]`` (root conftest or a
test module) or ``pytest -p tests.support.mapserver_plugin``.

Without the Debian packages (see ``.ci/apt-packages.txt``) tests using the fixture are
skipped, unless ``SATAPI_REQUIRE_MAPSERVER=1``, which turns the skip into a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.mapserver import MapServerWMS, mapserver_available

REQUIRE_ENV_VAR = "SATAPI_REQUIRE_MAPSERVER"


def _require_mapserver() -> None:
    missing = mapserver_available()
    if missing is None:
        return
    if os.environ.get(REQUIRE_ENV_VAR) == "1":
        pytest.fail(f"{missing} ({REQUIRE_ENV_VAR}=1)", pytrace=False)
    pytest.skip(missing)


@pytest.fixture(scope="session")
def mapserver_wms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MapServerWMS]:
    """A started :class:`MapServerWMS` (``.url``, ``.layer``, ``.times``, ``.bbox``, ``.tmpdir``).

    Its files and logs stay in pytest's temp dir (``mapserver0``) for post-mortems.
    """
    _require_mapserver()
    with MapServerWMS(tmp_path_factory.mktemp("mapserver")) as wms:
        yield wms
