"""Crashes lose nothing: kill -9 in the middle of 20 concurrent downloads and writes, restart on
the same data directory, and check what is there.

* Before the kill, downloads are mid-body (their temp files hold partial images) while others
  have finished and analyses have been written.
* After the restart on the same data dir: no temp file is left (removed at start), every stored
  record's image has exactly the recorded size and type and decodes to the recorded size, every
  stored image is served byte for byte, and the same 20 requests then succeed.
* Damage from outside (a truncated image under its full-size record, an image of another type,
  a record without its image, an old image without a record, a temp file of a dead process) is
  cleared at start-up: none of it is ever served, and the image is downloaded afresh.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.fault_upstream import FaultUpstream, SatapiProcess, png

# The 8 other requests must finish while the slow bodies still arrive, on a busy test machine
# too: at 8 s this test failed in 2 of ~6 full-suite runs on 4 workers (never on its own).
SLOW_S = 12.0
SIDE = 768  # noisy 768 x 768 PNGs are ~1.8 MB: past the writer's MEMORY_SPOOL, several writes each


@pytest.fixture(scope="module")
def upstream() -> FaultUpstream:
    with FaultUpstream() as server:
        yield server


def settings(upstream: FaultUpstream) -> dict[str, object]:
    return {
        "default_provider": "fault",
        "providers": {
            "fault": {"url": upstream.wms_url, "default_layer": "ok", "max_concurrency": 40}
        },
        "max_concurrent_wms": 40,
        "wms_read_timeout_s": 30.0,
        "wms_total_timeout_s": 60.0,
    }


def image_body(layer: str, n: int) -> dict[str, object]:
    # Distinct bboxes: 20 distinct images.
    return {"layer": layer, "bbox": [n, 40, n + 1, 41], "width": SIDE, "height": SIDE}


REQUESTS: list[tuple[str, dict[str, object]]] = [
    *(("/api/images", image_body(f"slow:{SLOW_S}", n)) for n in range(12)),
    *(("/api/images", image_body("ok", n)) for n in range(12, 16)),
    *(
        ("/api/vision/analyze_satellite", {**image_body("ok", n), "analyzer": "local"})
        for n in range(16, 20)
    ),
]


def size_of(path: Path) -> int:
    """The file's size, 0 if it is gone (committed or removed meanwhile)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def stored_records(data: Path) -> list[tuple[dict[str, Any], Path]]:
    out = []
    for meta in sorted((data / "images").rglob("*.json")):
        if meta.name.startswith(".tmp-"):
            continue
        record = json.loads(meta.read_text())
        ext = {"image/png": "png", "image/jpeg": "jpg"}[record["content_type"]]
        out.append((record, meta.with_name(f"{record['id']}.{ext}")))
    return out


def check_store(data: Path) -> list[dict[str, Any]]:
    """Every record's image matches it exactly; returns the records."""
    records = []
    for record, image in stored_records(data):
        assert image.exists(), record["id"]
        blob = image.read_bytes()
        assert len(blob) == record["bytes"], record["id"]
        with Image.open(io.BytesIO(blob)) as img:
            assert Image.MIME[img.format] == record["content_type"]
            img.load()  # every byte decodes
            assert img.size == (record["width"], record["height"])
        records.append(record)
    return records


async def test_kill_9_during_20_downloads_and_writes_loses_nothing(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    upstream.reset()
    server = SatapiProcess(tmp_path, settings(upstream)).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            pending = [asyncio.create_task(client.post(path, json=b)) for path, b in REQUESTS]
            # The quick ones finish; the slow ones are mid-body with partial temp files.
            deadline = time.monotonic() + SLOW_S - 1
            while time.monotonic() < deadline:
                partial = [p for p in server.temp_files() if size_of(p) > 0]
                quick_done = all(t.done() for t in pending[12:])
                if quick_done and len(partial) >= 6 and upstream.in_flight("slow") == 12:
                    break
                await asyncio.sleep(0.05)
            for response in await asyncio.gather(*pending[12:]):
                assert response.status_code == 200, response.text
            assert upstream.in_flight("slow") == 12
            assert partial, "some temp files should hold part of an image"
            server.kill()
            for task in pending[:12]:
                with pytest.raises(httpx.TransportError):
                    await task
        assert server.temp_files(), "the kill should leave temp files behind"
        analyses_before = sorted((server.data_dir / "analyses").rglob("*.json"))
        assert len([p for p in analyses_before if not p.name.startswith(".tmp-")]) == 4

        server = SatapiProcess(tmp_path, settings(upstream)).start()
        assert server.temp_files() == []
        records = check_store(server.data_dir)
        assert len(records) == 8  # the 4 images and the 4 analysed ones that were finished
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            for record in records:
                r = await client.get(f"/api/images/{record['id']}")
                assert r.status_code == 200
                assert len(r.content) == record["bytes"]
            responses = await asyncio.gather(*(client.post(p, json=b) for p, b in REQUESTS))
        for (path, _), response in zip(REQUESTS, responses, strict=True):
            assert response.status_code == 200, (path, response.text)
        assert len(check_store(server.data_dir)) == 20
        for analysis in (server.data_dir / "analyses").rglob("*"):
            if analysis.is_file():
                assert not analysis.name.startswith(".tmp-")
                json.loads(analysis.read_text())
        assert server.temp_files() == []
        assert "Traceback" not in server.log()
    finally:
        server.stop()


async def test_damage_found_at_start_is_removed_and_never_served(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    upstream.reset()
    server = SatapiProcess(tmp_path, settings(upstream)).start()
    bodies = [image_body("ok", n) for n in range(4)]
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            ids = []
            for b in bodies:
                r = await client.post("/api/images", json={**b, "width": 64, "height": 32})
                assert r.status_code == 200, r.text
                ids.append(r.json()["image"]["id"])
        server.stop()
        data = server.data_dir / "images"
        truncated, retyped, imageless, healthy = ids
        shard = {i: data / i[:2] for i in ids}
        # A torn image under its full record; a record saying PNG over JPEG bytes; a record
        # whose image is gone; an old image without a record; a temp file of a dead process.
        image = shard[truncated] / f"{truncated}.png"
        image.write_bytes(image.read_bytes()[:-20])
        blob = io.BytesIO()
        Image.new("RGB", (64, 32)).save(blob, "JPEG")
        retyped_png = shard[retyped] / f"{retyped}.png"
        jpeg = blob.getvalue().ljust(retyped_png.stat().st_size, b"\0")
        retyped_png.write_bytes(jpeg)
        (shard[imageless] / f"{imageless}.png").unlink()
        orphan = data / "ab" / f"{'ab' * 32}.png"
        orphan.parent.mkdir(exist_ok=True)  # a shard is made by its first write
        orphan.write_bytes(png(8, 8))
        os.utime(orphan, (time.time() - 3600, time.time() - 3600))
        stale = data / "cd" / f".tmp-999999999-{'cd' * 32}-0"
        stale.parent.mkdir(exist_ok=True)
        stale.write_bytes(b"partial")

        server = SatapiProcess(tmp_path, settings(upstream)).start()
        assert server.temp_files() == []
        assert not orphan.exists()
        assert [r["id"] for r in check_store(server.data_dir)] == [healthy]
        upstream.reset()
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            for image_id in (truncated, retyped, imageless):
                r = await client.get(f"/api/images/{image_id}")
                assert r.status_code == 404, r.text
            for b in bodies:
                r = await client.post("/api/images", json={**b, "width": 64, "height": 32})
                assert r.status_code == 200, r.text
        assert upstream.requests("ok") == 3  # downloaded afresh; the healthy one was a hit
        assert len(check_store(server.data_dir)) == 4
    finally:
        server.stop()
