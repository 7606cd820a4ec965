"""Jobs with real Redis, a real `satapi serve` and real `satapi worker` processes: progress,
results equal to the route's, events, cancel (downloads counted upstream), a worker killed
with SIGKILL mid-job and another finishing it, and the signed webhook sent once."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fault_upstream import FaultUpstream, SatapiProcess
from tests.support.job_processes import WebhookReceiver, WorkerProcess, comparable, job_record
from tests.support.redis_server import RedisServer, running_redis

SECRET = "whsec-test"
BASE: dict[str, Any] = {"bbox": [10.0, 45.0, 14.0, 47.0], "width": 64, "height": 32}


def dates(n: int) -> list[str]:
    """`n` distinct dates."""
    return [f"2024-{m:02d}-01" for m in range(1, n + 1)]


class Fleet:
    """Redis, a slow WMS, a webhook receiver, `satapi serve` (no in-process jobs) and workers."""

    def __init__(
        self, tmp: Path, redis: RedisServer, upstream: FaultUpstream, hook: WebhookReceiver
    ) -> None:
        self.redis, self.upstream, self.hook = redis, upstream, hook
        self.settings: dict[str, Any] = {
            "data_dir": str(tmp / "data"),
            "redis_url": redis.url,
            "redis_lease_s": 2.0,
            "default_provider": "fault",
            "providers": {
                # One download at a time, fleet-wide: a job's dates go one after another.
                "fault": {"url": upstream.wms_url, "default_layer": "ok", "max_concurrency": 1}
            },
            "jobs_in_process": False,
            "job_heartbeat_s": 3,
            "job_sweep_s": 1,
            "job_poll_s": 0.2,
            "webhook_allowed_hosts": [hook.origin],
            "retry_attempts": 1,
        }
        self.tmp = tmp
        self.api = SatapiProcess(self._dir("api"), self.settings)
        self.workers: list[WorkerProcess] = []
        self._started = 0

    def _dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        return path

    def add_worker(self) -> WorkerProcess:
        """Start one more worker (in a directory of its own: its log is its readiness)."""
        worker = WorkerProcess(self._dir(f"worker{self._started}"), self.settings)
        self._started += 1
        self.workers.append(worker.start())
        return worker

    def ready_for_a_test(self) -> Fleet:
        """Two live workers (a killed or stopped one replaced), the upstream's counters and the
        webhook receiver's record empty, the receiver's first attempt answered 500."""
        self.workers = [w for w in self.workers if w.alive()]
        while len(self.workers) < 2:
            self.add_worker()
        self.upstream.reset()
        self.hook.reset(fail_first=1)
        return self

    def stop(self) -> None:
        for proc in [*self.workers, self.api]:
            if proc.alive():
                proc.stop()


@pytest.fixture(scope="module")
def shared_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One fleet for the module (starting one is three satapi processes); each test uses its
    own layer (its own latency), so no test finds another's images stored."""
    with (
        running_redis(tmp_path_factory.mktemp("redis")) as redis,
        FaultUpstream() as upstream,
        WebhookReceiver() as hook,
    ):
        fleet = Fleet(tmp_path_factory.mktemp("fleet"), redis, upstream, hook)
        try:
            fleet.api.start()
            yield fleet
        finally:
            fleet.stop()


@pytest.fixture
def fleet(shared_fleet: Fleet) -> Fleet:
    return shared_fleet.ready_for_a_test()


def post_job(fleet: Fleet, params: dict[str, Any]) -> dict[str, Any]:
    body = {
        "kind": "timeseries",
        "params": params,
        "webhook": {"url": fleet.hook.url, "secret": SECRET},
    }
    response = httpx.post(f"{fleet.api.url}/api/jobs", json=body, timeout=30)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == response.json()["job"]["url"]
    job: dict[str, Any] = response.json()["job"]
    return job


def get_job(fleet: Fleet, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{fleet.api.url}/api/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait(predicate: Any, timeout: float, what: str) -> float:
    """Poll until `predicate()` is truthy; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not {what} within {timeout} s")


def verify(headers: dict[str, str], body: bytes) -> bool:
    """Check X-Satapi-Signature as a receiver would."""
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Satapi-Signature"], expected)


def events(fleet: Fleet, job_id: str) -> list[tuple[str, Any]]:
    """The job's SSE stream, read to its end."""
    out = []
    with httpx.stream("GET", f"{fleet.api.url}/api/jobs/{job_id}/events", timeout=60) as r:
        assert r.status_code == 200
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


def test_worker_runs_a_job_with_progress_events_result_and_one_signed_webhook(
    fleet: Fleet,
) -> None:
    params = {**BASE, "layer": "ok:0.4", "times": dates(5)}
    job = post_job(fleet, params)
    assert job["state"] == "queued" and job["progress"] == {"done": 0, "total": 5}
    stream = events(fleet, job["id"])
    progress = [data for name, data in stream if name == "progress"]
    assert any(p["state"] == "running" and 0 < p["done"] < 5 for p in progress), progress
    assert stream[-1][0] == "result"
    final = get_job(fleet, job["id"])
    assert final["state"] == "succeeded" and final["progress"] == {"done": 5, "total": 5}
    assert final["result"] == stream[-1][1]
    sync = httpx.post(f"{fleet.api.url}/api/timeseries", json=params, timeout=60)
    assert sync.status_code == 200
    assert comparable(final["result"]) == comparable(sync.json())
    assert fleet.upstream.requests("ok") == 5  # the route found every date stored
    # The webhook: the first attempt got 500, the retry was delivered; once, signed.
    wait(lambda: fleet.hook.calls, 15, "webhook delivered")
    time.sleep(1.0)
    assert len(fleet.hook.calls) == 1 and fleet.hook.attempts == 2
    headers, body = fleet.hook.calls[0]
    assert verify(headers, body)
    sent = json.loads(body)
    assert sent["id"] == job["id"] and sent["state"] == "succeeded"
    assert sent["result"] == final["result"]


def test_cancel_stops_a_workers_downloads(fleet: Fleet) -> None:
    job = post_job(fleet, {**BASE, "layer": "ok:1.0", "times": dates(8)})
    wait(lambda: fleet.upstream.requests("ok") >= 1, 20, "downloading")
    cancelled = httpx.delete(f"{fleet.api.url}/api/jobs/{job['id']}", timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    asked = fleet.upstream.requests("ok")
    time.sleep(3.0)
    assert fleet.upstream.requests("ok") <= asked + 1  # at most one was already on its way
    assert fleet.upstream.in_flight("ok") == 0
    final = get_job(fleet, job["id"])
    assert final["state"] == "cancelled" and "result" not in final
    wait(lambda: fleet.hook.calls, 15, "webhook delivered")
    assert fleet.hook.bodies()[0]["state"] == "cancelled"
    assert events(fleet, job["id"])[-1][1]["code"] == "cancelled"


def test_a_worker_killed_mid_job_is_replaced_and_the_webhook_fires_once(fleet: Fleet) -> None:
    n = 8
    job = post_job(fleet, {**BASE, "layer": "ok:0.8", "times": dates(n)})
    wait(lambda: get_job(fleet, job["id"])["progress"]["done"] >= 3, 30, "3 dates done")
    record = job_record(fleet.redis, job["id"])
    assert record is not None and record["state"] == "running"
    pid = int(record["owner"].rsplit(":", 1)[1])
    victim = next(w for w in fleet.workers if w.proc is not None and w.proc.pid == pid)
    done_before = get_job(fleet, job["id"])["progress"]["done"]
    victim.kill()  # SIGKILL
    killed_at = time.monotonic()

    def taken_over() -> bool:
        again = job_record(fleet.redis, job["id"])
        return again is not None and again["attempts"] >= 2

    took = wait(taken_over, 30, "taken over by the other worker")
    print(f"taken over after {took:.1f} s")
    # heartbeat (3 s) + sweep (1 s) + saq's 5 s wait for an abort, with room for a slow CI.
    assert took < 20, took
    survivor = next(w for w in fleet.workers if w is not victim)
    again = job_record(fleet.redis, job["id"])
    assert again is not None and again["owner"].endswith(f":{survivor.proc.pid}")  # type: ignore[union-attr]
    wait(lambda: get_job(fleet, job["id"])["state"] != "running", 60, "finished")
    final = get_job(fleet, job["id"])
    assert final["state"] == "succeeded", final
    assert len(final["result"]["points"]) == n
    assert not final["result"]["partial"]
    # Dates stored before the kill were not downloaded again; at most the one in flight was.
    per_date = Counter(seen.query.get("TIME") for seen in fleet.upstream.seen("ok"))
    assert sum(per_date.values()) <= n + 1, per_date
    assert sum(1 for c in per_date.values() if c > 1) <= 1, per_date
    assert done_before >= 3
    wait(lambda: fleet.hook.calls, 20, "webhook delivered")
    time.sleep(2.0)
    assert len(fleet.hook.calls) == 1
    headers, body = fleet.hook.calls[0]
    assert verify(headers, body) and json.loads(body)["state"] == "succeeded"
    assert time.monotonic() - killed_at < 60


def test_refused_webhooks_and_unknown_ids(fleet: Fleet) -> None:
    for url in ("http://127.0.0.1:1/hook", "https://example.com/hook", "ftp://x/y"):
        body = {"kind": "timeseries", "params": {**BASE, "times": dates(1)}}
        body["webhook"] = {"url": url, "secret": SECRET}
        response = httpx.post(f"{fleet.api.url}/api/jobs", json=body, timeout=10)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "webhook_not_allowed"
    for method in ("GET", "DELETE"):
        response = httpx.request(method, f"{fleet.api.url}/api/jobs/{'0' * 32}", timeout=10)
        assert response.status_code == 404 and response.json()["code"] == "job_not_found"


def test_a_worker_stopped_with_sigterm_hands_its_job_to_another(fleet: Fleet) -> None:
    job = post_job(fleet, {**BASE, "layer": "ok:0.5", "times": dates(6)})
    wait(lambda: get_job(fleet, job["id"])["progress"]["done"] >= 2, 30, "2 dates done")
    record = job_record(fleet.redis, job["id"])
    assert record is not None
    pid = int(record["owner"].rsplit(":", 1)[1])
    victim = next(w for w in fleet.workers if w.proc is not None and w.proc.pid == pid)
    assert victim.stop() == 0  # SIGTERM: a clean exit
    took = wait(lambda: (job_record(fleet.redis, job["id"]) or {}).get("attempts", 0) >= 2, 15, "")
    assert took < 5, took  # back in the queue at once, no sweep needed
    wait(lambda: get_job(fleet, job["id"])["state"] != "running", 60, "finished")
    assert get_job(fleet, job["id"])["state"] == "succeeded"
    wait(lambda: fleet.hook.calls, 15, "webhook delivered")
    time.sleep(1.0)
    assert len(fleet.hook.calls) == 1
