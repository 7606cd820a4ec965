"""A real `redis-server` on 127.0.0.1 for tests, and the `redis_server` pytest fixture.

Without the `redis-server` binary (Debian package, see `.ci/apt-packages.txt`) the fixture skips,
unless `SATAPI_REQUIRE_REDIS=1`, which turns the skip into a failure. The server keeps nothing on
disk (`--save '' --appendonly no`), so `stop()` then `start()` is a Redis that lost everything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_ENV_VAR = "SATAPI_REQUIRE_REDIS"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on a fixed free port; stop and start it again at will."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0`."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it accepts connections."""
        binary = shutil.which("redis-server")
        assert binary is not None
        argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no"]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL) and wait; only this process is signalled."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def command(self, *args: str) -> bytes:
        """Run one command with redis-cli semantics over a raw socket (inline protocol)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall((" ".join(args) + "\r\n").encode())
            return sock.recv(65536)


def redis_available() -> str | None:
    """None when redis-server can be run, else why not."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian package redis-server)"
    return None


def require_redis() -> None:
    """Skip (or fail, with SATAPI_REQUIRE_REDIS=1) when redis-server is missing."""
    missing = redis_available()
    if missing is None:
        return
    if os.environ.get(REQUIRE_ENV_VAR) == "1":
        pytest.fail(f"{missing} ({REQUIRE_ENV_VAR}=1)", pytrace=False)
    pytest.skip(missing)


@contextlib.contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    """A started, empty redis-server (skipped or failed as `require_redis` says), stopped after."""
    require_redis()
    server = RedisServer(workdir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test, stopped afterwards."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server
