"""The two ways jobs run: `satapi worker` processes taking them from a saq queue on Redis, or
asyncio tasks inside `satapi serve` (`InProcessJobs`). Both run `JobRunner.run`."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Protocol

from saq import Queue

from satapi.errors import BackendUnavailable, JobInterrupted
from satapi.jobs.model import JobRecord, JobStore
from satapi.jobs.runner import JobRunner, error_envelope

log = logging.getLogger("satapi.jobs")

QUEUE_NAME = "satapi-jobs"
RUN_JOB = "run_job"


class JobQueue(Protocol):
    """Where an accepted job goes to be run."""

    async def submit(self, record: JobRecord) -> None:
        """Have the job run (its record is already stored)."""
        ...

    async def length(self) -> int | None:
        """Jobs waiting to start, when known."""
        ...

    async def close(self) -> None:
        """Stop taking jobs; release connections."""
        ...


def saq_queue(redis_url: str) -> Queue:
    """The saq queue every API process and worker of one Redis shares."""
    return Queue.from_url(redis_url, name=QUEUE_NAME)


class RedisJobQueue:
    """`JobQueue` on saq: any `satapi worker` sharing the Redis runs the job.

    Each job is a saq job keyed by the job id (enqueued once), without saq's timeout (jobs
    run as long as they need) but with its heartbeat: a job whose worker stopped touching it
    for `heartbeat_s` is swept and run again by another worker, `attempts` runs at most.
    """

    def __init__(self, redis_url: str, *, heartbeat_s: int, attempts: int) -> None:
        self._queue = saq_queue(redis_url)
        self._heartbeat_s = heartbeat_s
        self._attempts = attempts
        self._connected = False

    async def submit(self, record: JobRecord) -> None:
        """Enqueue the job for the workers."""
        if not self._connected:
            await self._queue.connect()
            self._connected = True
        try:
            await self._queue.enqueue(
                RUN_JOB,
                key=record.id,
                job_id=record.id,
                timeout=0,
                heartbeat=self._heartbeat_s,
                retries=self._attempts,
            )
        except Exception as exc:  # redis-py's errors, or saq's own on a broken connection
            raise BackendUnavailable(
                f"The job queue (Redis) is unavailable: {type(exc).__name__}.", backend="redis"
            ) from None

    async def length(self) -> int | None:
        """Jobs queued and not yet taken by a worker."""
        try:
            return await self._queue.count("queued")
        except Exception:  # metrics must not fail for Redis being away
            return None

    async def close(self) -> None:
        """Close the queue's connections."""
        await self._queue.disconnect()


class InProcessJobs:
    """`JobQueue` as asyncio tasks of this process (`satapi serve` without workers).

    A job interrupted by a shutdown or a crash is marked `failed` with code `interrupted`:
    at shutdown for its own tasks, at start-up (`recover`) for records left by a process that
    is gone.
    """

    def __init__(self, runner: JobRunner, store: JobStore, *, owner: str) -> None:
        self._runner = runner
        self._store = store
        self._owner = owner
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def submit(self, record: JobRecord) -> None:
        """Start the job's task now."""
        task = asyncio.create_task(self._runner.run(record.id), name=f"job-{record.id}")
        self._tasks[record.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(record.id, None))

    async def length(self) -> int | None:
        """In-process jobs start at once: nothing waits."""
        return 0

    async def recover(self) -> int:
        """Mark jobs whose process is gone `failed`/`interrupted` (and send their webhooks in
        the background); how many were."""
        count = 0
        for record in await self._store.unfinished():
            if record.owner is not None and _alive(record.owner):
                continue
            if await _interrupt(self._store, record):
                count += 1
                await self.submit(record)  # a run of a final job only sends its webhook
        if count:
            log.warning("%d job(s) interrupted by a restart marked failed", count)
        return count

    async def close(self) -> None:
        """Cancel the running jobs and mark them interrupted."""
        tasks = dict(self._tasks)
        for task in tasks.values():
            task.cancel()
        if tasks:
            await asyncio.wait(tasks.values())
        for job_id in tasks:
            record = await self._store.get(job_id)
            if record is not None and not record.final:
                await _interrupt(self._store, record)


async def _interrupt(store: JobStore, record: JobRecord) -> bool:
    record.state = "failed"
    record.finished_at = time.time()
    record.error = error_envelope(
        JobInterrupted("The job was interrupted by a restart of the service; submit it again."),
        record.id,
    )
    return await store.put(record)


def _alive(owner: str) -> bool:
    """True when `host:pid` is a running process of this host (another host: assume so)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    # Our own pid is a previous life's (a container's pid 1 after a restart).
    return int(pid) != os.getpid()
