"""A full disk: a real server whose data dir is a 2 MiB tmpfs (in its own mount namespace).

With the disk nearly full, a download that cannot be stored is answered 507 `store_full`
(with `Retry-After`) and leaves no file, partial or temporary; `/readyz` says 503 with
`store_writable: false`; images already stored are still served. With the disk completely
full, an analysis whose result cannot be written is a 507 too. Once space is freed, `/readyz`
is 200 again and the same request succeeds. The same with `store_url = s3://...` (a moto_server
on 127.0.0.1): downloads are gathered in data_dir/tmp before they go to the bucket, so a full
local disk is a 507 there too, with no temp file and no object left. Skipped without
root/unshare unless SATAPI_REQUIRE_NETNS=1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fault_upstream import FaultUpstream, SatapiProcess
from tests.support.netns import namespaces_available, tmpfs_argv
from tests.support.s3server import MotoServer, aws_env

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


def start_on_tmpfs(
    upstream: FaultUpstream, tmp_path: Path, env: dict[str, str] | None = None, **settings: str
) -> SatapiProcess:
    data_dir = tmp_path / "data"
    return SatapiProcess(
        tmp_path,
        {
            "default_provider": "fault",
            "providers": {"fault": {"url": upstream.wms_url, "default_layer": "ok"}},
            **settings,
        },
        env=env,
        wrap=lambda argv: tmpfs_argv(argv, directory=data_dir, size="2m"),
    ).start()


@pytest.fixture
def server(upstream: FaultUpstream, tmp_path: Path) -> Iterator[SatapiProcess]:
    process = start_on_tmpfs(upstream, tmp_path)
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


async def assert_full_yet_serving(client: httpx.AsyncClient, small: httpx.Response) -> None:
    """While the disk is full: `/readyz` says so, and the stored image is still served."""
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["store_writable"] is False
    assert "full" in ready.json()["checks"]["store_error"]
    again = await client.post("/api/images", json=SMALL)
    assert again.status_code == 200 and again.json()["image"]["cached"] is True
    got = await client.get(f"/api/images/{small.json()['image']['id']}")
    assert got.status_code == 200
    assert len(got.content) == small.json()["image"]["bytes"]


async def assert_recovers(client: httpx.AsyncClient, server: SatapiProcess) -> httpx.Response:
    """Once there is room again: ready, and the big image that was refused is stored."""
    assert (await client.get("/readyz")).status_code == 200
    big = await client.post("/api/images", json=BIG)
    assert big.status_code == 200, big.text
    assert server.temp_files() == []
    return big


async def test_a_full_disk_is_507_with_nothing_partial_and_recovers(
    server: SatapiProcess,
) -> None:
    view = server.data_view
    assert view != server.data_dir  # the server's own tmpfs, seen through /proc
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        small = await client.post("/api/images", json=SMALL)
        assert small.status_code == 200, small.text
        before = set(server.files())
        filler = fill(view, leave=200 * 1024)

        assert_store_full(await client.post("/api/images", json=BIG))
        assert set(server.files()) == before | {filler}  # nothing partial, no temp file
        await assert_full_yet_serving(client, small)

        filler.unlink()
        await assert_recovers(client, server)
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


async def test_a_full_disk_under_the_s3_store_is_507_with_nothing_partial_and_recovers(
    upstream: FaultUpstream, moto_s3: MotoServer, tmp_path: Path
) -> None:
    bucket = moto_s3.create_bucket()
    server = start_on_tmpfs(
        upstream, tmp_path, env=aws_env(moto_s3), store_url=f"s3://{bucket}/sat"
    )
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            small = await client.post("/api/images", json=SMALL)
            assert small.status_code == 200, small.text
            keys = moto_s3.keys(bucket)
            filler = fill(server.data_view, leave=200 * 1024)

            assert_store_full(await client.post("/api/images", json=BIG))
            assert server.temp_files() == []  # the spool file went
            assert moto_s3.keys(bucket) == keys  # and nothing reached the bucket
            await assert_full_yet_serving(client, small)  # served from the bucket

            filler.unlink()
            big = await assert_recovers(client, server)
            assert f"sat/images/{big.json()['image']['id']}.json" in moto_s3.keys(bucket)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()[-3000:]
