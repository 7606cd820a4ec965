"""The S3 store against a real moto_server on 127.0.0.1 (`store_url = s3://...`).

* Store level: writes are whole and create-if-absent (a half-written image is never visible;
  two writers of one id: one wins and both read the same bytes), reads stream in bounded
  chunks, everything lives under the prefix, an expired record is replaced, analyses are kept.
* Failures: a missing bucket, refused credentials and an unreachable endpoint are 503
  `backend_unavailable` (Retry-After) on requests and a clear `store_error` on /readyz; the
  failed operations are reported by operation; no 500, no partial object, no temp file left.
* A full local disk (where downloads are gathered) is `StoreFull` (507) with no temp file and
  no object, and /readyz says so until there is room; a service that answers "full" (MinIO's
  507 XMinioStorageFull, Ceph RGW's 403 QuotaExceeded) is `StoreFull` too, not a 503.
* The app: an image fetched, streamed (ETag/304), described and analysed through the S3 store.
* Two `satapi serve` processes sharing one bucket: what one fetched the other serves (bytes,
  meta, cache hit, analysis by id); both downloading one new id at once store one blob, and
  every answer names its bytes.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from satapi.app import create_app
from satapi.config import Settings, load_settings
from satapi.errors import BackendUnavailable, StoreFull
from satapi.storage import ImageRecord
from satapi.stores import open_stores
from satapi.stores.s3 import S3AnalysisStore, S3ImageStore, S3Options, open_s3_stores
from tests.conftest import WMS_URL, png_bytes
from tests.support.fault_upstream import FaultUpstream, SatapiProcess, free_port
from tests.support.s3server import MotoServer, aws_env
from tests.support.wms_mock import mock_transport

BODY = {"bbox": [10, 45, 14, 47], "width": 64, "height": 32}


def options(server: MotoServer | None, *, endpoint: str | None = None) -> S3Options:
    return S3Options(
        endpoint_url=endpoint or (server.url if server else None),
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing-secret",
        allow_http=True,
        timeout_s=3.0,
        max_retries=1,
    )


@pytest.fixture
def errors() -> list[tuple[str, str]]:
    return []


@pytest.fixture
async def s3(
    moto_s3: MotoServer, tmp_path: Path, errors: list[tuple[str, str]]
) -> AsyncIterator[tuple[S3ImageStore, S3AnalysisStore, str]]:
    bucket = moto_s3.create_bucket()
    images, analyses = open_s3_stores(
        f"s3://{bucket}/sat/api",
        options(moto_s3),
        temp_dir=tmp_path / "tmp",
        on_error=lambda op, kind: errors.append((op, kind)),
    )
    await images.start()
    await analyses.start()
    try:
        yield images, analyses, bucket
    finally:
        await images.close()


def record(image_id: str, size: int, **extra: Any) -> ImageRecord:
    return ImageRecord(
        id=image_id, content_type="image/png", bytes=size, width=8, height=8, **extra
    )


def an_id(n: int) -> str:
    return f"{n:064x}"


# --- store level ------------------------------------------------------------------------------


async def test_write_then_read_streams_in_bounded_chunks_under_the_prefix(
    s3: tuple[S3ImageStore, S3AnalysisStore, str], moto_s3: MotoServer, tmp_path: Path
) -> None:
    images, _, bucket = s3
    data = os.urandom(6 * 1024 * 1024 + 123)  # over 5 MiB: a multipart upload
    writer = await images.open_writer(an_id(1))
    for i in range(0, len(data), 100_000):
        await writer.write(data[i : i + 100_000])
    await writer.finish()
    # Written but not committed: nothing in the bucket, nothing to read.
    assert moto_s3.keys(bucket) == []
    assert await images.get(an_id(1), check=True) is None
    stored = await writer.commit(record(an_id(1), len(data)))
    assert not writer.temp_path.exists()
    assert list((tmp_path / "tmp").iterdir()) == []

    got = await images.get(an_id(1), check=True)
    assert got is not None and got.bytes == len(data) and got == stored
    chunks = [chunk async for chunk in images.iter_bytes(got)]
    assert b"".join(chunks) == data
    # Streamed as the bytes arrive: pieces of at least CHUNK, never the whole object. A piece
    # is what the HTTP client had buffered (~400 KiB on a quiet machine, more when the reader
    # is starved of CPU), so the bound leaves room for a loaded machine.
    assert len(chunks) >= 4
    assert max(len(c) for c in chunks) <= len(data) // 4
    assert await images.read_bytes(got) == data

    keys = moto_s3.keys(bucket)
    assert all(k.startswith("sat/api/") for k in keys), keys
    assert f"sat/api/images/{an_id(1)}.json" in keys
    blobs = [k for k in keys if k.startswith(f"sat/api/blobs/{an_id(1)}/")]
    assert len(blobs) == 1 and blobs[0].endswith(".png")
    assert await images.objects.get_bytes(blobs[0].removeprefix("sat/api/")) == data


async def test_an_aborted_write_leaves_nothing(
    s3: tuple[S3ImageStore, S3AnalysisStore, str], moto_s3: MotoServer, tmp_path: Path
) -> None:
    images, _, bucket = s3
    writer = await images.open_writer(an_id(2))
    await writer.write(b"half an image")
    await writer.abort()
    assert moto_s3.keys(bucket) == []
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_two_writers_of_one_id_one_wins_and_both_read_the_same_bytes(
    s3: tuple[S3ImageStore, S3AnalysisStore, str], moto_s3: MotoServer
) -> None:
    images, _, bucket = s3
    other = S3ImageStore(images.objects, images.temp_dir)  # a second replica, same bucket
    first, second = os.urandom(50_000), os.urandom(70_000)

    async def write(store: S3ImageStore, data: bytes) -> ImageRecord:
        writer = await store.open_writer(an_id(3))
        await writer.write(data)
        return await writer.commit(record(an_id(3), len(data)))

    a, b = await asyncio.gather(write(images, first), write(other, second))
    assert a == b  # both report the winner's record
    winner = first if a.bytes == len(first) else second
    assert await images.read_bytes(a) == winner
    assert await other.read_bytes(b) == winner
    fresh = await other.get(an_id(3), check=True)
    assert fresh is not None and await other.read_bytes(fresh) == winner
    blobs = [k for k in moto_s3.keys(bucket) if "/blobs/" in k]
    assert len(blobs) == 1  # the loser removed its own bytes


async def test_an_expired_record_is_a_miss_and_is_replaced(
    s3: tuple[S3ImageStore, S3AnalysisStore, str],
) -> None:
    images, _, _ = s3
    await images.put_bytes(record(an_id(4), 3, expires_at=time.time() - 1), b"old")
    assert await images.get(an_id(4)) is None
    assert await images.get(an_id(4), check=True) is None
    await images.put_bytes(record(an_id(4), 3, expires_at=time.time() + 60), b"new")
    got = await images.get(an_id(4), check=True)
    assert got is not None and await images.read_bytes(got) == b"new"


async def test_analyses_are_kept_and_replaced_whole(
    s3: tuple[S3ImageStore, S3AnalysisStore, str], moto_s3: MotoServer
) -> None:
    _, analyses, bucket = s3
    assert await analyses.get(an_id(5)) is None
    await analyses.put(an_id(5), {"analysis": {"text": "one"}})
    assert await analyses.get(an_id(5)) == {"analysis": {"text": "one"}}
    await analyses.put(an_id(5), {"analysis": {"text": "two"}})
    assert await analyses.get(an_id(5)) == {"analysis": {"text": "two"}}
    assert moto_s3.keys(bucket) == [f"sat/api/analyses/{an_id(5)}.json"]


# --- failures -----------------------------------------------------------------------------------


async def test_a_missing_bucket_is_named_and_counted(
    moto_s3: MotoServer, tmp_path: Path, errors: list[tuple[str, str]]
) -> None:
    images, _ = open_s3_stores(
        "s3://no-such-bucket/x",
        options(moto_s3),
        temp_dir=tmp_path,
        on_error=lambda op, kind: errors.append((op, kind)),
    )
    problem = await images.problem()
    assert problem is not None and "bucket" in problem and "does not exist" in problem
    with pytest.raises(BackendUnavailable) as caught:
        await images.put_bytes(record(an_id(6), 3), b"abc")
    assert caught.value.backend == "store" and caught.value.retry_after
    assert ("put", "no_bucket") in errors
    await images.close()


async def test_refused_credentials_are_named(
    moto_s3_refusing: MotoServer, tmp_path: Path, errors: list[tuple[str, str]]
) -> None:
    images, analyses = open_s3_stores(
        "s3://any-bucket",
        options(moto_s3_refusing),
        temp_dir=tmp_path,
        on_error=lambda op, kind: errors.append((op, kind)),
    )
    problem = await images.problem()
    assert problem is not None and "refused" in problem and "AWS_ACCESS_KEY_ID" in problem
    with pytest.raises(BackendUnavailable):
        await images.get(an_id(7))
    with pytest.raises(BackendUnavailable):
        await analyses.get(an_id(7))
    assert ("get", "refused") in errors
    assert "testing-secret" not in problem
    await images.close()


async def test_an_unreachable_endpoint_fails_fast_and_clean(
    tmp_path: Path, errors: list[tuple[str, str]]
) -> None:
    images, _ = open_s3_stores(
        "s3://bucket",
        options(None, endpoint=f"http://127.0.0.1:{free_port()}"),
        temp_dir=tmp_path / "tmp",
        on_error=lambda op, kind: errors.append((op, kind)),
    )
    await images.start()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await images.get(an_id(8))
    assert time.monotonic() - started < 10
    assert "unreachable" in caught.value.message
    writer = await images.open_writer(an_id(8))
    await writer.write(b"bytes")
    with pytest.raises(BackendUnavailable):
        await writer.commit(record(an_id(8), 5))
    assert list((tmp_path / "tmp").iterdir()) == []  # the temp file went too
    assert {op for op, _ in errors} == {"get", "put"}
    await images.close()


async def test_a_full_local_disk_is_store_full_with_nothing_left(
    s3: tuple[S3ImageStore, S3AnalysisStore, str],
    moto_s3: MotoServer,
    tmp_path: Path,
    errors: list[tuple[str, str]],
) -> None:
    # The download is gathered in a temp file on the local disk first; ENOSPC there (injected
    # into the file's writes; tests/test_disk_full.py fills a real tmpfs) is a 507, not a 500.
    images, _, bucket = s3
    writer = await images.open_writer(an_id(10))

    async def no_space(data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    writer._file.write = no_space  # type: ignore[attr-defined]
    await writer.write(b"x" * 1000)  # gathered in memory: nothing written yet
    with pytest.raises(StoreFull) as caught:
        await writer.write(b"y" * 300_000)
    assert caught.value.retry_after and "Nothing partial" in caught.value.message
    await writer.abort()  # what the caller's clean-up does
    assert list((tmp_path / "tmp").iterdir()) == []
    assert moto_s3.keys(bucket) == []
    assert errors == []  # the object store did nothing wrong

    # /readyz: full until the write that failed would fit.
    free = {"bytes": 0}
    images.space._free_bytes = lambda: free["bytes"]  # type: ignore[method-assign]
    problem = await images.problem()
    assert problem is not None and "full" in problem
    free["bytes"] = 10**9
    assert await images.problem() is None
    await images.put_bytes(record(an_id(10), 3), b"abc")
    assert await images.get(an_id(10), check=True) is not None


class FullObjectStore:
    """An S3 endpoint on 127.0.0.1 that refuses every PUT the way a full service does."""

    def __init__(self, status: int, code: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            "<Message>Storage backend has reached its minimum free drive threshold.</Message>"
            "<RequestId>1</RequestId></Error>"
        ).encode()
        self.puts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                outer.puts += 1
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("status", "code"), [(507, "XMinioStorageFull"), (403, "QuotaExceeded")])
async def test_a_full_object_store_is_store_full_not_unavailable(
    status: int, code: str, tmp_path: Path, errors: list[tuple[str, str]]
) -> None:
    service = FullObjectStore(status, code)
    images, analyses = open_s3_stores(
        "s3://bucket/p",
        options(None, endpoint=service.url),
        temp_dir=tmp_path / "tmp",
        on_error=lambda op, kind: errors.append((op, kind)),
    )
    await images.start()
    try:
        writer = await images.open_writer(an_id(11))
        await writer.write(png_bytes(8, 8))
        with pytest.raises(StoreFull) as caught:
            await writer.commit(record(an_id(11), 10))
        assert code in caught.value.message and caught.value.retry_after
        assert list((tmp_path / "tmp").iterdir()) == []
        with pytest.raises(StoreFull):
            await analyses.put(an_id(11), {"analysis": {}})
        problem = await images.problem()
        assert problem is not None and "object store is full" in problem
        assert ("put", "full") in errors
    finally:
        await images.close()
        service.close()


# --- settings -----------------------------------------------------------------------------------


def test_settings_read_the_standard_aws_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in {
        "SATAPI_STORE_URL": "s3://bucket/prefix",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "very-secret",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_REGION": "eu-west-1",
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SATAPI_CONFIG", raising=False)
    settings = load_settings(data_dir=tmp_path)
    assert settings.store_url == "s3://bucket/prefix"
    assert settings.aws_access_key_id == SecretStr("AKIDEXAMPLE")
    assert settings.aws_endpoint_url == "http://127.0.0.1:9000"
    assert settings.aws_region == "eu-west-1" and settings.aws_allow_http is True
    assert "very-secret" in settings.secrets  # redacted from logs like every secret
    images, analyses = open_stores(settings)
    assert isinstance(images, S3ImageStore) and isinstance(analyses, S3AnalysisStore)
    assert str(images.objects.location) == "s3://bucket/prefix"


@pytest.mark.parametrize("url", ["http://x/y", "s3://", "s3://b/p?x=1", "file://host/p"])
def test_a_bad_store_url_is_refused(url: str, tmp_path: Path) -> None:
    from satapi.config import SettingsError

    with pytest.raises(SettingsError, match="store_url"):
        load_settings(data_dir=tmp_path, store_url=url)


def test_a_file_url_names_the_file_store(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "unused", store_url=f"file://{tmp_path}/st")
    images, _ = open_stores(settings)
    assert type(images).__name__ == "LocalImageStore"
    assert images.root == tmp_path / "st" / "images"  # type: ignore[attr-defined]


# --- the app on the S3 store --------------------------------------------------------------------


@pytest.fixture
def s3_settings(
    make_settings: Callable[..., Settings], moto_s3: MotoServer
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "store_url": f"s3://{moto_s3.create_bucket()}/satapi",
            "aws_endpoint_url": moto_s3.url,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing-secret",
            "aws_region": "us-east-1",
            "aws_allow_http": True,
            "store_timeout_s": 3.0,
        }
        values.update(overrides)
        return make_settings(**values)

    return make


async def app_client(
    settings: Settings, wms: respx.Router | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, http_transport=mock_transport(wms))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://satapi.test"
        ) as c,
    ):
        yield c


async def test_the_api_on_the_s3_store(
    s3_settings: Callable[..., Settings], wms: respx.Router, moto_s3: MotoServer
) -> None:
    png = png_bytes(64, 32)
    getmap = wms.get(WMS_URL).respond(200, content=png, headers={"Content-Type": "image/png"})
    settings = s3_settings()
    bucket = settings.store_url.split("/")[2]  # type: ignore[union-attr]
    async for client in app_client(settings, wms=wms):
        r = await client.post("/api/images", json=BODY)
        assert r.status_code == 200, r.text
        image_id = r.json()["image"]["id"]
        assert r.json()["image"]["cached"] is False
        again = await client.post("/api/images", json=BODY)
        assert again.json()["image"]["cached"] is True

        got = await client.get(f"/api/images/{image_id}")
        assert got.status_code == 200 and got.content == png
        assert got.headers["content-type"] == "image/png"
        assert got.headers["content-length"] == str(len(png))
        etag = got.headers["etag"]
        not_modified = await client.get(f"/api/images/{image_id}", headers={"If-None-Match": etag})
        assert not_modified.status_code == 304 and not_modified.content == b""
        meta = await client.get(f"/api/images/{image_id}/meta")
        assert meta.status_code == 200 and meta.json()["image"]["bytes"] == len(png)
        assert "blob" not in meta.json() and "blob" not in meta.json()["image"]

        analysed = await client.post(
            "/api/vision/analyze_satellite", json={**BODY, "analyzer": "local"}
        )
        assert analysed.status_code == 200, analysed.text
        analysis_id = analysed.json()["analysis_id"]
        stored = await client.get(f"/api/analyses/{analysis_id}")
        assert stored.status_code == 200
        assert stored.json()["analysis"]["text"] == analysed.json()["analysis"]["text"]

        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["store_writable"] is True
    assert getmap.call_count == 1
    keys = moto_s3.keys(bucket)
    assert f"satapi/images/{image_id}.json" in keys
    assert f"satapi/analyses/{analysis_id}.json" in keys
    assert all(k.startswith("satapi/") for k in keys)


async def test_cache_ttl_applies_to_images_without_time(
    s3_settings: Callable[..., Settings], wms: respx.Router
) -> None:
    getmap = wms.get(WMS_URL).respond(
        200, content=png_bytes(64, 32), headers={"Content-Type": "image/png"}
    )
    async for client in app_client(s3_settings(cache_ttl_s=1.0), wms=wms):
        first = await client.post("/api/images", json=BODY)
        again = await client.post("/api/images", json=BODY)
        assert again.json()["image"]["cached"] is True
        await asyncio.sleep(1.1)
        expired = await client.post("/api/images", json=BODY)
        assert expired.status_code == 200 and expired.json()["image"]["cached"] is False
        assert getmap.call_count == 2  # fetched again, and the new record replaced the old
        image_id = first.json()["image"]["id"]
        meta = (await client.get(f"/api/images/{image_id}/meta")).json()
        assert meta["expires_at"] > time.time()
        assert (await client.get(f"/api/images/{image_id}")).status_code == 200


async def test_the_api_when_the_store_is_unreachable(
    s3_settings: Callable[..., Settings], wms: respx.Router, tmp_path: Path
) -> None:
    wms.get(WMS_URL).respond(200, content=png_bytes(64, 32), headers={"Content-Type": "image/png"})
    settings = s3_settings(aws_endpoint_url=f"http://127.0.0.1:{free_port()}")
    async for client in app_client(settings, wms=wms):
        r = await client.post("/api/images", json=BODY)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["success"] is False and body["code"] == "backend_unavailable"
        assert body["backend"] == "store" and "object store" in body["error"]
        assert int(r.headers["retry-after"]) >= 1
        got = await client.get(f"/api/images/{an_id(9)}")
        assert got.status_code == 503 and got.json()["code"] == "backend_unavailable"
        analysis = await client.get(f"/api/analyses/{an_id(9)}")
        assert analysis.status_code == 503
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "unreachable" in ready.json()["checks"]["store_error"]
        assert (await client.get("/healthz")).status_code == 200
        metrics = (await client.get("/metrics")).text
        for operation in ("get", "put"):
            line = f'satapi_store_errors_total{{kind="unavailable",operation="{operation}"}}'
            assert line in metrics, metrics
    temp = tmp_path / "data" / "tmp"
    assert not temp.exists() or list(temp.iterdir()) == []


async def test_readyz_names_a_missing_bucket_and_refused_credentials(
    s3_settings: Callable[..., Settings], moto_s3_refusing: MotoServer
) -> None:
    async for client in app_client(s3_settings(store_url="s3://not-made-yet/p")):
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "does not exist" in ready.json()["checks"]["store_error"]
        r = await client.post("/api/images", json=BODY)  # no WMS mock: the store fails first
        assert r.status_code == 503 and r.json()["code"] == "backend_unavailable"
    async for client in app_client(s3_settings(aws_endpoint_url=moto_s3_refusing.url)):
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        error = ready.json()["checks"]["store_error"]
        assert "refused" in error and "testing-secret" not in ready.text


# --- two replicas sharing one bucket ------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultUpstream]:
    with FaultUpstream() as server:
        yield server


async def test_an_image_fetched_through_one_replica_is_served_by_the_other(
    moto_s3: MotoServer, upstream: FaultUpstream, tmp_path: Path
) -> None:
    bucket = moto_s3.create_bucket()
    settings = {
        "store_url": f"s3://{bucket}/shared",
        "default_provider": "fault",
        "providers": {"fault": {"url": upstream.wms_url, "default_layer": "ok"}},
    }
    upstream.reset()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = SatapiProcess(tmp_path / "a", settings, env=aws_env(moto_s3)).start()
    b = SatapiProcess(tmp_path / "b", settings, env=aws_env(moto_s3)).start()
    try:
        async with (
            httpx.AsyncClient(base_url=a.url, timeout=30) as ca,
            httpx.AsyncClient(base_url=b.url, timeout=30) as cb,
        ):
            fetched = await ca.post("/api/images", json={**BODY, "layer": "ok"})
            assert fetched.status_code == 200, fetched.text
            image_id = fetched.json()["image"]["id"]
            through_a = await ca.get(f"/api/images/{image_id}")

            again = await cb.post("/api/images", json={**BODY, "layer": "ok"})
            assert again.status_code == 200 and again.json()["image"]["cached"] is True
            through_b = await cb.get(f"/api/images/{image_id}")
            assert through_b.status_code == 200 and through_b.content == through_a.content
            assert through_b.headers["etag"] == through_a.headers["etag"]
            meta_a = (await ca.get(f"/api/images/{image_id}/meta")).json()
            meta_b = (await cb.get(f"/api/images/{image_id}/meta")).json()
            assert meta_a == meta_b
            assert upstream.requests("ok") == 1  # B never went upstream

            analysed = await ca.post(
                "/api/vision/analyze_satellite", json={**BODY, "layer": "ok", "analyzer": "local"}
            )
            assert analysed.status_code == 200, analysed.text
            analysis_id = analysed.json()["analysis_id"]
            stored = await cb.get(f"/api/analyses/{analysis_id}")
            assert stored.status_code == 200
            assert stored.json()["analysis"] == {
                **analysed.json()["analysis"],
                "cached": stored.json()["analysis"]["cached"],
            }
            repeat = await cb.post(
                "/api/vision/analyze_satellite", json={**BODY, "layer": "ok", "analyzer": "local"}
            )
            assert repeat.json()["analysis"]["cached"] is True
            assert (await cb.get("/readyz")).status_code == 200

            # Both replicas download one new id at once (no Redis: one download each, at
            # most): one record wins, and every answer and both replicas serve its bytes.
            slow = {**BODY, "bbox": [11, 45, 14, 47], "layer": "ok:0.5"}
            before = upstream.requests()
            answers = await asyncio.gather(
                *(client.post("/api/images", json=slow) for client in [ca, cb] * 5)
            )
            assert {r.status_code for r in answers} == {200}
            assert len({r.json()["image"]["id"] for r in answers}) == 1
            assert len({r.json()["image"]["bytes"] for r in answers}) == 1
            raced = answers[0].json()["image"]["id"]
            assert 1 <= upstream.requests() - before <= 2
            got_a = await ca.get(f"/api/images/{raced}")
            got_b = await cb.get(f"/api/images/{raced}")
            assert got_a.content == got_b.content
            assert len(got_a.content) == answers[0].json()["image"]["bytes"]
            blobs = [k for k in moto_s3.keys(bucket) if f"/blobs/{raced}/" in k]
            assert len(blobs) == 1, blobs
    finally:
        a.stop()
        b.stop()
    for server in (a, b):
        log = server.log()
        assert "Traceback" not in log and "testing-secret" not in log
        assert server.temp_files() == []
