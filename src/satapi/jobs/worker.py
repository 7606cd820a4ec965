"""`satapi worker`: runs jobs from the Redis queue (saq) with the same resources as the API."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server
from saq import Worker
from saq.types import Context, PartialTimersDict

from satapi.app import open_resources
from satapi.config import Settings
from satapi.jobs.kinds import KINDS
from satapi.jobs.queue import RUN_JOB, saq_queue
from satapi.jobs.runner import JobRunner, ProgressObserver
from satapi.jobs.stores import open_job_store
from satapi.jobs.webhook import WebhookPolicy, WebhookSender, make_webhook_client
from satapi.observability.events import Observers
from satapi.observability.logs import LogObserver
from satapi.observability.metrics import Metrics

log = logging.getLogger("satapi.jobs")


async def run_worker(
    settings: Settings, *, concurrency: int | None = None, metrics_port: int | None = None
) -> None:
    """Take jobs from the queue until SIGTERM or SIGINT (saq stops taking new ones; a job
    cut short is run again by another worker). With `metrics_port`, Prometheus metrics
    (jobs, downloads, analyses) are served at http://0.0.0.0:<port>/metrics."""
    assert settings.redis_url is not None
    metrics = Metrics(multiprocess_dir=settings.prometheus_multiproc_dir)
    if metrics_port is not None:
        start_http_server(metrics_port, registry=metrics.registry)
    observer = Observers([metrics, LogObserver(), ProgressObserver()])
    store = open_job_store(settings)
    policy = WebhookPolicy(settings.webhook_allowed_hosts)
    http = make_webhook_client(policy, timeout_s=settings.webhook_timeout_s)
    webhooks = WebhookSender(
        store, http, attempts=settings.webhook_attempts, timeout_s=settings.webhook_timeout_s
    )
    queue = saq_queue(settings.redis_url.get_secret_value())
    try:
        async with open_resources(settings, observer=observer) as resources:
            runner = JobRunner(
                resources, store, webhooks, KINDS, poll_s=settings.job_poll_s, observer=observer
            )

            async def run_job(ctx: Context, *, job_id: str) -> None:
                job = ctx["job"]
                await runner.run(job_id, heartbeat=job.update)

            timers: PartialTimersDict = {
                "sweep": settings.job_sweep_s,
                "abort": 1,
                "schedule": 1,
                "worker_info": 10,
            }

            worker = Worker(
                queue,
                functions=[(RUN_JOB, run_job)],
                concurrency=concurrency or settings.worker_concurrency,
                timers=timers,
            )
            await queue.connect()
            log.info(
                "satapi worker ready: %d jobs at once, heartbeat %d s, sweep every %d s",
                worker.concurrency,
                settings.job_heartbeat_s,
                settings.job_sweep_s,
            )
            await worker.start()
    finally:
        await queue.disconnect()
        await http.aclose()
        await store.close()
