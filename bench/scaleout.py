"""Scenario 7: scenario 1 across processes -- `satapi serve --workers 2` sharing one Redis (the
fleet-wide limiter and single flight) next to one process with the in-process limiter.

Same load as scenario 1 at its highest concurrency up to the cap (C = 200 in the full profile):
distinct tiny images from the slow upstream. Reports throughput, the upstream's maximum of
requests in flight (the cap must hold across both workers), and the CPU one download costs:
satapi's process tree, plus redis-server's own CPU for the Redis system.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.driver import tree_cpu_seconds
from bench.procs import free_port

if TYPE_CHECKING:
    from bench.scenarios import Env

SYSTEMS = ("satapi", "satapi-2w-redis")


class RedisProcess:
    """A throw-away redis-server on 127.0.0.1 (nothing kept on disk)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="satapi-bench-redis-"))
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> RedisProcess:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.dir)]
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.stop()


def scenario7(env: Env) -> dict[str, Any]:
    """Scenario 1 at C = min(max C, cap): --workers 2 with Redis vs one process (local limiter)."""
    from bench.scenarios import _post, load, target

    p = env.profile
    up = env.fleet.upstream(p.s1_latency)
    c = max(x for x in p.s1_concurrency if x <= p.cap)
    n = p.s1_total(c)
    ideal = min(c, p.cap) / p.s1_latency
    points: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    with redis_server() as redis:
        env.fleet.redis_url = redis.url
        for system in env.want(SYSTEMS):
            bodies = _post("/api/images", [env.image_body(p.s1_size) for _ in range(n)])
            limit = p.satapi_limit(n, c, p.s1_latency)
            env.log(f"  S7 {system} C={c} N={n} (limit {limit:g}s)")
            redis_cpu0 = tree_cpu_seconds(redis.pid)
            with env.fleet.server(system, up) as proc:
                point = load(
                    env,
                    proc,
                    system,
                    bodies,
                    concurrency=c,
                    time_limit=limit,
                    label=f"S7 C={c}",
                    upstream=up,
                )
            redis_cpu = tree_cpu_seconds(redis.pid) - redis_cpu0 if "redis" in system else 0.0
            point["redis_cpu_s"] = round(redis_cpu, 3) if "redis" in system else None
            satapi_cpu = point.get("server_cpu_s")
            point["cpu_ms_per_download"] = (
                round(1000 * (satapi_cpu + redis_cpu) / point["ok"], 2)
                if satapi_cpu is not None and point["ok"]
                else None
            )
            point["ideal_rps"] = ideal
            shown = "-" if point["redis_cpu_s"] is None else f"{point['redis_cpu_s']}s"
            env.log(
                f"    CPU per download {point['cpu_ms_per_download']} ms "
                f"(satapi {satapi_cpu}s, redis {shown})"
            )
            points.append(point)
            max_in_flight = (point["upstream"] or {}).get("max_in_flight")
            targets.append(
                target(
                    f"7 {system} C={c}: upstream requests in flight",
                    f"max {max_in_flight}",
                    f"≤ cap {p.cap}",
                    max_in_flight is not None and max_in_flight <= p.cap,
                )
            )
            if system == "satapi-2w-redis":
                goal = 180.0 if p.name == "full" else 0.9 * ideal
                targets.append(
                    target(
                        f"7 {system} C={c}: throughput",
                        f"{point['rps']} req/s",
                        f"≥ {goal:g} req/s",
                        point["rps"] >= goal and point["ok"] == n,
                    )
                )
        env.fleet.discard("satapi-2w-redis", up)  # it needs this Redis; stop it with it
        env.fleet.redis_url = None
    by = {pt["system"]: pt for pt in points}
    one, fleet = by.get("satapi"), by.get("satapi-2w-redis")
    if one and fleet and one.get("cpu_ms_per_download") and fleet.get("cpu_ms_per_download"):
        fleet["x_cpu_vs_local"] = round(
            fleet["cpu_ms_per_download"] / one["cpu_ms_per_download"], 2
        )
    return {
        "id": 7,
        "title": "POST /api/images across processes: --workers 2 + Redis vs one process",
        "params": {
            "latency_s": p.s1_latency,
            "size": p.s1_size,
            "concurrency": c,
            "total": n,
            "cap": p.cap,
        },
        "points": points,
        "targets": targets,
    }
