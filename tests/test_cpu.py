"""The CPU helpers: the bounded worker threads and the malloc arena cap."""

from __future__ import annotations

import ctypes.util
import platform
import subprocess
import sys
import threading

import pytest

from satapi.cpu import CpuRunner, limit_malloc_arenas


async def test_cpu_work_runs_off_the_loop_thread_within_the_limit() -> None:
    runner = CpuRunner(2)
    loop_thread = threading.get_ident()
    assert await runner.run(threading.get_ident) != loop_thread
    assert runner.max_threads == 2


def test_no_arena_cap_asked_for_is_none_applied() -> None:
    assert limit_malloc_arenas(0) is False


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt(M_ARENA_MAX) is glibc's",
)
def test_the_arena_cap_is_applied_on_glibc() -> None:
    # In a fresh process, so this test process keeps glibc's defaults.
    code = "from satapi.cpu import limit_malloc_arenas; print(limit_malloc_arenas(2))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    assert ctypes.util.find_library("c")
