"""Jobs: the record every backend keeps, its state machine, and the store protocol."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, get_args

JobKind = Literal["timeseries", "analyze", "compare"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]

KINDS: tuple[str, ...] = get_args(JobKind)
STATES: tuple[str, ...] = get_args(JobState)
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


def new_job_id() -> str:
    """A fresh job id: 32 lower-case hex characters."""
    return uuid.uuid4().hex


@dataclass(kw_only=True)
class JobRecord:
    """One job as stored: what to run, where it is, and how it ended.

    `webhook_secret` never leaves the store (see `public`). Once `state` is final the record
    does not change any more (stores refuse the write), except for `webhook`, the delivery note.
    """

    id: str
    kind: str
    params: dict[str, Any]
    state: str = "queued"
    done: int = 0
    total: int = 0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    owner: str | None = None  # who runs it (in-process mode: host:pid)
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook: str | None = None  # None, "sending", "delivered" or "failed"

    @property
    def final(self) -> bool:
        """True once the job succeeded, failed or was cancelled."""
        return self.state in FINAL

    def to_json(self) -> dict[str, Any]:
        """Everything, for the store."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        """The record a store kept (unknown keys ignored)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def public(self) -> dict[str, Any]:
        """What a client sees (GET /api/jobs/{id}, the webhook's body): no params, no secret."""
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "progress": {"done": self.done, "total": self.total},
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "url": f"/api/jobs/{self.id}",
            "events_url": f"/api/jobs/{self.id}/events",
        }
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"


class JobStore(Protocol):
    """Where job records live, shared by every process that can answer for them."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The record, or None when unknown or expired."""
        ...

    async def put(self, record: JobRecord) -> bool:
        """Write `record` unless the stored one is already final; True when written."""
        ...

    async def note_webhook(self, job_id: str, note: str) -> None:
        """Set the record's `webhook` delivery note (allowed on final records too)."""
        ...

    async def claim_webhook(self, job_id: str, lease_s: float) -> bool:
        """True for the one caller that may send the job's webhook now.

        A claim that was not released as delivered (its holder died) lapses after `lease_s`.
        """
        ...

    async def unfinished(self) -> list[JobRecord]:
        """Every record that is not final (for start-up recovery of in-process jobs)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
