"""Real `satapi worker` processes and a tiny webhook receiver on 127.0.0.1, for job tests."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from tests.support.fault_upstream import SatapiProcess
from tests.support.redis_server import RedisServer


class WorkerProcess(SatapiProcess):
    """`python -m satapi worker`, configured like a `SatapiProcess` (same TOML, same env)."""

    def start(self, ready_timeout: float = 30.0) -> Self:
        """Spawn the worker and wait until it logs that it is ready."""
        self._spawn([sys.executable, "-m", "satapi", "worker", *self.args])
        assert self.proc is not None
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if "satapi worker ready" in self.log():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"worker not ready in {ready_timeout} s:\n{self.log()}")


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every POST (headers and raw body).

    The first `fail_first` requests are answered 500, the rest 204.
    """

    def __init__(self, *, fail_first: int = 0) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        self.attempts = 0
        self._lock = lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    receiver.attempts += 1
                    failing = receiver.attempts <= receiver.fail_first
                    if not failing:
                        receiver.calls.append((dict(self.headers.items()), body))
                self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def reset(self, *, fail_first: int = 0) -> None:
        """Forget what was received; the next `fail_first` requests are answered 500."""
        with self._lock:
            self.calls.clear()
            self.attempts = 0
            self.fail_first = fail_first

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/hook``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    @property
    def origin(self) -> str:
        """The `webhook_allowed_hosts` entry for it."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies received (after the failures)."""
        return [json.loads(body) for _, body in self.calls]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def job_record(redis: RedisServer, job_id: str) -> dict[str, Any] | None:
    """The job's stored record, read straight from Redis (owner, attempts)."""
    raw = redis.command("GET", "{satapi}:job:" + job_id)
    if not raw.startswith(b"$") or raw.startswith(b"$-1"):
        return None
    payload = raw.split(b"\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    data: dict[str, Any] = json.loads(payload)
    return data


def comparable(answer: Any) -> Any:
    """A route's answer without what differs between two runs: timings and `cached` flags."""
    if isinstance(answer, dict):
        return {k: comparable(v) for k, v in answer.items() if k not in ("timings", "cached")}
    if isinstance(answer, list):
        return [comparable(v) for v in answer]
    return answer
