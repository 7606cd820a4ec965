"""The shared store on any S3-compatible object store (obstore): images, records and analyses.

Layout under `s3://bucket/prefix/`:

    images/<id>.json          the image's record, naming the blob that holds its bytes
    blobs/<id>/<uuid>.<ext>   the bytes of one stored version of the image (never rewritten)
    analyses/<id>.json        a stored analysis answer
    .satapi-ready             the readiness probe's object

Every write is one whole PUT (or, for an image over 5 MiB, a multipart upload), which S3 makes
visible all at once or not at all, so no partial object is ever visible. An image's bytes go
first, to a key no other writer uses; its record follows with a create-if-absent PUT
(`If-None-Match: *`). The record is what makes an image
exist, so two replicas downloading one id race only on the record: one wins, the other drops
its own blob and serves the winner's, and every reader sees the same bytes. A record whose TTL
has passed is deleted and created again; blobs are never changed, so a reader holding an old
record still reads whole bytes. A bucket lifecycle rule bounds the bucket (docs/replicas.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from time import monotonic
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiofiles.os
import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from satapi.errors import BackendUnavailable, NotFound, StoreFull
from satapi.storage import ImageRecord, check_id
from satapi.stores.local import CHUNK, EXTENSIONS, RECHECK_S
from satapi.stores.spool import SpaceWatch, SpoolWriter, remove_temp_files, temp_name

log = logging.getLogger("satapi.storage")

T = TypeVar("T")
ErrorHook = Callable[[str, str], None]  # (operation, kind): an S3 call failed
MEMORY_RECORDS = 4096
RETRY_AFTER_S = 5.0
READY_KEY = ".satapi-ready"
CREATE_ATTEMPTS = 4
# The answers of S3-compatible services whose storage is full: MinIO's 507 XMinioStorageFull
# (below its free-drive threshold) and Ceph RGW's 403 QuotaExceeded (a bucket or user quota).
# AWS S3 itself has no such answer.
FULL_CODE = re.compile(r"<Code>(XMinioStorageFull|QuotaExceeded)</Code>")
FULL_RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class S3Location:
    """Where the store lives: a bucket and a key prefix (no leading or trailing slash)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """`s3://bucket/some/prefix` → S3Location("bucket", "some/prefix")."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
        return cls(parts.netloc, parts.path.strip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


@dataclass(frozen=True, kw_only=True)
class S3Options:
    """How to reach the service: the standard AWS settings, as `Settings` read them."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    allow_http: bool = False
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    max_retries: int = 2


def make_client(location: S3Location, options: S3Options) -> S3Store:
    """An obstore S3 client for `location` (requests go to the bucket, keys under the prefix)."""
    config: dict[str, Any] = {
        # PutMode "create" sends If-None-Match: * (object_store wants it asked for explicitly).
        "conditional_put": "etag",
        "region": options.region or "us-east-1",
    }
    if options.endpoint_url:
        config["endpoint"] = options.endpoint_url
    if options.access_key_id:
        config["access_key_id"] = options.access_key_id
    if options.secret_access_key:
        config["secret_access_key"] = options.secret_access_key
    if options.session_token:
        config["token"] = options.session_token
    return S3Store(
        location.bucket,
        prefix=location.prefix or None,
        config=config,  # type: ignore[arg-type]
        client_options={
            "allow_http": options.allow_http,
            "timeout": f"{options.timeout_s}s",
            "connect_timeout": f"{options.connect_timeout_s}s",
        },
        retry_config={
            "max_retries": options.max_retries,
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=2),
                "base": 2,
            },
            "retry_timeout": timedelta(seconds=options.timeout_s),
        },
    )


class S3Objects:
    """The few object operations the stores use; turns failures into `BackendUnavailable`.

    A missing key is an answer (None), not an error. Refused credentials, a missing bucket and
    an unreachable or failing service become 503 `backend_unavailable` with Retry-After, and
    are reported to `on_error` by operation, so metrics can count them.
    """

    def __init__(
        self,
        client: S3Store,
        location: S3Location,
        *,
        timeout_s: float = 30.0,
        on_error: ErrorHook | None = None,
    ) -> None:
        self.client = client
        self.location = location
        self._timeout_s = timeout_s
        self._on_error = on_error

    def _failure(self, operation: str, exc: BaseException) -> BackendUnavailable:
        text = str(exc)
        if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
            kind = "refused"
            message = (
                f"The object store refused satapi's credentials for {self.location} "
                "(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)."
            )
        elif "NoSuchBucket" in text or (isinstance(exc, FileNotFoundError) and operation == "put"):
            kind = "no_bucket"
            message = f"The bucket of {self.location} does not exist; create it first."
        elif isinstance(exc, TimeoutError):
            kind = "timeout"
            message = f"The object store did not answer in time ({self.location})."
        else:
            kind = "unavailable"
            message = f"The object store is unreachable or failing ({self.location})."
        # The full error (URL, status, body) goes to the log only: it is for the operator.
        log.warning("object store %s failed (%s): %s", operation, kind, text.splitlines()[0])
        if self._on_error is not None:
            with contextlib.suppress(Exception):
                self._on_error(operation, kind)
        return BackendUnavailable(
            message, backend="store", retry_after=RETRY_AFTER_S, extra={"reason": kind}
        )

    def _full(self, operation: str, exc: BaseException) -> StoreFull | None:
        match = FULL_CODE.search(str(exc))
        if match is None:
            return None
        log.warning("object store %s refused: %s (%s)", operation, match[1], self.location)
        if self._on_error is not None:
            with contextlib.suppress(Exception):
                self._on_error(operation, "full")
        return StoreFull(
            f"The object store is full ({match[1]}): nothing was stored. Try again later.",
            retry_after=FULL_RETRY_AFTER_S,
        )

    async def _run(self, operation: str, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout_s + 5):  # obstore's own deadline, plus slack
                return await call
        except (AlreadyExistsError, asyncio.CancelledError):
            raise
        except FileNotFoundError as exc:
            if operation != "put" and "NoSuchBucket" not in str(exc):
                raise
            raise self._failure(operation, exc) from None
        except (BaseError, OSError, TimeoutError) as exc:
            raise self._full(operation, exc) or self._failure(operation, exc) from None

    async def get_bytes(self, key: str) -> bytes | None:
        """The whole object, or None when there is no such key."""
        try:
            result = await self._run("get", obstore.get_async(self.client, key))
            return bytes(await self._run("get", result.bytes_async()))
        except FileNotFoundError:
            return None

    async def put(self, key: str, data: bytes, *, create: bool) -> bool:
        """Write a whole object; with `create`, only if the key is absent (False if it exists)."""
        try:
            await self._run(
                "put",
                obstore.put_async(self.client, key, data, mode="create" if create else "overwrite"),
            )
        except AlreadyExistsError:
            return False
        return True

    async def put_file(self, key: str, path: Path) -> None:
        """Upload a file to a key nobody else writes, in bounded memory.

        Files over 5 MiB go up as a multipart upload (two parts at a time), which S3 makes
        visible only when it completes; smaller ones in one PUT. The file is read by obstore's
        own threads, not on the event loop.
        """
        await self._run(
            "put", obstore.put_async(self.client, key, path, mode="overwrite", max_concurrency=2)
        )

    async def delete(self, key: str) -> None:
        """Remove an object (absent already is fine)."""
        with contextlib.suppress(FileNotFoundError):
            await self._run("delete", obstore.delete_async(self.client, key))

    async def stream(self, key: str, chunk_size: int = CHUNK) -> AsyncIterator[bytes] | None:
        """The object's bytes in chunks of about `chunk_size` (bounded memory), or None."""
        try:
            result = await self._run("get", obstore.get_async(self.client, key))
        except FileNotFoundError:
            return None
        return self._chunks(result.stream(min_chunk_size=chunk_size))

    async def _chunks(self, stream: Any) -> AsyncIterator[bytes]:
        iterator = stream.__aiter__()
        while True:
            try:
                chunk = await self._run("get", iterator.__anext__())
            except StopAsyncIteration:
                return
            yield bytes(chunk)


@dataclass(kw_only=True)
class S3ImageRecord(ImageRecord):
    """A record as the S3 store keeps it: with the key of the blob that holds the bytes."""

    blob: str


class _S3Writer(SpoolWriter):
    """The shared temp-file writer (`spool.py`): the download is gathered and verified in a
    local temp file, then published to S3; the temp file goes either way."""

    def __init__(self, store: S3ImageStore, image_id: str) -> None:
        super().__init__(store.temp_dir / temp_name(image_id), store.space)
        self._store = store
        self.image_id = image_id
        store._writers.add(self)

    async def commit(self, record: ImageRecord) -> ImageRecord:
        try:
            await self.finish()
            self._space.wrote()  # the spool disk had room for the whole image
            held = self.held
            return await self._store._publish(record, self.temp_path if held is None else held)
        finally:
            await self.abort()  # the temp file goes, whether the image was stored or not

    async def abort(self) -> None:
        if await self.discard():
            self._store._writers.discard(self)


class S3ImageStore:
    """Images in an S3-compatible bucket, shared by every replica that names the same store_url.

    Records seen moments ago are answered from memory (`get` without `check`); that is safe to
    share nothing about, because a record only ever points at bytes that never change.
    """

    def __init__(self, objects: S3Objects, temp_dir: Path) -> None:
        self.objects = objects
        self.temp_dir = Path(temp_dir)
        self._seen: OrderedDict[str, tuple[S3ImageRecord, float]] = OrderedDict()
        self._writers: set[_S3Writer] = set()
        # Downloads are gathered on the local disk first: a full one is a 507 and /readyz's
        # concern until it has room again, as with the file store.
        self.space = SpaceWatch(self.temp_dir)

    @staticmethod
    def record_key(image_id: str) -> str:
        """The key of an image's record."""
        return f"images/{check_id(image_id)}.json"

    async def start(self) -> None:
        await aiofiles.os.makedirs(self.temp_dir, exist_ok=True)
        await asyncio.to_thread(remove_temp_files, self.temp_dir)

    async def close(self) -> None:
        for writer in list(self._writers):
            await writer.abort()
        # obstore has aborted the interpreter at exit when its runtime was still busy with the
        # last call: give it a moment before the loop goes away.
        await asyncio.sleep(0.05)

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, image_id: str, *, check: bool = False) -> ImageRecord | None:
        check_id(image_id)
        now = monotonic()
        seen = None if check else self._seen.get(image_id)
        if seen is not None and now - seen[1] < RECHECK_S and not seen[0].expired():
            return seen[0]
        record = await self._load(image_id)
        if record is None or record.expired():
            self._seen.pop(image_id, None)
            return None
        self._note(record, now)
        return record

    async def _load(self, image_id: str) -> S3ImageRecord | None:
        data = await self.objects.get_bytes(self.record_key(image_id))
        if data is None:
            return None
        try:
            doc = json.loads(data)
            known = set(S3ImageRecord.__dataclass_fields__)
            return S3ImageRecord(**{k: v for k, v in doc.items() if k in known})
        except (ValueError, TypeError):
            log.warning("unreadable record for image %s in the object store", image_id)
            return None

    def _note(self, record: S3ImageRecord, now: float) -> None:
        self._seen[record.id] = (record, now)
        self._seen.move_to_end(record.id)
        if len(self._seen) > MEMORY_RECORDS:
            self._seen.popitem(last=False)

    async def _blob_of(self, record: ImageRecord) -> str:
        if isinstance(record, S3ImageRecord):
            return record.blob
        loaded = await self._load(record.id)
        if loaded is None:
            raise self._gone(record)
        return loaded.blob

    def _gone(self, record: ImageRecord) -> NotFound:
        self._seen.pop(record.id, None)
        return NotFound(f"The stored image {record.id} is no longer in the store; ask again.")

    async def open_stream(self, record: ImageRecord) -> AsyncIterator[bytes]:
        """Start reading the image (errors surface here, before a response has begun)."""
        stream = await self.objects.stream(await self._blob_of(record))
        if stream is None:
            raise self._gone(record)
        return stream

    async def iter_bytes(self, record: ImageRecord) -> AsyncIterator[bytes]:
        stream = await self.open_stream(record)
        async for chunk in stream:
            yield chunk

    async def read_bytes(self, record: ImageRecord) -> bytes:
        data = await self.objects.get_bytes(await self._blob_of(record))
        if data is None:
            raise self._gone(record)
        return data

    # -- writes ---------------------------------------------------------------------------------

    async def open_writer(self, image_id: str) -> _S3Writer:
        check_id(image_id)
        writer = _S3Writer(self, image_id)
        try:
            await writer.open()
        except Exception:
            await writer.abort()
            raise
        return writer

    async def put_bytes(self, record: ImageRecord, data: bytes) -> None:
        await self._publish(record, data)

    async def _publish(self, record: ImageRecord, data: bytes | Path) -> S3ImageRecord:
        """Store the bytes (or the file's), then create the record; the first record wins."""
        ext = EXTENSIONS.get(record.content_type, "bin")
        blob = f"blobs/{record.id}/{uuid.uuid4().hex}.{ext}"
        # A key of its own: nobody races it, so it needs no condition.
        if isinstance(data, Path):
            await self.objects.put_file(blob, data)
        else:
            await self.objects.put(blob, data, create=False)
        fields = {k: v for k, v in asdict(record).items() if k != "blob"}
        mine = S3ImageRecord(**fields, blob=blob)
        key = self.record_key(record.id)
        body = json.dumps(asdict(mine)).encode()
        try:
            for _ in range(CREATE_ATTEMPTS):
                if await self.objects.put(key, body, create=True):
                    self._note(mine, monotonic())
                    return mine
                theirs = await self._load(record.id)
                if theirs is not None and not theirs.expired():
                    # Another replica stored this image first: serve its bytes, drop ours.
                    await self.objects.delete(blob)
                    self._note(theirs, monotonic())
                    return theirs
                if theirs is not None or await self.objects.get_bytes(key) is not None:
                    # Expired (or unreadable): replace it. Its blob stays, so a reader holding
                    # the old record still gets whole bytes; the lifecycle rule removes it.
                    await self.objects.delete(key)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.objects.delete(blob)
            raise
        with contextlib.suppress(Exception):
            await self.objects.delete(blob)
        raise BackendUnavailable(
            f"Could not store image {record.id}: other writers kept replacing it.",
            backend="store",
            retry_after=1.0,
        )

    # -- health and accounting --------------------------------------------------------------------

    async def writable(self) -> bool:
        return await self.problem() is None

    async def problem(self) -> str | None:
        """None when an image can be stored now, else why not (for /readyz)."""
        if not await self.space.has_room():
            return f"The data directory's temp folder {self.temp_dir} (downloads) is full."
        try:
            await self.objects.put(READY_KEY, b"ok", create=False)
        except (BackendUnavailable, StoreFull) as exc:
            return exc.message
        return None

    def stats(self) -> dict[str, int]:
        # The bucket's size is the object store's to report (its metrics, or a listing);
        # counting it here would mean listing the bucket on every scrape.
        return {}


class S3AnalysisStore:
    """Analysis answers as `analyses/<id>.json` objects.

    A put creates the object if absent. When one exists already it is replaced: an analysis id
    names its inputs, so both answers are valid, and a repeat is only stored again when the
    first one's derived images are gone (see AnalysisService). Each PUT is whole, never partial.
    """

    def __init__(self, objects: S3Objects) -> None:
        self.objects = objects

    async def start(self) -> None:
        """Nothing to prepare: the bucket is checked by /readyz."""

    @staticmethod
    def key(analysis_id: str) -> str:
        """The key of a stored analysis."""
        return f"analyses/{check_id(analysis_id)}.json"

    async def get(self, analysis_id: str) -> dict[str, Any] | None:
        """The stored result, or None."""
        data = await self.objects.get_bytes(self.key(analysis_id))
        if data is None:
            return None
        try:
            result: dict[str, Any] = json.loads(data)
        except ValueError:
            return None
        return result

    async def put(self, analysis_id: str, result: dict[str, Any]) -> None:
        """Store a result (create if absent, else replace), in one whole PUT."""
        body = json.dumps(result).encode()
        key = self.key(analysis_id)
        if not await self.objects.put(key, body, create=True):
            await self.objects.put(key, body, create=False)


def open_s3_stores(
    url: str,
    options: S3Options,
    *,
    temp_dir: Path,
    on_error: ErrorHook | None = None,
) -> tuple[S3ImageStore, S3AnalysisStore]:
    """The image and analysis stores of `s3://bucket/prefix`, sharing one client."""
    location = S3Location.parse(url)
    objects = S3Objects(
        make_client(location, options), location, timeout_s=options.timeout_s, on_error=on_error
    )
    return S3ImageStore(objects, Path(temp_dir)), S3AnalysisStore(objects)
