"""Job store backends; `open_job_store` picks one from the settings."""

from __future__ import annotations

from satapi.config import Settings
from satapi.jobs.model import JobStore
from satapi.jobs.stores.local import FileJobStore
from satapi.jobs.stores.redis import RedisJobStore


def open_job_store(settings: Settings) -> JobStore:
    """Redis when `redis_url` is set (shared by every replica and worker), else files under
    `data_dir/jobs`."""
    if settings.redis_url is not None:
        return RedisJobStore(settings.redis_url.get_secret_value(), ttl_s=settings.job_ttl_s)
    return FileJobStore(settings.data_dir / "jobs", ttl_s=settings.job_ttl_s)
