"""The temp-file writer both stores use: a download gathered in memory or in an invisible file,
507 when the disk is full.

The file store keeps a download of up to `MEMORY_SPOOL` bytes in memory (a 512² PNG, a tile):
it is verified from memory and written to its temp file, renamed and recorded in one worker-thread
hop at commit. A larger one, and every download of the S3 store, is written to the temp file
here, through aiofiles, in pieces of up to `WRITE_BUFFER` bytes; the file store renames the
finished file into place, the S3 store uploads it and removes it. Either way a full disk (ENOSPC,
EDQUOT) is the client's 507 `store_full` with nothing left behind, remembered by `SpaceWatch` so
/readyz reports it until the disk has room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

from satapi.errors import StoreFull

log = logging.getLogger("satapi.storage")

TEMP_PREFIX = ".tmp-"
WRITE_BUFFER = 256 * 1024  # bytes gathered per aiofiles write
# A download up to this size stays in memory until the store commits it (no file hops at all);
# beyond it, it spills to its temp file. At most this much per download in flight.
MEMORY_SPOOL = 512 * 1024
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
STORE_FULL_RETRY_AFTER_S = 60.0


def is_no_space(exc: BaseException) -> bool:
    """True for the OSError of a full disk (or an exhausted quota)."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def store_full(what: str) -> StoreFull:
    """The client-facing error for a write that found no room."""
    return StoreFull(
        f"The data directory is full: {what} could not be stored. Nothing partial was kept.",
        retry_after=STORE_FULL_RETRY_AFTER_S,
    )


def temp_name(stem: str, suffix: str = "") -> str:
    """A unique temporary file name that carries this process's id (see `is_stale_temp`)."""
    return f"{TEMP_PREFIX}{os.getpid()}-{stem}-{uuid.uuid4().hex}{suffix}"


def is_stale_temp(name: str) -> bool:
    """True for a temp file whose writing process is gone (or that names no process).

    With several workers sharing a data directory, a worker starting up must not delete the
    temp files of downloads other workers still have in flight.
    """
    pid_text = name.removeprefix(TEMP_PREFIX).split("-", 1)[0]
    if not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_temp_files(root: Path) -> int:
    """Remove leftover temp files of processes that are gone under `root` (blocking)."""
    count = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(TEMP_PREFIX) and is_stale_temp(name):
                Path(dirpath, name).unlink(missing_ok=True)
                count += 1
    return count


async def remove_quietly(path: Path) -> None:
    """Remove a file; already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        await aiofiles.os.remove(path)


class SpaceWatch:
    """Remembers that a write into `directory` found the disk full, until it has room again.

    `short` is the size of the largest write that failed since the last one that went through
    (None: no such failure); /readyz reports the store unwritable until that much is free.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.short: int | None = None

    def out_of_space(self, needed: int) -> None:
        """A write of `needed` bytes found no room."""
        if self.short is None:
            log.warning("%s is on a full disk (a write of %d bytes failed)", self.directory, needed)
        self.short = max(needed, self.short or 0)

    def wrote(self) -> None:
        """A write went through: there is room again."""
        self.short = None

    def _free_bytes(self) -> int:
        stats = os.statvfs(self.directory)
        return stats.f_bavail * stats.f_frsize

    async def has_room(self) -> bool:
        """False while the last write that failed would still not fit (one statvfs, in a
        thread, and only after such a failure)."""
        if self.short is None:
            return True
        try:
            free = await asyncio.to_thread(self._free_bytes)
        except OSError:
            return False
        if free < self.short:
            return False
        log.info("%s has room again (%d bytes free)", self.directory, free)
        self.short = None
        return True


class SpoolWriter:
    """Gathers a download in memory up to `memory_limit` bytes, in `temp_path` beyond that.

    Each aiofiles call is a hop to a worker thread and back. A download that fits in
    `memory_limit` makes none here: `held` hands its bytes to the check and to the store's
    `commit`, which writes them. A larger one spills to the file, and network chunks are
    gathered into pieces of `WRITE_BUFFER` bytes per write. With `memory_limit` 0 (the S3
    store) the file is created by `open` and every byte goes through it. A full disk raises
    `StoreFull` (and tells `space`); any other OSError stays an internal error. The stores
    subclass it with their own `commit`; `discard` closes and removes the file.
    """

    def __init__(self, temp_path: Path, space: SpaceWatch, *, memory_limit: int = 0) -> None:
        self.temp_path = temp_path
        self.bytes_written = 0
        self._space = space
        self._memory_limit = memory_limit
        self._buffer = bytearray()
        self._held: bytes | None = None
        self._file: Any = None
        self._on_disk = False  # the temp file may exist (opened, or a commit began writing it)
        self._done = False  # committed or discarded: nothing left to clean up

    async def open(self) -> None:
        """Create the temp file now, unless downloads start in memory (`memory_limit`)."""
        if self._memory_limit <= 0:
            await self._open_file()

    async def _open_file(self) -> None:
        # Its directory too, if it was removed while running.
        self._on_disk = True
        try:
            try:
                self._file = await aiofiles.open(self.temp_path, "wb")
            except FileNotFoundError:
                await aiofiles.os.makedirs(self.temp_path.parent, exist_ok=True)
                self._file = await aiofiles.open(self.temp_path, "wb")
        except OSError as exc:
            raise self.no_space(exc, self.bytes_written) from None

    def no_space(self, exc: OSError, needed: int) -> OSError | StoreFull:
        """What to raise for `exc`: `StoreFull` for a full disk, else `exc` itself. The
        caller's `abort` removes what was written."""
        if not is_no_space(exc):
            return exc
        self._space.out_of_space(needed)
        return store_full("the image")

    async def write(self, chunk: bytes) -> None:
        """Append a chunk."""
        self.bytes_written += len(chunk)
        if self._file is None:
            if self.bytes_written <= self._memory_limit:
                self._buffer += chunk  # still held in memory
                return
            await self._open_file()  # too big to hold: what was gathered goes to the file
        if not self._buffer and len(chunk) >= WRITE_BUFFER:
            try:
                await self._file.write(chunk)  # big enough on its own: no copy
            except OSError as exc:
                raise self.no_space(exc, self.bytes_written) from None
            return
        self._buffer += chunk
        if len(self._buffer) >= WRITE_BUFFER:
            await self._flush()

    async def _flush(self) -> None:
        if self._buffer:
            # Hand the buffer itself to the worker thread (no copy) and start a new one.
            data, self._buffer = self._buffer, bytearray()
            try:
                await self._file.write(data)
            except OSError as exc:
                raise self.no_space(exc, self.bytes_written) from None

    async def reset(self) -> None:
        """Drop what was written (before a retry)."""
        self._buffer.clear()
        self._held = None
        self.bytes_written = 0
        if self._file is not None:
            await self._file.seek(0)
            await self._file.truncate()

    async def finish(self) -> None:
        """Flush and close the file so it can be read (verified); a download held in memory
        becomes `held`."""
        if self._file is None:
            if self._held is None:
                self._held, self._buffer = bytes(self._buffer), bytearray()
            return
        if not self._file.closed:
            await self._flush()
            try:
                await self._file.close()  # flushes Python's buffer too
            except OSError as exc:
                raise self.no_space(exc, self.bytes_written) from None

    @property
    def held(self) -> bytes | None:
        """After `finish`: the whole download when it never left memory (then nothing is on
        disk yet and the store's commit writes it), else None (it is in `temp_path`)."""
        return self._held

    async def discard(self) -> bool:
        """Close and remove the temp file; False when it was committed or discarded already."""
        if self._done:
            return False
        self._done = True
        self._buffer.clear()
        self._held = None
        if self._file is not None:
            with contextlib.suppress(Exception):
                await self._file.close()
        if self._on_disk:
            await remove_quietly(self.temp_path)
        return True
