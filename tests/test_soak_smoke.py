"""`python -m bench --soak --smoke` end to end, shortened to 15 s (behaviour, not figures).

The soak itself (20 min or 100,000 requests, `python -m bench --soak`) is a benchmark, not a
test; this only proves the harness works: it drives every kind of request of the mix, samples
the server, and reports every check as passed with a memory chart.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason="bench extras not installed (matplotlib): pip install -e '.[bench]'",
)


def test_a_short_soak_passes_every_check(tmp_path: Path) -> None:
    argv = ["-m", "bench", "--soak", "--smoke", "--soak-seconds", "15", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "soak" / "soak.json").read_text())
    names = {c["name"] for c in result["checks"]}
    assert {"RSS growth after warm-up", "temp files left", "undocumented statuses"} <= names
    assert all(c["passed"] for c in result["checks"]), result["checks"]
    kinds = result["tally"]["by_kind"]
    assert set(kinds) == {"hit", "download", "stream", "stream_cut", "compare", "fault"}
    assert any(k.startswith("fault 50") for k in result["tally"]["statuses"])
    assert len(result["samples"]) >= 10
    assert (tmp_path / "soak" / "memory.png").stat().st_size > 10_000
    assert "| RSS growth after warm-up |" in (tmp_path / "soak" / "RESULTS.md").read_text()
