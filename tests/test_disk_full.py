"""A full disk: a real server whose data dir is a 2 MiB tmpfs (in its own mount namespace).

With the disk nearly full, a download that cannot be stored is answered 507 `store_full`
(with `Retry-After`) and leaves no file, partial or temporary; `/readyz` says 503 with
`store_writable: false`; images already stored are still served. With the disk completely
full, an analysis whose result cannot be written is a 507 too. Once space is freed, `/readyz`
is 200 again and the same request succeeds. Skipped without root/unshare unless
SATAPI_REQUIRE_NETNS=1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fault_upstream import FaultUpstream, SatapiProcess
from tests.support.netns import namespaces_available, tmpfs_argv

SMALL = {"layer": "ok", "bbox": [10, 45, 14, 47], "width": 64, "height": 32}
BIG = {"layer": "slow:0.1", "bbox": [10, 45, 14, 47], "width": 512, "height": 512}  # ~790 KB


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultUpstream]:
    reason = namespaces_available()
    if reason is not None:
        if os.environ.get("SATAPI_REQUIRE_NETNS") == "1":
            pytest.fail(f"SATAPI_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)
    with FaultUpstream() as server:
        yield server


@pytest.fixture
def server(upstream: FaultUpstream, tmp_path: Path) -> Iterator[SatapiProcess]:
    data_dir = tmp_path / "data"
    process = SatapiProcess(
        tmp_path,
        {
            "default_provider": "fault",
            "providers": {"fault": {"url": upstream.wms_url, "default_layer": "ok"}},
        },
        wrap=lambda argv: tmpfs_argv(argv, directory=data_dir, size="2m"),
    ).start()
    try:
        yield process
    finally:
        process.stop()


def fill(view: Path, leave: int) -> Path:
    """A filler file taking all but about `leave` bytes of the filesystem at `view`."""
    stats = os.statvfs(view)
    free = stats.f_bavail * stats.f_frsize
    filler = view / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def assert_store_full(r: httpx.Response) -> None:
    assert r.status_code == 507, r.text
    body = r.json()
    assert body["success"] is False
    assert body["code"] == "store_full"
    assert body["request_id"] == r.headers["x-request-id"]
    assert int(r.headers["retry-after"]) >= 1


async def test_a_full_disk_is_507_with_nothing_partial_and_recovers(
    server: SatapiProcess,
) -> None:
    view = server.data_view
    assert view != server.data_dir  # the server's own tmpfs, seen through /proc
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        small = await client.post("/api/images", json=SMALL)
        assert small.status_code == 200, small.text
        small_id = small.json()["image"]["id"]
        before = set(server.files())
        filler = fill(view, leave=200 * 1024)

        assert_store_full(await client.post("/api/images", json=BIG))
        assert set(server.files()) == before | {filler}  # nothing partial, no temp file
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["store_writable"] is False
        assert "full" in ready.json()["checks"]["store_error"]
        # What is stored is still served.
        again = await client.post("/api/images", json=SMALL)
        assert again.status_code == 200 and again.json()["image"]["cached"] is True
        got = await client.get(f"/api/images/{small_id}")
        assert got.status_code == 200
        assert len(got.content) == small.json()["image"]["bytes"]

        filler.unlink()
        assert (await client.get("/readyz")).status_code == 200
        big = await client.post("/api/images", json=BIG)
        assert big.status_code == 200, big.text
        assert server.temp_files() == []
    assert "Traceback" not in server.log(), server.log()[-3000:]


async def test_an_analysis_that_cannot_be_saved_is_507(server: SatapiProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert (await client.post("/api/images", json=SMALL)).status_code == 200
        filler = fill(server.data_view, leave=0)
        r = await client.post("/api/vision/analyze_satellite", json={**SMALL, "analyzer": "local"})
        assert_store_full(r)
        assert server.temp_files() == []
        filler.unlink()
        r = await client.post("/api/vision/analyze_satellite", json={**SMALL, "analyzer": "local"})
        assert r.status_code == 200, r.text
    assert "Traceback" not in server.log(), server.log()[-3000:]
