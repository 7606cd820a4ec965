"""``python -m bench``: the benchmark issue's scenarios, satapi vs the Flask baseline, one run.

Usage::

    python -m bench                  # full run (~10 min on 2 cores): bench/RESULTS.md + chart
    python -m bench --smoke          # every scenario, tiny N and 50 ms latency, < 30 s
    python -m bench --only 1,4       # some scenarios (written to bench/out/, not RESULTS.md)
    python -m bench --only 2 --py-spy  # plus py-spy profiles of satapi in bench/out/
    python -m bench --report-from bench/out/results.json  # re-render RESULTS.md only
    python -m bench --data-dir /var/tmp/b  # the servers' data there (default: a roomy tmpfs)
    python -m bench --soak           # soak: 20 min or 100,000 requests -> bench/soak/RESULTS.md
    python -m bench --soak --smoke   # the same for 60 s or 3,000 requests -> bench/out/soak/

Scenarios (``bench/scenarios.py``): 0 HTTP client micro-benchmark (httpx 0.28, httpx2,
aiohttp); 1 ``POST /api/images`` at C = 10..1000; 2 local vision analysis; 3 comparison
download; 4 single flight and cache hits; 5 peak RSS under 100 concurrent 4096² downloads;
6 download + Claude against a fake Messages API (``bench/fake_ai.py``, 3 s streamed answer).

A full run of every scenario writes ``bench/RESULTS.md``, ``bench/throughput.png`` and
``bench/results.json`` (the numbers behind them); other
runs write ``RESULTS.md`` and ``throughput.png`` to the output directory (``bench/out/`` by
default, git-ignored). Every run also writes ``results.json`` there (all numbers, per-load
details included) and server logs to ``bench/out/logs/``. Exit status: 0 when every scenario
completed (targets may still FAIL: they are goals, not gates), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import report, scenarios
from bench.driver import tree_cpu_seconds
from bench.procs import OUT_DIR, REPO_ROOT
from bench.scaleout import scenario7
from bench.scenarios import FULL, SMOKE, SYSTEMS, Env, Fleet

SCENARIOS = {**scenarios.SCENARIOS, 7: scenario7}


def _log(text: str) -> None:
    print(text, flush=True)


class CpuAccount:
    """How much CPU other people's processes used while a scenario ran.

    Machine-wide busy time (/proc/stat) minus ours: this process, its reaped children (servers
    that were stopped) and the servers still running. Reported per scenario, because every load
    here shares the machine's cores.
    """

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        busy, total = _cpu_times()
        own = sum(
            r.ru_utime + r.ru_stime
            for r in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        )
        own += sum(tree_cpu_seconds(p.pid) for p in self.fleet.alive())
        hz = os.sysconf("SC_CLK_TCK")
        return busy / hz, total / hz, own

    def others(self) -> dict[str, float]:
        busy0, total0, own0 = self.start
        busy1, total1, own1 = self._sample()
        other = max(0.0, (busy1 - busy0) - (own1 - own0))
        return {
            "other_cpu_s": round(other, 1),
            "other_share": round(other / max(1e-9, total1 - total0), 3),
            "own_cpu_s": round(own1 - own0, 1),
        }


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat (iowait counts as idle)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def busy_share(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (other people's work, before we start)."""
    b0, t0 = _cpu_times()
    time.sleep(seconds)
    b1, t1 = _cpu_times()
    return (b1 - b0) / max(1, t1 - t0)


def wait_quiet(limit_s: float, threshold: float = 0.25) -> tuple[float, float]:
    """Wait (at most ``limit_s``) until the CPUs are at most ``threshold`` busy.

    Returns (the last busy share measured, seconds spent).
    """
    started = time.monotonic()
    share = busy_share(1.0)
    while share > threshold and time.monotonic() - started < limit_s:
        _log(f"bench: machine {share:.0%} busy with other work; waiting for it to quieten")
        time.sleep(4.0)
        share = busy_share(1.0)
    return share, time.monotonic() - started


def _parse_only(value: str) -> list[int]:
    ids = sorted({int(v) for v in value.split(",") if v.strip()})
    unknown = [i for i in ids if i not in SCENARIOS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny N, short latency, < 30 s")
    parser.add_argument("--only", type=_parse_only, default=None, help="e.g. 1,4")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    parser.add_argument("--py-spy", action="store_true", help="py-spy profiles of satapi loads")
    parser.add_argument(
        "--report-from",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="only re-render RESULTS.md and the chart from an earlier run's results.json",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wait in all up to this long, before the run and between scenarios, for the CPUs "
        "to be ≤ 25%% busy with other work (default: 120 for a full run, 0 for smoke)",
    )
    parser.add_argument(
        "--systems",
        type=lambda v: tuple(x.strip() for x in v.split(",") if x.strip()),
        default=SYSTEMS,
        help=f"comma-separated subset of {','.join(SYSTEMS)}",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the servers' data directories go (default: /dev/shm when it is a tmpfs "
        "with room (scenarios.TMPFS_FREE_MIN), else the temp directory; see data_root)",
    )
    parser.add_argument(
        "--soak",
        action="store_true",
        help="run the soak instead (bench/soak.py): 20 min or 100,000 requests; with --smoke "
        "60 s or 3,000",
    )
    parser.add_argument(
        "--soak-seconds", type=float, default=None, help="the soak's time budget instead"
    )
    args = parser.parse_args(argv)

    if args.soak:
        from bench import soak

        return soak.run(smoke=args.smoke, out_dir=args.out, seconds=args.soak_seconds)
    if args.report_from is not None:
        return rerender(args.report_from)
    profile = SMOKE if args.smoke else FULL
    ids = args.only if args.only is not None else list(SCENARIOS)
    official = (
        profile is FULL and ids == list(SCENARIOS) and not args.py_spy and args.systems == SYSTEMS
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    md_path = REPO_ROOT / "bench" / "RESULTS.md" if official else out / "RESULTS.md"
    chart_path = md_path.with_name("throughput.png")

    wait_budget = args.wait_quiet if args.wait_quiet is not None else (0 if args.smoke else 120)
    busy_before = None
    if wait_budget > 0:
        busy_before, spent = wait_quiet(min(60.0, wait_budget))
        wait_budget -= spent
    machine = report.machine_info()
    machine["busy_before"] = round(busy_before, 3) if busy_before is not None else None
    _log(
        f"bench: profile {profile.name}, scenarios {ids}, {machine['cores']} cores, "
        f"load average {machine['loadavg']}"
    )
    started = time.monotonic()
    fleet = Fleet(profile, _log, data_dir=args.data_dir)
    machine["data_fs"] = fleet.data_fs
    machine["file_create_us"] = fleet.file_create_us()
    env = Env(
        profile=profile,
        fleet=fleet,
        log=_log,
        out_dir=out,
        py_spy=args.py_spy,
        systems=args.systems,
    )
    results: list[dict[str, Any]] = []
    try:
        for sid in ids:
            if wait_budget > 0 and sid != ids[0]:
                _, spent = wait_quiet(min(30.0, wait_budget))
                wait_budget -= spent
            t = time.monotonic()
            account = CpuAccount(fleet)
            create_us = fleet.file_create_us()
            _log(f"scenario {sid}: {SCENARIOS[sid].__doc__} (a file create: {create_us} µs CPU)")
            try:
                result = SCENARIOS[sid](env)
            except Exception as exc:  # a broken scenario is reported; the others still run
                result = {"id": sid, "error": repr(exc), "traceback": traceback.format_exc()}
                _log(result["traceback"])
            result["elapsed_s"] = round(time.monotonic() - t, 1)
            result["file_create_us"] = create_us
            result["cpu"] = account.others()
            _log(f"  CPU during scenario {sid}: {result['cpu']}")
            results.append(result)
            for tgt in result.get("targets", []):
                mark = "PASS" if tgt["passed"] else "FAIL"
                _log(f"  {mark} {tgt['name']}: {tgt['value']} (goal {tgt['goal']})")
            _log(f"scenario {sid} done in {result['elapsed_s']} s")
        machine["file_create_us_after"] = fleet.file_create_us()
    finally:
        fleet.close()

    run: dict[str, Any] = {
        "profile": profile.name,
        "official": official,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine,
        "loadavg_after": report.machine_info()["loadavg"],
        "scenarios": results,
    }
    with open(out / "results.json", "w") as fh:
        json.dump({**run, "loads": env.loads}, fh, indent=1, default=str)
    if official:  # the numbers behind the committed RESULTS.md (no per-load details)
        with open(md_path.with_name("results.json"), "w") as fh:
            json.dump(run, fh, indent=1, default=str)
    report.write(run, md_path, chart_path)
    failed = [t for sc in results for t in sc.get("targets", []) if not t["passed"]]
    broken = [sc["id"] for sc in results if sc.get("error")]
    _log(
        f"bench: done in {run['elapsed_s']} s; {len(failed)} target(s) FAIL; "
        f"scenarios that did not complete: {broken or 'none'}"
    )
    _log(f"bench: {md_path}, {out / 'results.json'}")
    return 1 if broken else 0


def rerender(results_json: Path) -> int:
    """RESULTS.md and the chart again from a saved run (e.g. after editing findings.md)."""
    run = json.loads(results_json.read_text())
    run.pop("loads", None)
    if run.get("official"):
        md_path = REPO_ROOT / "bench" / "RESULTS.md"
    else:
        md_path = results_json.with_name("RESULTS.md")
    report.write(run, md_path, md_path.with_name("throughput.png"))
    _log(f"bench: re-rendered {md_path} from {results_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
