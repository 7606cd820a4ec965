"""What the API does with jobs (submit, read, cancel), and `open_jobs`, which composes the
store, the queue or in-process runner, and the webhook sender from the settings."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel

from satapi.app_state import Resources
from satapi.config import Settings
from satapi.errors import JobNotFound
from satapi.jobs.kinds import KINDS, Kind
from satapi.jobs.model import JobRecord, JobStore, new_job_id
from satapi.jobs.queue import InProcessJobs, JobQueue, RedisJobQueue
from satapi.jobs.runner import JobRunner, this_process
from satapi.jobs.stores import open_job_store
from satapi.jobs.webhook import WebhookPolicy, WebhookSender, make_webhook_client
from satapi.observability.events import JobFinished, JobQueueSampled, JobSubmitted, Observer

log = logging.getLogger("satapi.jobs")

_JOB_ID = re.compile(r"[0-9a-f]{32}")
QUEUE_SAMPLE_S = 5.0


class JobService:
    """Submit, read and cancel jobs; the routes' one dependency for jobs."""

    def __init__(
        self,
        resources: Resources,
        store: JobStore,
        queue: JobQueue,
        *,
        policy: WebhookPolicy,
        webhooks: WebhookSender,
        kinds: Mapping[str, Kind],
        observer: Observer,
    ) -> None:
        self.store = store
        self.queue = queue
        self._r = resources
        self._policy = policy
        self._webhooks = webhooks
        self._kinds = kinds
        self._observer = observer
        self._background: set[asyncio.Task[None]] = set()

    def check_webhook(self, url: str) -> None:
        """Raise `WebhookNotAllowed` (422) unless `url` may receive webhooks."""
        self._policy.check(url)

    async def submit(
        self,
        kind: str,
        body: BaseModel,
        params: dict[str, Any],
        *,
        webhook: tuple[str, str] | None = None,
    ) -> JobRecord:
        """Check the job as its route would (same errors), store it and queue it."""
        if webhook is not None:
            self._policy.check(webhook[0])
        total = await self._kinds[kind].check(body, self._r)
        record = JobRecord(id=new_job_id(), kind=kind, params=params, total=total)
        if webhook is not None:
            record.webhook_url, record.webhook_secret = webhook
        if isinstance(self.queue, InProcessJobs):
            record.owner = this_process()
        await self.store.put(record)
        await self.queue.submit(record)
        self._observer.observe(JobSubmitted(kind=kind))
        log.info("job %s: %s accepted", record.id, kind)
        return record

    async def get(self, job_id: str) -> JobRecord:
        """The job's record; `JobNotFound` when unknown or expired."""
        record = await self.store.get(job_id) if _JOB_ID.fullmatch(job_id) else None
        if record is None:
            raise JobNotFound(f"No job has the id {job_id!r} (or it expired).")
        return record

    async def cancel(self, job_id: str) -> JobRecord:
        """Mark the job cancelled (a running job's work stops within `job_poll_s`); a final
        job is left as it is."""
        record = await self.get(job_id)
        if record.final:
            return record
        was = record.state
        record.state, record.finished_at = "cancelled", time.time()
        if not await self.store.put(record):
            return await self.get(job_id)
        self._observer.observe(JobFinished(kind=record.kind, state="cancelled"))
        log.info("job %s: cancelled (was %s)", job_id, was)
        if was == "queued":
            # No run will see it (or only later): its webhook goes now.
            task = asyncio.create_task(self._webhooks.deliver(record))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return record

    async def sample_queue(self, every_s: float = QUEUE_SAMPLE_S) -> None:
        """Report the queue's length every `every_s` (for metrics), until cancelled."""
        while True:
            length = await self.queue.length()
            if length is not None:
                self._observer.observe(JobQueueSampled(length=length))
            await asyncio.sleep(every_s)

    async def close(self) -> None:
        """Wait for webhooks being sent."""
        if self._background:
            await asyncio.wait(self._background, timeout=10)


@asynccontextmanager
async def open_jobs(
    settings: Settings, resources: Resources, observer: Observer
) -> AsyncIterator[JobService]:
    """The job service for `satapi serve`: jobs run in this process or go to the workers
    (`Settings.runs_jobs_in_process`)."""
    store = open_job_store(settings)
    policy = WebhookPolicy(settings.webhook_allowed_hosts)
    http = make_webhook_client(policy, timeout_s=settings.webhook_timeout_s)
    webhooks = WebhookSender(
        store, http, attempts=settings.webhook_attempts, timeout_s=settings.webhook_timeout_s
    )
    queue: JobQueue
    if settings.runs_jobs_in_process:
        runner = JobRunner(
            resources, store, webhooks, KINDS, poll_s=settings.job_poll_s, observer=observer
        )
        in_process = InProcessJobs(runner, store, owner=this_process())
        await in_process.recover()
        queue = in_process
    else:
        assert settings.redis_url is not None
        queue = RedisJobQueue(
            settings.redis_url.get_secret_value(),
            heartbeat_s=settings.job_heartbeat_s,
            attempts=settings.job_attempts,
        )
    service = JobService(
        resources,
        store,
        queue,
        policy=policy,
        webhooks=webhooks,
        kinds=KINDS,
        observer=observer,
    )
    sampler = asyncio.create_task(service.sample_queue())
    try:
        yield service
    finally:
        sampler.cancel()
        await asyncio.wait({sampler})
        await queue.close()
        await service.close()
        await http.aclose()
        await store.close()
