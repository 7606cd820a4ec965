"""POST/GET/DELETE /api/jobs and the job's event stream: long work followed over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from satapi.jobs.kinds import KINDS
from satapi.jobs.model import JobKind, JobRecord
from satapi.jobs.service import JobService
from satapi.models import JobAccepted, JobOut
from satapi.routers.streaming import EventStream

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

EVENTS_POLL_S = 0.5


async def get_jobs(request: Request) -> JobService:
    """The job service the lifespan opened."""
    jobs: JobService = request.app.state.jobs
    return jobs


JobsDep = Annotated[JobService, Depends(get_jobs)]
JobId = Annotated[str, Path(max_length=64, description="The id POST /api/jobs returned.")]


class WebhookIn(BaseModel):
    """Where the finished job's JSON is POSTed, and the key its signature is made with."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, examples=["https://hooks.example.com/satapi"])
    secret: str = Field(
        min_length=1,
        max_length=512,
        description="X-Satapi-Signature is sha256=<hex HMAC-SHA256 of the raw body with it>.",
    )


class JobIn(BaseModel):
    """A job: which route's work, that route's body, and an optional webhook."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "timeseries",
                    "params": {
                        "bbox": [10, 45, 12, 46],
                        "start": "2024-01-01",
                        "end": "2024-12-01",
                        "step": "P1M",
                    },
                    "webhook": {"url": "https://hooks.example.com/satapi", "secret": "s3cret"},
                }
            ]
        },
    )

    kind: JobKind = Field(
        description="timeseries (POST /api/timeseries), analyze "
        "(POST /api/vision/analyze_satellite) or compare (POST /api/comparison/analyze)."
    )
    params: dict[str, Any] = Field(description="The body the matching route takes.")
    webhook: WebhookIn | None = None


@router.post(
    "",
    status_code=202,
    summary="Submit a job",
    response_model=None,
    responses={202: {"model": JobAccepted, "description": "Accepted; `Location` is its URL."}},
)
async def submit_job(body: JobIn, jobs: JobsDep) -> JSONResponse:
    """Check `params` as the route would (the same 4xx now, not later), then queue the job.

    Follow it with GET `url` or the `events_url` stream; DELETE `url` cancels it.
    """
    kind = KINDS[body.kind]
    if body.webhook is not None:
        jobs.check_webhook(body.webhook.url)
    try:
        parsed = kind.model.model_validate(body.params)
    except ValidationError as exc:
        errors = [
            {**e, "loc": ("body", "params", *e["loc"])} for e in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from None
    hook = None if body.webhook is None else (body.webhook.url, body.webhook.secret)
    record = await jobs.submit(body.kind, parsed, body.params, webhook=hook)
    job = record.public()
    return JSONResponse({"job": job}, status_code=202, headers={"Location": job["url"]})


@router.get(
    "/{job_id}",
    summary="A job's state, progress and result",
    response_model=None,
    responses={200: {"model": JobOut, "description": "The job."}},
)
async def get_job(job_id: JobId, jobs: JobsDep) -> dict[str, Any]:
    """`state` (queued, running, succeeded, failed, cancelled), `progress` {done, total},
    `result` (the route's answer) or `error` (its error envelope), and the timestamps."""
    return (await jobs.get(job_id)).public()


@router.delete(
    "/{job_id}",
    summary="Cancel a job",
    response_model=None,
    responses={200: {"model": JobOut, "description": "The job, cancelled (or as it ended)."}},
)
async def cancel_job(job_id: JobId, jobs: JobsDep) -> dict[str, Any]:
    """Cancel the job: `cancelled` at once, its downloads stop within a second or so. A job
    already finished is returned unchanged."""
    return (await jobs.cancel(job_id)).public()


async def existing_job(job_id: JobId, jobs: JobsDep) -> JobRecord:
    """Dependency: the job, or 404 `job_not_found` before any event is sent."""
    return await jobs.get(job_id)


@router.get(
    "/{job_id}/events",
    summary="A job's progress and outcome over Server-Sent Events",
    response_class=EventSourceResponse,
)
async def job_events(
    record: Annotated[JobRecord, Depends(existing_job)], jobs: JobsDep
) -> AsyncIterable[ServerSentEvent]:
    """`progress` events (`{"state", "done", "total"}`) as the job moves, then `result` (the
    route's answer) or `error` (the error envelope; code `cancelled` for a cancelled job), and
    the stream ends. A finished job's stream is its last `progress` and its outcome."""
    events = EventStream()
    last: tuple[str, int, int] | None = None
    current: JobRecord | None = record
    while current is not None:
        seen = (current.state, current.done, current.total)
        if seen != last:
            last = seen
            yield events.event(
                "progress", {"state": current.state, "done": current.done, "total": current.total}
            )
        if current.final:
            if current.state == "succeeded":
                yield events.event("result", current.result)
            elif current.state == "cancelled":
                yield events.event(
                    "error", {"code": "cancelled", "error": "The job was cancelled."}
                )
            else:
                yield events.event("error", current.error)
            return
        await asyncio.sleep(EVENTS_POLL_S)
        current = await jobs.store.get(current.id)
