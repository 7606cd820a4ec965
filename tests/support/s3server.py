"""A real S3-compatible server for tests: `moto_server` on a free port of 127.0.0.1.

moto accepts any credentials unless started with INITIAL_NO_AUTH_ACTION_COUNT=0, which makes
it refuse every key it does not know (`refuse_credentials=True`): a real "credentials refused".
It honours `If-None-Match: *` (412) on PUT. Buckets are made with a plain HTTP PUT.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from tests.support.fault_upstream import free_port


class MotoServer:
    """One moto_server process; only it is ever signalled, by its pid."""

    def __init__(self, *, refuse_credentials: bool = False) -> None:
        self.port = free_port()
        self.refuse_credentials = refuse_credentials
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The endpoint, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Spawn it and wait until it answers."""
        exe = Path(sys.executable).with_name("moto_server")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if self.refuse_credentials:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return self
            except urllib.error.HTTPError:
                return self  # it answers
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not start in 30 s")

    def stop(self) -> None:
        """Terminate it (kill if it lingers)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name by default) and return its name."""
        name = name or f"t-{uuid.uuid4().hex[:20]}"
        req = urllib.request.Request(f"{self.url}/{name}", method="PUT")
        with urllib.request.urlopen(req, timeout=10):
            pass
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every key in `bucket` (ListObjectsV2, first 1000)."""
        import xml.etree.ElementTree as ET

        with urllib.request.urlopen(f"{self.url}/{bucket}?list-type=2", timeout=10) as r:
            root = ET.fromstring(r.read())
        return sorted(el.text or "" for el in root.iter() if el.tag.endswith("}Key"))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def aws_env(server: MotoServer) -> dict[str, str]:
    """The standard AWS variables that point a client at `server`."""
    return {
        "AWS_ENDPOINT_URL": server.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoServer]:
    """A moto S3 server for the whole session (tests use buckets of their own)."""
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3_refusing() -> Iterator[MotoServer]:
    """A moto S3 server that refuses every credential."""
    with MotoServer(refuse_credentials=True) as server:
        yield server
