"""Start, wait for and stop benchmark server subprocesses; logs go to bench/out/logs/.

Public API
----------
``REPO_ROOT``, ``OUT_DIR`` (``bench/out``, git-ignored), ``LOG_DIR`` (``bench/out/logs``).

``free_port(host="127.0.0.1") -> int``
    A currently free TCP port (bound then released; fine for loopback benchmarks).

``ServerProcess(name, cmd, ready_url, env=None, cwd=REPO_ROOT, ready_timeout=30.0)``
    ``start()`` launches ``cmd`` in its own session (so its whole process group can be
    signalled), stdout+stderr appended to ``LOG_DIR/<name>.log``, then polls ``ready_url`` every
    50 ms until it answers any HTTP status; raises ``ServerStartError`` (with the log tail) if
    the process exits or the deadline passes. ``stop(grace=10.0)`` sends SIGTERM to the group,
    waits ``grace`` seconds, then SIGKILLs the group; returns the exit code. ``pid`` is the root
    PID (give it to ``driver.run_load(rss_pid=...)``), ``log_path`` the log file, ``log_tail()``
    its last lines. Usable as ``with ServerProcess(...) as proc:`` and ``async with`` (start and
    stop then run in a worker thread); ``start()`` is idempotent, so ``with start_server(...)``
    works too.

``start_server(name, cmd, ready_url, **kw) -> ServerProcess``: construct and ``start()``.
``url_answers(url, timeout=1.0) -> bool``: any HTTP answer (proxies bypassed).
``ServerStartError``: raised by ``start()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "bench" / "out"
LOG_DIR = OUT_DIR / "logs"


class ServerStartError(RuntimeError):
    """The server process exited or did not answer its ready URL in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def url_answers(url: str, timeout: float = 1.0) -> bool:
    """True if ``url`` answers with any HTTP status (no proxy is used)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


class ServerProcess:
    """A server subprocess with a log file, a readiness check and a graceful stop."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        ready_url: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str = REPO_ROOT,
        ready_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.ready_url = ready_url
        self.env = {**os.environ, **(env or {})}
        self.cwd = Path(cwd)
        self.ready_timeout = ready_timeout
        self.log_path = LOG_DIR / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, "not started"
        return self.popen.pid

    def start(self) -> ServerProcess:
        """Launch and wait until ready; a no-op when already started."""
        if self.popen is not None:
            return self
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"\n=== {time.strftime('%H:%M:%S')} $ {' '.join(self.cmd)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.cmd,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(grace=2.0)
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.popen is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}"
                )
            if url_answers(self.ready_url, timeout=0.5):
                return
            time.sleep(0.05)
        raise ServerStartError(
            f"{self.name} did not answer {self.ready_url} in {self.ready_timeout}s:\n"
            f"{self.log_tail()}"
        )

    def _signal_group(self, sig: signal.Signals) -> None:
        """Signal our child's process group; only while the child is unreaped (pid still ours)."""
        assert self.popen is not None
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)  # own session: pgid == our child's pid

    def _exited(self) -> bool:
        """True once the child has exited; leaves it unreaped so its pid stays ours."""
        assert self.popen is not None
        if self.popen.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.popen.poll() is not None
        return info is not None

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; the exit code."""
        if self.popen is None:
            return None
        self._signal_group(signal.SIGTERM)
        if not self._wait_exit(grace):
            self._signal_group(signal.SIGKILL)
            self._wait_exit(5.0)
        self._signal_group(signal.SIGKILL)  # stragglers left in the group, if any
        self.popen.wait(5.0)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.popen.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ServerProcess:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


def start_server(
    name: str,
    cmd: Sequence[str],
    ready_url: str,
    **kwargs: object,
) -> ServerProcess:
    """Construct a ``ServerProcess`` and start it (see the class for the keywords)."""
    return ServerProcess(name, cmd, ready_url, **kwargs).start()  # type: ignore[arg-type]
