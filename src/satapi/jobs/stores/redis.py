"""Job records in Redis: every API replica and worker sharing the Redis sees the same jobs."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from satapi.errors import BackendUnavailable
from satapi.jobs.model import JobRecord

PREFIX = "{satapi}:job:"

# Writes the record unless the stored one is final: a cancel is never undone by a late
# progress write, and a finished job is never run again by a second attempt.
_PUT_UNLESS_FINAL = """
local current = redis.call('GET', KEYS[1])
if current then
  local state = cjson.decode(current)['state']
  if state == 'succeeded' or state == 'failed' or state == 'cancelled' then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisJobStore:
    """`JobStore` on Redis: one JSON value per job, its webhook note beside it, both with a TTL."""

    def __init__(self, url: str, *, ttl_s: float, op_timeout_s: float = 5.0) -> None:
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=op_timeout_s, socket_connect_timeout=op_timeout_s
        )
        self._ttl_ms = int(ttl_s * 1000)
        self._put = self._redis.register_script(_PUT_UNLESS_FINAL)

    async def get(self, job_id: str) -> JobRecord | None:
        """The record, or None when unknown or expired."""
        try:
            raw, note = await self._redis.mget(PREFIX + job_id, PREFIX + job_id + ":webhook")
        except RedisError as exc:
            raise _unavailable(exc) from None
        if raw is None:
            return None
        data: dict[str, Any] = json.loads(raw)
        record = JobRecord.from_json(data)
        record.webhook = note.decode() if isinstance(note, bytes) else note
        return record

    async def put(self, record: JobRecord) -> bool:
        """Write `record` unless the stored one is final."""
        body = json.dumps(record.to_json(), separators=(",", ":"))
        try:
            written = await self._put(keys=[PREFIX + record.id], args=[body, self._ttl_ms])
        except RedisError as exc:
            raise _unavailable(exc) from None
        return bool(written)

    async def note_webhook(self, job_id: str, note: str) -> None:
        """Set the webhook delivery note."""
        try:
            await self._redis.set(PREFIX + job_id + ":webhook", note, px=self._ttl_ms)
        except RedisError as exc:
            raise _unavailable(exc) from None

    async def claim_webhook(self, job_id: str, lease_s: float) -> bool:
        """True for the one caller that may send the webhook now (`sending` for `lease_s`)."""
        try:
            claimed = await self._redis.set(
                PREFIX + job_id + ":webhook", "sending", nx=True, px=int(lease_s * 1000)
            )
        except RedisError as exc:
            raise _unavailable(exc) from None
        return bool(claimed)

    async def unfinished(self) -> list[JobRecord]:
        """Every record that is not final (in-process jobs with Redis; workers recover each
        other's jobs through the queue instead)."""
        out = []
        try:
            async for key in self._redis.scan_iter(match=PREFIX + "*", count=500):
                name = key.decode() if isinstance(key, bytes) else key
                if name.endswith(":webhook"):
                    continue
                record = await self.get(name.removeprefix(PREFIX))
                if record is not None and not record.final:
                    out.append(record)
        except RedisError as exc:
            raise _unavailable(exc) from None
        return out

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def _unavailable(exc: RedisError) -> BackendUnavailable:
    return BackendUnavailable(
        f"The job store (Redis) is unavailable: {type(exc).__name__}.", backend="redis"
    )
