#!/usr/bin/env python3
"""Bootstrap and run satapi: `python3 dev.py serve [satapi serve options]` or `python3 dev.py test`.

Creates `.venv` beside this file on first use, installs the package (with its test tools) into it,
re-installs when pyproject.toml changes, then runs the command inside it. Needs only Python 3.11+.
`python3 dev.py mapserver` starts a local MapServer WMS with a synthetic scene (Debian packages in
.ci/apt-packages.txt) and writes the satapi settings that use it to `satapi.local.toml`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SATAPI_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def _ensure_env(extras: str) -> None:
    if not PY.exists():
        print(f"dev.py: creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    stamp = VENV / f".satapi-installed-{extras or 'base'}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"dev.py: installing satapi[{extras}] into {VENV}", flush=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    target = f".[{extras}]" if extras else "."
    subprocess.run([PY, "-m", "pip", "install", "-q", "-e", target], cwd=ROOT, check=True)
    stamp.write_text(digest)


def _run(cmd: list[str | Path], env: dict[str, str] | None = None) -> int:
    print("dev.py: $ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def test(args: list[str]) -> int:
    """Lint, format check, type check, then the whole pytest suite (benchmark smoke run too)."""
    _ensure_env("test,bench")
    for step in (
        [BIN / "ruff", "check", "."],
        [BIN / "ruff", "format", "--check", "."],
        [BIN / "mypy"],
    ):
        if code := _run(step):
            return code
    # Two pytest workers per core (pytest-xdist): much of the suite is servers and subprocesses
    # waiting, and two per core keep both cores busy. tests/conftest.py keeps the tests that
    # share a module's server on one worker and starts the long ones first. Tests that time
    # something leave room for a loaded machine (a lease at least twice what they wait).
    # `-n 0`: one process.
    workers = 2 * (os.cpu_count() or 1)
    # Test processes cache their bytecode: with PYTHONDONTWRITEBYTECODE set, every pytest worker
    # and every server a test starts compiles (and rewrites) its modules again, ~5 s a worker.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # On a fresh clone the workers would all compile the same sources at once: once, here
    # (~0.2 s on two cores; pytest rewrites the test modules themselves).
    if code := _run([BIN / "python", "-m", "compileall", "-q", "-j", "0", "src", "bench", "tests"]):
        return code
    return _run([BIN / "pytest", "-n", str(workers), *args], env=env)


def serve(args: list[str]) -> int:
    """Run the service (`satapi serve`), passing the options through."""
    _ensure_env("")
    os.execv(BIN / "satapi", [str(BIN / "satapi"), "serve", *args])
    return 0  # not reached


def bench(args: list[str]) -> int:
    """Run the benchmark (`python -m bench`)."""
    _ensure_env("test,bench")
    return _run([PY, "-m", "bench", *args])


def mapserver(args: list[str]) -> int:
    """Run the local MapServer WMS (`scripts/mapserver_dev.py`) until Ctrl-C."""
    _ensure_env("")
    script = ROOT / "scripts" / "mapserver_dev.py"
    os.execv(PY, [str(PY), str(script), *args])
    return 0  # not reached


COMMANDS = {"serve": serve, "test": test, "bench": bench, "mapserver": mapserver}

if __name__ == "__main__":
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before any environment exists
        sys.exit(f"satapi needs Python 3.11 or newer, not {sys.version.split()[0]}")
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python3 {Path(__file__).name} {{{'|'.join(COMMANDS)}}} [args...]")
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
