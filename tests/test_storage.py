"""The image store on its own: atomic writes, TTL, LRU eviction, leftover temp files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from satapi.storage import ImageRecord
from satapi.stores.local import (
    TEMP_PREFIX,
    LocalAnalysisStore,
    LocalImageStore,
    is_stale_temp,
    temp_name,
)


def record(n: int, size: int, **kw: object) -> ImageRecord:
    return ImageRecord(
        id=f"{n:064x}", content_type="image/png", bytes=size, width=1, height=1, **kw
    )  # type: ignore[arg-type]


async def test_abort_leaves_nothing_and_commit_is_atomic(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path, max_bytes=10**6)
    await store.start()
    try:
        writer = await store.open_writer(f"{1:064x}")
        await writer.write(b"x" * 100)
        assert writer.temp_path.name.startswith(TEMP_PREFIX)
        assert await store.get(f"{1:064x}") is None  # nothing visible before commit
        await writer.abort()
        assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
        await store.put_bytes(record(2, 3), b"abc")
        got = await store.get(f"{2:064x}")
        assert got is not None and await store.read_bytes(got) == b"abc"
    finally:
        await store.close()


async def test_expired_record_is_a_miss(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path, max_bytes=10**6)
    await store.start()
    try:
        await store.put_bytes(record(1, 1, expires_at=time.time() - 1), b"a")
        await store.put_bytes(record(2, 1, expires_at=time.time() + 60), b"b")
        await store.put_bytes(record(3, 1, expires_at=None), b"c")
        assert await store.get(f"{1:064x}") is None
        assert await store.get(f"{2:064x}") is not None
        assert await store.get(f"{3:064x}") is not None
    finally:
        await store.close()


async def test_lru_eviction_keeps_the_store_under_its_limit(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path, max_bytes=300)
    await store.start()
    try:
        for n in range(1, 4):
            await store.put_bytes(record(n, 100), b"x" * 100)
        assert await store.get(f"{1:064x}") is not None  # 1 is now the most recent
        await store.put_bytes(record(4, 100), b"x" * 100)
        assert await store.evict() == 1
        assert await store.get(f"{2:064x}") is None  # least recently used went first
        for n in (1, 3, 4):
            assert await store.get(f"{n:064x}") is not None
        assert store.stats() == {"bytes": 300, "files": 3, "evictions": 1}
    finally:
        await store.close()


async def test_start_indexes_what_is_there(tmp_path: Path) -> None:
    first = LocalImageStore(tmp_path, max_bytes=10**6)
    await first.start()
    png_head = b"\x89PNG\r\n\x1a\n" + b"rest"  # start-up checks each image's type and size
    await first.put_bytes(record(1, 12), png_head)
    await first.close()
    second = LocalImageStore(tmp_path, max_bytes=10**6)
    await second.start()
    try:
        assert second.stats()["files"] == 1 and second.stats()["bytes"] == 12
    finally:
        await second.close()


def test_temp_names_carry_the_pid() -> None:
    name = temp_name("abc")
    assert name.startswith(f"{TEMP_PREFIX}{os.getpid()}-abc-")
    assert is_stale_temp(name)  # our own leftovers (from before a restart) are stale
    assert is_stale_temp(f"{TEMP_PREFIX}abc-def")  # old format: no pid


def test_other_live_processes_keep_their_temp_files(tmp_path: Path) -> None:
    # A live process (another worker) still writing: its temp files survive our start-up.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        alive = f"{TEMP_PREFIX}{other.pid}-x-1"
        assert not is_stale_temp(alive)
    finally:
        other.kill()
        other.wait()
    assert is_stale_temp(alive)  # and once it is gone, they are leftovers


@pytest.mark.parametrize("where", ["images/ab", "analyses/cd"])
async def test_start_up_removes_dead_processes_temp_files(tmp_path: Path, where: str) -> None:
    shard = tmp_path / where
    shard.mkdir(parents=True)
    dead = shard / f"{TEMP_PREFIX}999999999-x-1"
    dead.write_bytes(b"partial")
    store = LocalImageStore(tmp_path, max_bytes=10**6)
    await store.start()
    await LocalAnalysisStore(tmp_path).start()
    await store.close()
    assert not dead.exists()


async def test_writer_holds_a_small_download_in_memory_and_writes_it_at_commit(
    tmp_path: Path,
) -> None:
    # Each aiofiles call is a thread hop: a download of up to MEMORY_SPOOL bytes makes none
    # before the commit, which writes, records and renames it in one hop; retries included.
    import satapi.stores.local as storage

    store = LocalImageStore(tmp_path, max_bytes=10**8)
    await store.start()
    try:
        writer = await store.open_writer(f"{6:064x}")
        await writer.write(b"z" * 1000)
        await writer.reset()  # a retry starts over
        body = bytes(range(256)) * (storage.MEMORY_SPOOL // 256)  # exactly MEMORY_SPOOL bytes
        for i in range(0, len(body), 16384):
            await writer.write(body[i : i + 16384])
        assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing on disk yet
        await writer.finish()
        assert writer.held == body
        await writer.commit(record(6, len(body)))
        got = await store.get(f"{6:064x}")
        assert got is not None and await store.read_bytes(got) == body
        assert not [p for p in tmp_path.rglob(f"{TEMP_PREFIX}*")]
        # Aborted before its commit: nothing was ever on disk, nothing is left.
        writer = await store.open_writer(f"{8:064x}")
        await writer.write(b"x" * 100)
        await writer.abort()
        assert not [p for p in tmp_path.rglob(f"{TEMP_PREFIX}*")]
    finally:
        await store.close()


async def test_writer_spills_a_big_download_in_big_pieces_and_keeps_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Beyond MEMORY_SPOOL the download goes to its temp file: what was held in one write, then
    # network-sized chunks gathered into pieces of WRITE_BUFFER bytes; every byte in order.
    import satapi.stores.local as storage
    from satapi.stores.spool import SpoolWriter

    store = LocalImageStore(tmp_path, max_bytes=10**8)
    await store.start()
    writes: list[int] = []
    real_open = SpoolWriter._open_file

    async def counting_open(self: SpoolWriter) -> None:
        await real_open(self)
        real_write = self._file.write

        async def counting_write(data: bytes) -> int:
            writes.append(len(data))
            return int(await real_write(data))

        self._file.write = counting_write

    monkeypatch.setattr(SpoolWriter, "_open_file", counting_open)
    try:
        writer = await store.open_writer(f"{7:064x}")
        body = bytes(range(256)) * 4096 * 3  # 3 MiB in 16 KiB chunks
        for i in range(0, len(body), 16384):
            await writer.write(body[i : i + 16384])
        await writer.commit(record(7, len(body)))
        first = storage.MEMORY_SPOOL + 16384  # what was held, and the chunk that spilled it
        rest = len(body) - first
        assert writes == [first] + [storage.WRITE_BUFFER] * (rest // storage.WRITE_BUFFER) + [
            rest % storage.WRITE_BUFFER
        ]
        assert writer.held is None
        got = await store.get(f"{7:064x}")
        assert got is not None and await store.read_bytes(got) == body
        assert not [p for p in tmp_path.rglob(f"{TEMP_PREFIX}*")]
    finally:
        await store.close()


async def test_store_recreates_a_removed_shard_directory(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path, max_bytes=10**6)
    await store.start()
    try:
        shard = tmp_path / "images" / "00"
        assert not shard.exists()  # made by the first write into it
        await store.put_bytes(record(4, 3), b"abc")
        assert (shard / f"{4:064x}.json").exists()
        for path in shard.iterdir():
            path.unlink()
        shard.rmdir()
        await store.put_bytes(record(5, 3), b"abc")
        assert (shard / f"{5:064x}.json").exists()
    finally:
        await store.close()


async def test_recent_records_are_answered_from_memory_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import satapi.stores.local as storage

    store = LocalImageStore(tmp_path, max_bytes=10**6)
    await store.start()
    loads: list[str] = []
    real_load = store._load_record

    def counting_load(image_id: str) -> ImageRecord | None:
        loads.append(image_id)
        return real_load(image_id)

    monkeypatch.setattr(store, "_load_record", counting_load)
    try:
        await store.put_bytes(record(4, 3), b"abc")
        for _ in range(5):
            assert await store.get(f"{4:064x}") is not None
        assert loads == []  # just written: known without a file access
        assert await store.get(f"{4:064x}", check=True) is not None
        assert len(loads) == 1
        for path in (tmp_path / "images").rglob(f"{4:064x}*"):
            path.unlink()
        monkeypatch.setattr(storage, "RECHECK_S", 0.0)
        assert await store.get(f"{4:064x}") is None  # looked again, and it is gone
        assert len(loads) == 2
        with pytest.raises(storage.NotFound):
            await store.read_bytes(record(4, 3))
        assert store.stats()["files"] == 0
    finally:
        await store.close()
