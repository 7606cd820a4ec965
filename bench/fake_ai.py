"""The fake Anthropic Messages API as its own process, for scenario 6 (download + Claude).

    python -m bench.fake_ai --port 9100 --latency 3.0 [--chunks 10]

Serves `tests.support.fake_anthropic.FakeAnthropic` (the test suite's fake: the real API's SSE
event sequence, which the `anthropic` SDK parses) under uvicorn with httptools on uvloop, so
the fake itself costs little CPU at C = 200. Every answer is `--chunks` text deltas spread
over `--latency` seconds (streamed), or the whole message after `--latency` seconds (not
streamed, for the baseline's `messages.create`). Also:

``GET /healthz``   ``{"ok": true}`` (readiness)
``GET /_stats``    ``{"served", "in_flight", "max_in_flight"}`` since the last reset
``POST /_reset``   zero the counters (``max_in_flight`` drops to the calls running now)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.fake_anthropic import Reply

MODEL = "claude-bench-fake"


def reply_for(latency: float, chunks: int) -> Reply:
    """`chunks` deltas, `latency` seconds from the first to the last (a plausible description)."""
    # Imported here: only the fake's own process needs it (run from the repository root, as
    # every bench process is, so `tests` is importable).
    from tests.support.fake_anthropic import Reply

    words = [f"Sentence {i + 1} of a description of fields and a river. " for i in range(chunks)]
    return Reply(text=words, delay=latency / max(1, chunks - 1), model=MODEL, input_tokens=900)


class BenchFakeAI:
    """ASGI app: the fake Messages API plus /healthz, /_stats and /_reset."""

    def __init__(self, latency: float, chunks: int) -> None:
        from tests.support.fake_anthropic import FakeAnthropic

        self.fake = FakeAnthropic()
        self.fake.script(reply_for(latency, chunks))
        self.served = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            await _json(send, {"ok": True})
        elif path == "/_stats":
            await _json(send, self.stats())
        elif path == "/_reset" and scope["method"] == "POST":
            with self.fake._lock:
                self.fake.requests = []  # the fake keeps every request: do not grow forever
                self.fake.max_in_flight = self.fake.in_flight
            self.served = 0
            await _json(send, self.stats())
        else:
            self.served += 1
            await self.fake(scope, receive, send)
            with self.fake._lock:
                self.fake.requests.clear()

    def stats(self) -> dict[str, int]:
        return {
            "served": self.served,
            "in_flight": self.fake.in_flight,
            "max_in_flight": self.fake.max_in_flight,
        }


async def _json(send: Any, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def command(port: int, latency: float, chunks: int = 10) -> list[str]:
    """The command line that serves the fake on 127.0.0.1:`port`."""
    return [
        sys.executable,
        "-m",
        "bench.fake_ai",
        "--port",
        str(port),
        "--latency",
        str(latency),
        "--chunks",
        str(chunks),
    ]


def fetch_stats(base_url: str, timeout: float = 5.0) -> dict[str, int]:
    """GET {base_url}/_stats of a running fake."""
    with urllib.request.urlopen(f"{base_url}/_stats", timeout=timeout) as resp:
        return dict(json.load(resp))


def reset_stats(base_url: str, timeout: float = 5.0, drain_s: float = 30.0) -> dict[str, int]:
    """POST {base_url}/_reset of a running fake, once the calls of an earlier load are done.

    A load cut off by its time limit leaves calls the fake is still answering; counted in the
    next load's ``max_in_flight`` they would look like a broken cap. Waits up to ``drain_s``.
    """
    deadline = time.monotonic() + drain_s
    while fetch_stats(base_url, timeout)["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.1)
    req = urllib.request.Request(f"{base_url}/_reset", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return dict(json.load(resp))


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.fake_ai", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=3.0)
    parser.add_argument("--chunks", type=int, default=10)
    args = parser.parse_args(argv)
    app = BenchFakeAI(args.latency, args.chunks)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        http="httptools",
        loop="uvloop",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
