"""Job records as JSON files under the data directory (in-process jobs, no Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

from satapi.jobs.model import FINAL, JobRecord


class FileJobStore:
    """`JobStore` in `<dir>/<id>.json` (written whole, then renamed into place).

    Every `satapi serve` process of one machine sees the same files. A record expires `ttl_s`
    after it was last written.
    """

    def __init__(self, directory: Path, *, ttl_s: float) -> None:
        self._dir = directory
        self._ttl_s = ttl_s
        self._lock = asyncio.Lock()

    def _path(self, job_id: str, suffix: str = ".json") -> Path:
        return self._dir / f"{job_id}{suffix}"

    async def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            async with aiofiles.open(path) as f:
                data: dict[str, Any] = json.loads(await f.read())
        except (FileNotFoundError, ValueError):
            return None
        if data.get("_expires", float("inf")) < time.time():
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.remove(path)
            return None
        return data

    async def _write(self, path: Path, data: dict[str, Any]) -> None:
        await aiofiles.os.makedirs(self._dir, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        async with aiofiles.open(tmp, "w") as f:
            await f.write(json.dumps({**data, "_expires": time.time() + self._ttl_s}))
        await aiofiles.os.replace(tmp, path)

    async def get(self, job_id: str) -> JobRecord | None:
        """The record, or None when unknown or expired."""
        data = await self._read(self._path(job_id))
        if data is None:
            return None
        record = JobRecord.from_json(data)
        note = await self._read(self._path(job_id, ".webhook"))
        record.webhook = None if note is None else str(note.get("note"))
        return record

    async def put(self, record: JobRecord) -> bool:
        """Write `record` unless the stored one is final."""
        async with self._lock:
            current = await self._read(self._path(record.id))
            if current is not None and current.get("state") in FINAL:
                return False
            await self._write(self._path(record.id), record.to_json())
            return True

    async def note_webhook(self, job_id: str, note: str) -> None:
        """Set the webhook delivery note."""
        await self._write(self._path(job_id, ".webhook"), {"note": note})

    async def claim_webhook(self, job_id: str, lease_s: float) -> bool:
        """True for the one caller that may send the webhook now."""
        async with self._lock:
            current = await self._read(self._path(job_id, ".webhook"))
            if current is not None and (
                current.get("note") != "sending" or current.get("at", 0) + lease_s > time.time()
            ):
                return False
            await self._write(
                self._path(job_id, ".webhook"), {"note": "sending", "at": time.time()}
            )
            return True

    async def unfinished(self) -> list[JobRecord]:
        """Every record that is not final."""
        try:
            names = await aiofiles.os.listdir(self._dir)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name.endswith(".json"):
                data = await self._read(self._dir / name)
                if data is not None and data.get("state") not in FINAL:
                    out.append(JobRecord.from_json(data))
        return out

    async def close(self) -> None:
        """Nothing to release."""
