"""The store seam: image records and the image and analysis store protocols.

Backends live in `satapi.stores` (`stores/local.py`: files via aiofiles; `stores/s3.py`: any
S3-compatible object store), whose `open_stores` picks one from the settings. Images are
content-addressed: an image's id is the sha256 of its canonical request.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from time import time as _now
from typing import TYPE_CHECKING, Any, Protocol

from satapi.errors import InvalidRequest

if TYPE_CHECKING:
    pass

ID_PATTERN = r"^[0-9a-f]{64}$"
_ID_RE = re.compile(ID_PATTERN)


def check_id(value: str) -> str:
    """Return `value` if it is a well-formed id (64 lower-case hex digits), else raise."""
    if not _ID_RE.fullmatch(value):
        raise InvalidRequest("An id is 64 lower-case hexadecimal characters.")
    return value


@dataclass(kw_only=True)
class ImageRecord:
    """What the store knows of one image, kept beside it as JSON."""

    id: str
    content_type: str
    bytes: int
    width: int
    height: int
    provider: str | None = None
    layer: str | None = None
    bbox: list[float] | None = None
    crs: str | None = None
    time: str | None = None
    fetched_at: float = field(default_factory=_now)
    expires_at: float | None = None
    source_url: str | None = None  # secrets already redacted
    attribution: str | None = None
    # The provider kind it came from ("wms", "sentinelhub"), or "derived" for images the
    # service made (change masks).
    kind: str = "wms"

    def expired(self, now: float | None = None) -> bool:
        """True when the record has a TTL that has passed."""
        return self.expires_at is not None and (now or _now()) >= self.expires_at

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRecord:
        """Build a record from its JSON form, ignoring unknown keys."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class ImageWriter(Protocol):
    """A temporary, invisible file that becomes an image only on `commit`."""

    temp_path: Path
    bytes_written: int

    async def write(self, chunk: bytes) -> None:
        """Append a chunk."""
        ...

    async def reset(self) -> None:
        """Drop what was written (before a retry)."""
        ...

    async def finish(self) -> None:
        """Flush and close the temporary file so it can be read (verified) before commit."""
        ...

    @property
    def held(self) -> bytes | None:
        """After `finish`: the whole image if it is still only in memory (verify these bytes;
        `commit` writes them), else None (verify the file at `temp_path`)."""
        ...

    async def commit(self, record: ImageRecord) -> ImageRecord:
        """Make the image and its record visible, atomically; returns the stored record.

        A shared store may already hold this id from another writer: then that record wins
        and is returned, so every reader sees the same bytes.
        """
        ...

    async def abort(self) -> None:
        """Remove the temporary file."""
        ...


class ImageStore(Protocol):
    """Where images live; a shared backend (an S3-compatible store) can replace the local one."""

    async def start(self) -> None:
        """Prepare the store (directories, index, clean-up of leftovers)."""
        ...

    async def close(self) -> None:
        """Stop background work."""
        ...

    async def get(self, image_id: str, *, check: bool = False) -> ImageRecord | None:
        """The record of a present, unexpired image, or None.

        A store may answer from memory what it saw on disk moments ago; `check=True` looks
        again (before streaming the bytes to a client).
        """
        ...

    async def open_writer(self, image_id: str) -> ImageWriter:
        """A writer for a new version of `image_id` (its type is settled by the record)."""
        ...

    async def put_bytes(self, record: ImageRecord, data: bytes) -> None:
        """Store a whole image the service made itself."""
        ...

    def iter_bytes(self, record: ImageRecord) -> AsyncIterator[bytes]:
        """The image's bytes, in chunks."""
        ...

    async def read_bytes(self, record: ImageRecord) -> bytes:
        """The image's bytes, whole (for analysis)."""
        ...

    async def writable(self) -> bool:
        """True when a file can be written now."""
        ...

    async def problem(self) -> str | None:
        """None when the store can be written now, else a sentence saying why not (/readyz)."""
        ...

    def stats(self) -> dict[str, int]:
        """`bytes`, `files` and `evictions`."""
        ...


class AnalysisStore(Protocol):
    """Where analysis results live, as JSON objects by id."""

    async def start(self) -> None:
        """Prepare the store (directories, clean-up of leftovers)."""
        ...

    async def get(self, analysis_id: str) -> dict[str, Any] | None:
        """The stored result, or None."""
        ...

    async def put(self, analysis_id: str, result: dict[str, Any]) -> None:
        """Store a result atomically."""
        ...
