"""The local store: content-addressed images and analysis results as files, read and written off
the event loop (aiofiles, or one worker-thread hop for several file operations)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from time import monotonic
from time import time as _now
from typing import Any

import aiofiles
import aiofiles.os

from satapi.errors import InvalidRequest, NotFound
from satapi.storage import ImageRecord, ImageWriter, check_id
from satapi.stores.spool import (
    MEMORY_SPOOL,
    NO_SPACE,
    STORE_FULL_RETRY_AFTER_S,
    TEMP_PREFIX,
    WRITE_BUFFER,
    SpaceWatch,
    SpoolWriter,
    is_no_space,
    is_stale_temp,
    remove_quietly,
    remove_temp_files,
    store_full,
    temp_name,
)

# Re-exported: the temp-file helpers lived here before spool.py, and callers still import them.
__all__ = [
    "NO_SPACE",
    "STORE_FULL_RETRY_AFTER_S",
    "TEMP_PREFIX",
    "WRITE_BUFFER",
    "LocalAnalysisStore",
    "LocalImageStore",
    "bytes_look_like",
    "is_no_space",
    "is_stale_temp",
    "remove_temp_files",
    "store_full",
    "temp_name",
]

log = logging.getLogger("satapi.storage")

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/tiff": "tif"}
CHUNK = 64 * 1024
RECHECK_S = 2.0  # how long a record seen on disk is trusted from memory
MEMORY_RECORDS = 4096  # records kept in memory, most recently used
ORPHAN_AGE_S = 300.0  # an image without a record this old is no publish in progress
MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),  # TIFF and BigTIFF
}


def bytes_look_like(head: bytes, content_type: str) -> bool:
    """True when a file's first bytes are those of `content_type` (PNG or JPEG)."""
    return any(head.startswith(m) for m in MAGIC.get(content_type, (b"",)))


class _LocalWriter(SpoolWriter):
    """The shared writer (`spool.py`), committed by renaming in one hop.

    A download of up to `MEMORY_SPOOL` bytes stays in memory: its temp file is written in the
    same worker-thread hop as the record and both renames, so it costs one file hop in all.
    A shard directory is made by the first write into it (in the same hop for a download held
    in memory); an empty store is one empty directory, so starting one costs next to nothing.
    """

    def __init__(self, store: LocalImageStore, image_id: str) -> None:
        super().__init__(
            store.meta_path(image_id).with_name(temp_name(image_id)),
            store.space,
            memory_limit=MEMORY_SPOOL,
        )
        self._store = store
        self.image_id = image_id
        store._writers.add(self)

    async def commit(self, record: ImageRecord) -> ImageRecord:
        await self.finish()
        final_path = self._store.image_path(self.image_id, record.content_type)
        meta_path = self._store.meta_path(self.image_id)
        data = self.held
        self._on_disk = True  # from here the temp file may exist until the hop has finished
        try:
            await asyncio.to_thread(_publish, self.temp_path, final_path, meta_path, record, data)
        except OSError as exc:
            raise self.no_space(exc, self.bytes_written) from None
        self._space.wrote()
        self._done = True
        self._store._writers.discard(self)
        self._store._remember(record)
        self._store._note(record, monotonic())
        return record

    async def abort(self) -> None:
        if await self.discard():
            self._store._writers.discard(self)


def _publish(
    temp_path: Path, final_path: Path, meta_path: Path, record: ImageRecord, data: bytes | None
) -> None:
    # One worker-thread hop: write the image held in memory (if it is) to its temp file and the
    # record to another, then rename the image into place and the record after it, so a record
    # never points at a missing image, and no partial file is ever visible under a final name.
    # The final name follows the type the bytes turned out to have.
    meta_temp = meta_path.with_name(temp_name(record.id, ".json"))
    try:
        if data is not None:
            _write_new(temp_path, data)
        meta_temp.write_text(json.dumps(asdict(record)))
        temp_path.replace(final_path)
        meta_temp.replace(meta_path)
    except BaseException:
        meta_temp.unlink(missing_ok=True)
        temp_path.unlink(missing_ok=True)
        raise


def _write_new(path: Path, data: bytes) -> None:
    """Write `data` to `path` (its directory too, if it was removed while running)."""
    try:
        f = path.open("wb")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = path.open("wb")
    with f:
        f.write(data)


class LocalImageStore:
    """Images under `<root>/images/<2 hex>/<id>.<ext>` with `<id>.json` records beside them.

    Writes go to a temporary file in the same directory and are renamed into place, so no partial
    file is ever visible. The store is held under `max_bytes` by evicting the least recently used
    images in a background task.
    """

    def __init__(self, root: Path, *, max_bytes: int, evict_interval_s: float = 30.0) -> None:
        self.root = Path(root) / "images"
        self.max_bytes = max_bytes
        self._evict_interval_s = evict_interval_s
        self._lru: OrderedDict[str, tuple[int, str]] = OrderedDict()  # id -> (bytes, content_type)
        self._total = 0
        self.evictions = 0
        self._reading: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writers: set[_LocalWriter] = set()  # not yet committed or aborted
        # Recently seen records, so a burst of cache hits costs no file access each: with
        # several workers sharing the directory another may evict an image meanwhile, so
        # memory is trusted for RECHECK_S only, and readers report a vanished image as 404.
        self._seen: OrderedDict[str, tuple[ImageRecord, float]] = OrderedDict()
        # Remembers a write that ran out of space; /readyz reports the store unwritable until
        # the disk has room for it.
        self.space = SpaceWatch(self.root)

    # -- paths ----------------------------------------------------------------------------------

    def _dir(self, image_id: str) -> Path:
        return self.root / check_id(image_id)[:2]

    def image_path(self, image_id: str, content_type: str) -> Path:
        """Where the image's bytes live."""
        return self._dir(image_id) / f"{image_id}.{EXTENSIONS.get(content_type, 'bin')}"

    def meta_path(self, image_id: str) -> Path:
        """Where the image's record lives."""
        return self._dir(image_id) / f"{image_id}.json"

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await aiofiles.os.makedirs(self.root, exist_ok=True)
        entries = await asyncio.to_thread(self._scan)
        for image_id, size, content_type in entries:
            self._lru[image_id] = (size, content_type)
            self._total += size
        self._task = asyncio.create_task(self._evict_loop(), name="satapi-store-evict")
        if self._total > self.max_bytes:
            self._wake.set()

    def _scan(self) -> list[tuple[str, int, str]]:
        # Runs in a thread at start-up: removes leftover temp files, records whose image is
        # missing or does not match them (size, type) and old images without a record, then
        # indexes what is left, oldest first so the LRU order starts from the records' ages.
        found: list[tuple[float, str, int, str]] = []
        now = _now()
        for shard in self.root.iterdir():
            if not shard.is_dir():
                continue
            names = {path.name for path in shard.iterdir()}
            kept: set[str] = set()
            for name in sorted(names):
                path = shard / name
                if name.startswith(TEMP_PREFIX):
                    if is_stale_temp(name):
                        path.unlink(missing_ok=True)
                        log.info("removed leftover temp file %s", name)
                    continue
                if not name.endswith(".json"):
                    continue
                checked = self._check_stored(path)
                if checked is None:
                    continue
                stamp, record = checked
                kept.add(self.image_path(record.id, record.content_type).name)
                found.append((stamp, record.id, record.bytes, record.content_type))
            for name in names - kept:
                path = shard / name
                if name.startswith(TEMP_PREFIX) or name.endswith(".json"):
                    continue
                with contextlib.suppress(OSError):
                    # Young ones may be another worker's publish between its two renames.
                    if now - path.stat().st_mtime > ORPHAN_AGE_S:
                        path.unlink()
                        log.warning("removed image file %s, which has no record", name)
        found.sort()
        return [(i, size, ct) for _, i, size, ct in found]

    def _check_stored(self, meta: Path) -> tuple[float, ImageRecord] | None:
        """(mtime, record) when the record's image is there with its size and type; removes a
        record that is unreadable or whose image is missing, truncated or of another type."""
        record: ImageRecord | None = None
        try:
            record = ImageRecord.from_json(json.loads(meta.read_text()))
            stamp = meta.stat().st_mtime
            image = self.image_path(record.id, record.content_type)
            size = image.stat().st_size
            with image.open("rb") as f:
                head = f.read(16)
        except FileNotFoundError:
            problem = "its image is missing"
        except (OSError, ValueError, TypeError) as exc:
            problem = f"it cannot be read ({type(exc).__name__})"
        else:
            if meta.stem != record.id:
                problem = f"it is the record of {record.id}"
            elif size != record.bytes:
                problem = f"its image has {size} bytes, not {record.bytes}"
            elif not bytes_look_like(head, record.content_type):
                problem = f"its image is not {record.content_type}"
            else:
                return stamp, record
        log.warning("removed the stored record %s: %s", meta.name, problem)
        meta.unlink(missing_ok=True)
        if record is not None and meta.stem == record.id:
            with contextlib.suppress(OSError, InvalidRequest):
                self.image_path(record.id, record.content_type).unlink(missing_ok=True)
        return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # Downloads cut off by a forced shutdown may not get to run their own clean-up; remove
        # the temp files of this process's unfinished writers (never other processes' files).
        for writer in list(self._writers):
            self._writers.discard(writer)
            await remove_quietly(writer.temp_path)

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, image_id: str, *, check: bool = False) -> ImageRecord | None:
        check_id(image_id)
        now = monotonic()
        seen = None if check else self._seen.get(image_id)
        if seen is not None and now - seen[1] < RECHECK_S and not seen[0].expired():
            self._seen.move_to_end(image_id)
            self._touch(seen[0])
            return seen[0]
        # One worker-thread hop for open, read, parse and the existence check; through aiofiles
        # they were four, and a cache hit got ~20 % faster (bench/RESULTS.md, scenario 4).
        record = await asyncio.to_thread(self._load_record, image_id)
        if record is None:
            self._seen.pop(image_id, None)
            return None
        self._note(record, now)
        self._touch(record)
        return record

    def _note(self, record: ImageRecord, now: float) -> None:
        self._seen[record.id] = (record, now)
        self._seen.move_to_end(record.id)
        if len(self._seen) > MEMORY_RECORDS:
            self._seen.popitem(last=False)

    def _gone(self, record: ImageRecord) -> NotFound:
        # Removed behind this process's back (another worker's eviction, an operator).
        self._seen.pop(record.id, None)
        if (entry := self._lru.pop(record.id, None)) is not None:
            self._total -= entry[0]
        return NotFound(f"The stored image {record.id} is no longer in the store; ask again.")

    def _load_record(self, image_id: str) -> ImageRecord | None:
        try:
            record = ImageRecord.from_json(json.loads(self.meta_path(image_id).read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None
        if record.expired():
            return None
        try:
            size = self.image_path(image_id, record.content_type).stat().st_size
        except FileNotFoundError:
            return None
        # One stat, as the existence check was: an image that is not what its record says
        # (truncated behind the store's back) is never served.
        if size != record.bytes:
            log.warning("stored image %s has %d bytes, not %d", image_id, size, record.bytes)
            return None
        return record

    async def iter_bytes(self, record: ImageRecord) -> AsyncIterator[bytes]:
        self._reading[record.id] = self._reading.get(record.id, 0) + 1
        try:
            try:
                f = await aiofiles.open(self.image_path(record.id, record.content_type), "rb")
            except FileNotFoundError:
                raise self._gone(record) from None
            try:
                while chunk := await f.read(CHUNK):
                    yield chunk
            finally:
                await f.close()
        finally:
            self._reading[record.id] -= 1
            if not self._reading[record.id]:
                del self._reading[record.id]

    async def read_bytes(self, record: ImageRecord) -> bytes:
        # One worker-thread hop for open, read and close (three through aiofiles).
        try:
            return await asyncio.to_thread(
                self.image_path(record.id, record.content_type).read_bytes
            )
        except FileNotFoundError:
            raise self._gone(record) from None

    # -- writes ---------------------------------------------------------------------------------

    async def open_writer(self, image_id: str) -> ImageWriter:
        writer = _LocalWriter(self, image_id)
        try:
            await writer.open()
        except Exception:
            await writer.abort()  # e.g. a full disk: forget the writer, nothing to clean up
            raise
        return writer

    async def put_bytes(self, record: ImageRecord, data: bytes) -> None:
        writer = await self.open_writer(record.id)
        try:
            await writer.write(data)
            await writer.commit(record)
        finally:
            await writer.abort()

    async def writable(self) -> bool:
        # Full until the write that failed would fit (space freed, or evictions).
        if not await self.space.has_room():
            return False
        probe = self.root / temp_name("probe")
        try:
            async with aiofiles.open(probe, "wb") as f:
                await f.write(b"ok")
            await aiofiles.os.remove(probe)
        except OSError:
            return False
        return True

    async def problem(self) -> str | None:
        if await self.writable():
            return None
        if self.space.short is not None:
            return f"The data directory {self.root.parent} is full."
        return f"The data directory {self.root.parent} is not writable."

    # -- accounting and eviction ------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {"bytes": self._total, "files": len(self._lru), "evictions": self.evictions}

    def _touch(self, record: ImageRecord) -> None:
        if record.id in self._lru:
            self._lru.move_to_end(record.id)
        else:
            self._remember(record)

    def _remember(self, record: ImageRecord) -> None:
        old = self._lru.pop(record.id, None)
        if old is not None:
            self._total -= old[0]
        self._lru[record.id] = (record.bytes, record.content_type)
        self._total += record.bytes
        if self._total > self.max_bytes:
            self._wake.set()

    async def _evict_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._evict_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.evict()
            except Exception:
                log.exception("eviction failed")

    async def evict(self) -> int:
        """Remove least recently used images until the store fits `max_bytes`; returns the count."""
        removed = 0
        for image_id in list(self._lru):
            if self._total <= self.max_bytes:
                break
            if image_id in self._reading:
                continue
            size, content_type = self._lru.pop(image_id)
            self._total -= size
            self._seen.pop(image_id, None)
            # Record first: without it the image is already invisible.
            await remove_quietly(self.meta_path(image_id))
            await remove_quietly(self.image_path(image_id, content_type))
            removed += 1
        self.evictions += removed
        return removed


class LocalAnalysisStore:
    """Analysis results as JSON files under `<root>/analyses/<2 hex>/<id>.json`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "analyses"

    async def start(self) -> None:
        """Remove temp files left by processes that are gone."""
        await aiofiles.os.makedirs(self.root, exist_ok=True)
        await asyncio.to_thread(remove_temp_files, self.root)

    def _path(self, analysis_id: str) -> Path:
        return self.root / check_id(analysis_id)[:2] / f"{analysis_id}.json"

    async def get(self, analysis_id: str) -> dict[str, Any] | None:
        """The stored result, or None."""
        # One worker-thread hop for open, read and close (three through aiofiles).
        try:
            text = await asyncio.to_thread(self._path(analysis_id).read_bytes)
            data: dict[str, Any] = json.loads(text)
        except (FileNotFoundError, ValueError):
            return None
        return data

    async def put(self, analysis_id: str, result: dict[str, Any]) -> None:
        """Store a result atomically."""
        path = self._path(analysis_id)
        temp = path.with_name(temp_name(analysis_id))
        body = json.dumps(result).encode()
        try:
            # One worker-thread hop (five through aiofiles: makedirs, open, write, close, rename).
            await asyncio.to_thread(_replace_with, path, temp, body)
        except BaseException as exc:
            await remove_quietly(temp)
            if is_no_space(exc):
                raise store_full("the analysis result") from None
            raise


def _replace_with(path: Path, temp: Path, data: bytes) -> None:
    """Write `data` to `temp` and rename it to `path` (blocking; the temp file is the caller's to
    remove on failure)."""
    _write_new(temp, data)
    temp.replace(path)
