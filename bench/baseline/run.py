"""How the Flask baseline runs under gunicorn: sync workers = cores, or gthread with 8 threads.

Public API
----------
``KINDS = ("sync", "gthread")``, the two worker models (defaults: 2 workers = cores)::

    sync     gunicorn -w 2 -k sync                bench.baseline.app:app
    gthread  gunicorn -w 2 -k gthread --threads 8 bench.baseline.app:app

``gunicorn_command(kind, port, *, host="127.0.0.1", workers=2, threads=8, timeout=120)``
    The full command (``python -m gunicorn ...``, cwd must be the repository root, or pass it
    ``REPO_ROOT``). ``--timeout 120`` matches the route's ``future.result(timeout=120)`` so that
    gunicorn does not kill a worker that is only waiting for the pool; no access log.
``baseline_env(wms_url, data_dir) -> dict``: ``BASELINE_WMS_URL`` / ``BASELINE_DATA_DIR``.
``start_baseline(kind, wms_url, *, port=None, data_dir=None) -> procs.ServerProcess``
    Starts it and waits for ``/healthz``; its ``pid`` is the gunicorn master (for RSS sampling).

By hand (from the repository root)::

    python -m bench.upstream --port 9001 --latency 1.0 &
    python -m bench.baseline.run sync --port 8001 --wms-url http://127.0.0.1:9001/wms
    python -m bench.baseline.run gthread --port 8002 --wms-url http://127.0.0.1:9001/wms

which exec: ``BASELINE_WMS_URL=... BASELINE_DATA_DIR=bench/out/baseline-data
python -m gunicorn -w 2 -k sync -b 127.0.0.1:8001 --timeout 120 bench.baseline.app:app``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.procs import OUT_DIR, REPO_ROOT, ServerProcess, free_port

APP = "bench.baseline.app:app"
KINDS = ("sync", "gthread")


def gunicorn_command(
    kind: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    workers: int = 2,
    threads: int = 8,
    timeout: int = 120,
) -> list[str]:
    """``python -m gunicorn`` command line for the baseline with worker model ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
    model = ["-k", "gthread", "--threads", str(threads)] if kind == "gthread" else ["-k", "sync"]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        str(workers),
        *model,
        "-b",
        f"{host}:{port}",
        "--timeout",
        str(timeout),
        "--graceful-timeout",
        "5",
        "--chdir",
        str(REPO_ROOT),
        APP,
    ]


def baseline_env(wms_url: str, data_dir: Path | str | None = None) -> dict[str, str]:
    """Environment the baseline app reads."""
    return {
        "BASELINE_WMS_URL": wms_url,
        "BASELINE_DATA_DIR": str(data_dir or OUT_DIR / "baseline-data"),
    }


def start_baseline(
    kind: str,
    wms_url: str,
    *,
    port: int | None = None,
    data_dir: Path | str | None = None,
    workers: int = 2,
    threads: int = 8,
    extra_env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start the baseline under gunicorn and wait until ``/healthz`` answers.

    ``extra_env``: e.g. ``BASELINE_ANTHROPIC_BASE_URL`` / ``_API_KEY`` for the Claude route.
    """
    port = port or free_port()
    cmd = gunicorn_command(kind, port, workers=workers, threads=threads)
    proc = ServerProcess(
        f"baseline-{kind}-{port}",
        cmd,
        f"http://127.0.0.1:{port}/healthz",
        env={**baseline_env(wms_url, data_dir), **(extra_env or {})},
    )
    return proc.start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--wms-url", required=True, help="e.g. http://127.0.0.1:9001/wms")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    cmd = gunicorn_command(args.kind, args.port, workers=args.workers, threads=args.threads)
    os.environ.update(baseline_env(args.wms_url, args.data_dir))
    print("exec", " ".join(cmd), flush=True)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
