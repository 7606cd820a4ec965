"""`python -m bench --smoke` runs every benchmark scenario end to end (behaviour, not timings).

Needs the bench extras (flask, gunicorn, aiohttp; `pip install -e .[bench]`); skipped without them.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_EXTRAS = ("flask", "gunicorn", "aiohttp", "requests", "matplotlib")
MISSING = [name for name in BENCH_EXTRAS if importlib.util.find_spec(name) is None]

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"bench extras not installed ({', '.join(MISSING)}): pip install -e '.[bench]'",
)


@pytest.fixture(scope="module")
def smoke_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench-out")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return done, out


def test_smoke_completes_and_writes_its_outputs(
    smoke_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, out = smoke_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert (out / "results.json").is_file()
    assert (out / "RESULTS.md").is_file()
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A smoke run never touches the committed results.
    assert "--smoke" in (out / "RESULTS.md").read_text()


def test_smoke_has_a_result_for_every_scenario(
    smoke_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _done, out = smoke_run
    run = json.loads((out / "results.json").read_text())
    assert run["profile"] == "smoke"
    scenarios = {sc["id"]: sc for sc in run["scenarios"]}
    assert sorted(scenarios) == [0, 1, 2, 3, 4, 5, 6, 7]
    # What a file create cost on the data directories' filesystem, at the start, per scenario
    # and at the end (the store's writes depend on it).
    assert run["machine"]["data_fs"] != "unknown"
    assert run["machine"]["file_create_us"] > 0 and run["machine"]["file_create_us_after"] > 0
    for sid, sc in scenarios.items():
        assert "error" not in sc, f"scenario {sid}: {sc.get('traceback')}"
        assert sc["file_create_us"] > 0
        assert sc["targets"], f"scenario {sid} evaluated no target"
        for tgt in sc["targets"]:
            assert isinstance(tgt["passed"], bool)

    assert {row["client"] for row in scenarios[0]["clients"]} == {"httpx", "httpx2", "aiohttp"}
    assert all(row["ok"] > 0 for row in scenarios[0]["clients"])

    for sid in (1, 2, 3, 5, 6):
        systems = {pt["system"] for pt in scenarios[sid]["points"]}
        assert "satapi" in systems and {"baseline-sync", "baseline-gthread"} <= systems
        for pt in scenarios[sid]["points"]:
            assert pt["ok"] > 0, f"scenario {sid} {pt['system']}: nothing succeeded"
            assert pt["health_n"] > 0 or pt["health_max_ms"] is not None
            assert pt["peak_rss_mb"] and pt["peak_rss_mb"] > 0
    assert "satapi-2w" in {pt["system"] for pt in scenarios[2]["points"]}
    # Scenario 2 measures satapi against its own CPU limit (cores ÷ CPU per request).
    for pt in scenarios[2]["points"]:
        if pt["system"].startswith("satapi"):
            assert pt["cpu_ms_per_request"] > 0 and pt["cpu_limit_rps"] > 0
    assert any("its own CPU limit" in t["name"] for t in scenarios[2]["targets"])

    # 7: --workers 2 sharing Redis next to one process; the cap holds across the workers.
    fleet = {pt["system"]: pt for pt in scenarios[7]["points"]}
    assert set(fleet) == {"satapi", "satapi-2w-redis"}
    for pt in fleet.values():
        assert pt["ok"] == pt["total"] and pt["cpu_ms_per_download"] > 0
        assert pt["upstream"]["max_in_flight"] <= scenarios[7]["params"]["cap"]
    assert fleet["satapi-2w-redis"]["redis_cpu_s"] is not None

    # Single flight is behaviour, not timing: identical concurrent requests, one download.
    satapi = next(row for row in scenarios[4]["rows"] if row["system"] == "satapi")
    assert satapi["first"]["upstream"]["served"] == 1
    assert satapi["second"]["upstream"]["served"] == 0
    assert satapi["cached_after"] is True
    assert satapi["hits"]["ok"] > 0 and satapi["healthz"]["ok"] > 0

    # Scenario 6: every system made its Claude calls (as the fake API counted them), and
    # satapi's AI cap held in the capped row.
    six = scenarios[6]
    for pt in six["points"]:
        assert pt["ai"]["served"] >= pt["ok"] > 0, pt
    capped = [pt for pt in six["points"] if pt.get("ai_cap") == six["params"]["capped_cap"]]
    assert len(capped) == 1 and capped[0]["ai"]["max_in_flight"] == six["params"]["capped_cap"]
    # The event-loop lag histogram is scraped around every single-process satapi load.
    for sid in (1, 2, 6):
        for pt in scenarios[sid]["points"]:
            if pt["system"] == "satapi":
                assert pt["loop_lag"]["n"] > 0, (sid, pt["loop_lag"])
    assert "event-loop lag" in (out / "RESULTS.md").read_text()


def test_hitcost_measures_both_requests() -> None:
    # The in-process A/B tool behind bench/findings.md's per-request CPU figures.
    done = subprocess.run(
        [sys.executable, "-m", "bench.hitcost", "--rounds", "1", "--n", "20"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("CPU per request") and "/healthz" in line and "cache hit" in line, line


def test_s3clients_measures_both_clients() -> None:
    # The measurement behind the choice of obstore (docs/replicas.md), against moto.
    done = subprocess.run(
        [sys.executable, "-m", "bench.s3clients", "--n", "10", "--rounds", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    assert {row[0] for row in rows} == {"obstore", "aiobotocore"}
    assert all(float(value) > 0 for row in rows for value in row[2:]), done.stdout


def test_analyzercost_measures_both_code_paths() -> None:
    # The in-process micro-benchmark of the local analyzer: both code paths, every
    # step, and the check that they agree on the scene's metrics.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.analyzercost",
            "--sizes",
            "32,96",
            "--rounds",
            "1",
            "--min-time",
            "0.01",
            "--json",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert [(row["size"], row["variant"].split()[0]) for row in rows] == [
        (32, "before"),
        (32, "after"),
        (96, "before"),
        (96, "after"),
    ]
    for row in rows:
        for step in ("verify", "decode", "classify", "metrics", "analyse", "vision"):
            assert row[f"{step}_ms"] > 0


def test_clientab_measures_both_transports() -> None:
    # The WMS transport A/B: satapi's aiohttp transport and the former httpcore2 one.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.clientab",
            "--n",
            "20",
            "--rounds",
            "1",
            "--latency",
            "0.05",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert {row[0] for row in rows} == {"httpx2", "aiohttp"}
    assert all(float(row[1]) > 0 for row in rows), done.stdout


def test_the_data_directories_go_where_asked_else_on_a_roomy_tmpfs(tmp_path: Path) -> None:
    import shutil

    from bench.report import filesystem_of
    from bench.scenarios import TMPFS_FREE_MIN, data_root

    asked = tmp_path / "data"
    assert data_root(asked) == asked and asked.is_dir()
    shm = Path("/dev/shm")
    roomy_tmpfs = (
        shm.is_dir()
        and filesystem_of(shm).startswith("tmpfs ")
        and shutil.disk_usage(shm).free >= TMPFS_FREE_MIN
    )
    assert data_root() == (shm if roomy_tmpfs else None)
    assert filesystem_of(Path("/")).endswith(" on /")
