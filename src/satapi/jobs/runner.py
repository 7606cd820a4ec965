"""Running one job: the state machine from queued to a final state, progress, cancel, webhook.

The same `JobRunner.run` serves both ways of running jobs: a `satapi worker` taking jobs from
the Redis queue, and `satapi serve` running them as asyncio tasks (`InProcessJobs`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

from pydantic import ValidationError

from satapi.app_state import Resources
from satapi.errors import BackendUnavailable, SatapiError
from satapi.jobs.kinds import Kind
from satapi.jobs.model import JobRecord, JobStore
from satapi.jobs.webhook import WebhookSender
from satapi.observability.events import DownloadSettled, Event, JobFinished, Observer
from satapi.web.middleware import request_id_var

log = logging.getLogger("satapi.jobs")

# The running job's progress callback: every image its work settles (downloaded, shared or
# from the store) counts one step. Child tasks (asyncio.gather) inherit it.
_progress: ContextVar[Callable[[], None] | None] = ContextVar("satapi_job_progress", default=None)


class ProgressObserver:
    """Counts the settled images of the job whose work emitted them (see `_progress`)."""

    def observe(self, event: Event) -> None:
        """Count one step for a `DownloadSettled`."""
        if isinstance(event, DownloadSettled):
            step = _progress.get()
            if step is not None:
                step()


def this_process() -> str:
    """`host:pid`, the owner name of in-process jobs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def error_envelope(error: SatapiError, job_id: str) -> dict[str, Any]:
    """The JSON error envelope the route would have answered, for a failed job."""
    body: dict[str, Any] = {
        "success": False,
        "error": error.message,
        "code": error.code,
        "request_id": job_id,
    }
    body.update({k: v for k, v in error.extra.items() if k not in body})
    return body


class JobRunner:
    """Runs jobs by id against the shared resources, keeping their record up to date."""

    def __init__(
        self,
        resources: Resources,
        store: JobStore,
        webhooks: WebhookSender,
        kinds: Mapping[str, Kind],
        *,
        poll_s: float,
        observer: Observer,
        owner: str | None = None,
    ) -> None:
        self._r = resources
        self._store = store
        self._webhooks = webhooks
        self._kinds = kinds
        self._poll_s = poll_s
        self._observer = observer
        self._owner = owner or this_process()

    async def run(
        self, job_id: str, heartbeat: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Run the job (again, after a dead worker: images already stored are not downloaded
        again), unless it is already final; then send its webhook once.

        `heartbeat` is awaited every `poll_s` while it runs (the queue's liveness signal).
        Cancelled from outside (shutdown), the record stays `running` for the next run.
        """
        request_id_var.set(job_id)  # every log line of the job's work names it
        record = await self._store.get(job_id)
        if record is None:
            log.warning("job %s: no record (expired?), nothing to run", job_id)
            return
        if not record.final:
            record = await self._execute(record, heartbeat)
        await self._webhooks.deliver(record)

    async def _execute(
        self, record: JobRecord, heartbeat: Callable[[], Awaitable[None]] | None
    ) -> JobRecord:
        kind = self._kinds[record.kind]
        record.state = "running"
        record.started_at = record.started_at or time.time()
        record.attempts += 1
        record.owner = self._owner
        record.done = 0
        if not await self._store.put(record):
            return await self._reread(record)
        log.info("job %s: %s started (attempt %d)", record.id, record.kind, record.attempts)

        def step() -> None:
            record.done = min(record.total, record.done + 1)

        token = _progress.set(step)
        try:
            work = asyncio.create_task(self._work(kind, record.params))
        finally:
            _progress.reset(token)
        try:
            cancelled = await self._watch(record, work, heartbeat)
        except asyncio.CancelledError:
            work.cancel()
            await asyncio.wait({work})
            raise
        if cancelled:
            log.info("job %s: cancelled, its work stopped", record.id)
            return await self._reread(record)
        error = work.exception()
        if error is None:
            record.state, record.result, record.done = "succeeded", work.result(), record.total
        elif isinstance(error, SatapiError):
            record.state, record.error = "failed", error_envelope(error, record.id)
        else:
            log.error("job %s failed unexpectedly", record.id, exc_info=error)
            internal = SatapiError("The job failed because of an internal error.")
            record.state, record.error = "failed", error_envelope(internal, record.id)
        record.finished_at = time.time()
        if not await self._store.put(record):
            return await self._reread(record)
        duration = record.finished_at - (record.started_at or record.finished_at)
        self._observer.observe(
            JobFinished(kind=record.kind, state=record.state, duration_s=duration)
        )
        log.info("job %s: %s in %.2f s", record.id, record.state, duration)
        return record

    async def _work(self, kind: Kind, params: dict[str, Any]) -> dict[str, Any]:
        try:
            body = kind.model.model_validate(params)
        except ValidationError as exc:  # validated at submit: only a changed model gets here
            raise SatapiError(f"The job's params are no longer valid: {exc}") from None
        return await kind.run(body, self._r)

    async def _watch(
        self,
        record: JobRecord,
        work: asyncio.Task[dict[str, Any]],
        heartbeat: Callable[[], Awaitable[None]] | None,
    ) -> bool:
        """Wait for the work, saving progress, beating the heart and obeying a cancel every
        `poll_s`; True when it was cancelled."""
        saved = record.done
        while True:
            done, _ = await asyncio.wait({work}, timeout=self._poll_s)
            if done:
                return False
            try:
                if heartbeat is not None:
                    await _beat(heartbeat)
                stored = await self._store.get(record.id)
                still_open = stored is not None and not stored.final
                if still_open and record.done != saved:
                    snapshot = record.done
                    still_open = await self._store.put(record)
                    saved = snapshot
            except SatapiError as exc:  # the store is down for a moment: keep working
                log.warning("job %s: could not save progress: %s", record.id, exc)
                continue
            if not still_open:
                work.cancel()
                await asyncio.wait({work})
                return True

    async def _reread(self, record: JobRecord) -> JobRecord:
        return await self._store.get(record.id) or record


async def _beat(heartbeat: Callable[[], Awaitable[None]]) -> None:
    """The queue's heartbeat; a Redis blip is reported as `BackendUnavailable`, not raised
    through the job (missing a beat or two costs nothing within `job_heartbeat_s`)."""
    try:
        await heartbeat()
    except Exception as exc:
        message = f"The queue's heartbeat failed: {type(exc).__name__}."
        raise BackendUnavailable(message, backend="redis") from exc
