"""Every example in README.md and docs/*.md runs against a real `satapi serve` and MapServer.

The convention the pages follow (every docs/*.md is picked up, so a new page follows it too):

* A fenced block in `sh` (or `shell`, `bash`, `console`) is an example. Each command in it (a
  line, continued by a trailing backslash or by a quote still open) is one of
  - `curl ...` to `localhost:8000` (or `127.0.0.1:8000`): run by the real curl against the test
    server. A comment `# → STATUS [CODE] [PATH=VALUE ...]` after the command (at the end of its
    last line, or on the next line) says what it answers: the HTTP status, the error envelope's
    `code`, and fields of the JSON body by dotted path (`points.0.code=time_not_available`).
    Without one the answer must be a 2xx whose JSON `success` (when present) is true, or an
    event stream whose last event is `result`; `-o FILE` must leave a non-empty file.
  - `satapi ...`: the command line, run with `SATAPI_URL` pointing at the test server; it must
    exit 0, or as a `# → exit N` comment says. A trailing `> FILE` is honoured.
  Any other command (one that starts a server, Docker, AWS) needs the block marked skipped.
* A `python` block runs as a script, `http://127.0.0.1:8000` pointing at the test server, and
  must exit 0.
* A `toml` block must be accepted by satapi's settings as the `SATAPI_CONFIG` file.
* Blocks in any other language (`json`, `text`, `yaml`, `promql`, ...) show output or reference
  material and are not run.
* `<!-- example: skip: REASON -->` on the line before a fence skips that block; the reason is
  required.

The test server is what the README's offline route starts: the suite's MapServer (the
`mapserver_wms` fixture, the scene `python3 dev.py mapserver` serves) and `satapi serve`
configured by the same settings that command writes to `satapi.local.toml`
(`providers_toml`), with no Anthropic key, so the local analyzer answers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from satapi.config import Settings
from tests.support.fault_upstream import SatapiProcess
from tests.support.mapserver import MapServerWMS, providers_toml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHELL = {"sh", "shell", "bash", "console"}
RUN = SHELL | {"python", "toml"}
SKIP = re.compile(r"^<!--\s*example:\s*skip\b:?\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```\s*([\w+-]*)")
DOC_HOSTS = ("localhost:8000", "127.0.0.1:8000")
STATUS_MARK = "@@satapi-docs-status="


@dataclass
class Block:
    """One fenced block of a page."""

    page: Path
    line: int  # of the opening fence
    lang: str
    text: str
    skip: str | None = None  # the reason, when marked skipped

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass
class Command:
    """One command of a shell example and what it is expected to answer."""

    argv: list[str]
    line: int
    expect: list[str] = field(default_factory=list)  # the words after "→"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, with their skip markers."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP.match(before)
        found.append(
            Block(
                page,
                start + 1,
                match.group(1).lower(),
                "\n".join(body) + "\n",
                marker.group(1) if marker else None,
            )
        )
        i += 1
    return found


def _split(text: str) -> tuple[list[str], list[str]]:
    """Shell words of a command and the words of its trailing comment (`#` outside quotes)."""
    lexer = shlex.shlex(text.replace("\\\n", " "), posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    words = list(lexer)
    if "#" in words:
        cut = words.index("#")
        return words[:cut], words[cut + 1 :]
    return words, []


def commands(block: Block) -> list[Command]:
    """The commands of a shell block, each with its `# → ...` expectation."""
    found: list[Command] = []
    pending = ""
    start = 0
    for offset, line in enumerate(block.text.splitlines()):
        number = block.line + 1 + offset
        if not pending:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                words = stripped[1:].split()
                if words[:1] == ["→"] and found:
                    found[-1].expect = words[1:]
                continue
            start = number
        pending += line + "\n"
        if line.endswith("\\"):
            continue
        try:
            words, comment = _split(pending)
        except ValueError:  # a quote still open: the command goes on
            continue
        pending = ""
        found.append(Command(words, start, comment[1:] if comment[:1] == ["→"] else []))
    assert not pending, f"{block.name}: a command is not finished: {pending!r}"
    return found


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]
RUNNABLE = [b for b in ALL_BLOCKS if b.lang in RUN and b.skip is None]


# --------------------------------------------------------------------------- #
# The server the examples talk to
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def docs_server(
    mapserver_wms: MapServerWMS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SatapiProcess]:
    """`satapi serve` with the settings `python3 dev.py mapserver` writes, on a free port."""
    settings = tomllib.loads(providers_toml(mapserver_wms))
    server = SatapiProcess(tmp_path_factory.mktemp("docs-satapi"), settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _env(server: SatapiProcess) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SATAPI_", "ANTHROPIC_", "AWS_"))
    }
    env["SATAPI_URL"] = server.url
    return env


def _point_at(server: SatapiProcess, text: str) -> str:
    for host in DOC_HOSTS:
        text = text.replace(host, f"127.0.0.1:{server.port}")
    return text


def _field(body: Any, path: str) -> Any:
    value = body
    for part in path.split("."):
        if isinstance(value, list):
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value[part]
        else:
            raise KeyError(path)
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _redirect(argv: list[str], cwd: Path) -> tuple[list[str], Path | None]:
    if len(argv) >= 3 and argv[-2] == ">":
        return argv[:-2], cwd / argv[-1]
    return argv, None


def _check_expectations(name: str, status: int, body: str, expect: list[str]) -> None:
    words = list(expect)
    wanted_status = int(words.pop(0)) if words and words[0].isdigit() else None
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if wanted_status is None:
        assert 200 <= status < 300, f"{name}: status {status}: {body[:500]}"
    else:
        assert status == wanted_status, f"{name}: {status}, not {wanted_status}: {body[:500]}"
    if isinstance(data, dict) and wanted_status is None and "success" in data:
        assert data["success"] is True, f"{name}: {body[:500]}"
    if data is None and "event:" in body:
        events = re.findall(r"^event: (\S+)", body, re.MULTILINE)
        assert events and events[-1] == "result", f"{name}: stream events {events}: {body[-500:]}"
    for word in words:
        assert isinstance(data, dict), f"{name}: not a JSON object: {body[:500]}"
        if "=" in word:
            path, _, value = word.partition("=")
            try:
                actual = _field(data, path)
            except (KeyError, IndexError, ValueError):
                pytest.fail(f"{name}: no field {path} in {body[:1000]}")
            assert _as_text(actual) == value, f"{name}: {path} is {actual!r}, not {value}"
        else:
            assert data.get("code") == word, f"{name}: code {data.get('code')!r}, not {word}"


def _run_curl(cmd: Command, name: str, server: SatapiProcess, cwd: Path) -> None:
    argv, out_file = _redirect([_point_at(server, a) for a in cmd.argv], cwd)
    assert any(f"127.0.0.1:{server.port}" in a for a in argv), f"{name}: not a request to :8000"
    proc = subprocess.run(
        [*argv, "--write-out", f"\n{STATUS_MARK}%{{http_code}}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"{name}: curl exited {proc.returncode}: {proc.stderr}"
    body, _, status = proc.stdout.rpartition(f"\n{STATUS_MARK}")
    if "-o" in argv:
        written = cwd / argv[argv.index("-o") + 1]
        assert written.is_file() and written.stat().st_size > 0, f"{name}: nothing in {written}"
        body = ""
    if out_file is not None:
        out_file.write_text(body)
    _check_expectations(name, int(status), body, cmd.expect)


def _python(args: list[str], server: SatapiProcess, cwd: Path) -> subprocess.CompletedProcess[str]:
    """This interpreter with `args`, in `cwd`, its clients pointed at the test server."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=_env(server),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _run_cli(cmd: Command, name: str, server: SatapiProcess, cwd: Path) -> None:
    argv, out_file = _redirect(cmd.argv, cwd)
    proc = _python(["-m", "satapi", *argv[1:]], server, cwd)
    if out_file is not None:
        out_file.write_text(proc.stdout)
    wanted = int(cmd.expect[1]) if cmd.expect[:1] == ["exit"] else 0
    assert proc.returncode == wanted, (
        f"{name}: exit {proc.returncode}, not {wanted}\n{proc.stdout}\n{proc.stderr}"
    )


# --------------------------------------------------------------------------- #
# The tests
# --------------------------------------------------------------------------- #


def test_every_page_is_read() -> None:
    assert {p.name for p in PAGES} >= {"README.md", "api.md", "clients.md", "configuration.md"}
    assert len(RUNNABLE) > 10


def test_skipped_blocks_say_why() -> None:
    skipped = [b for b in ALL_BLOCKS if b.skip is not None]
    assert skipped, "the set-up commands are marked skipped"
    assert all(b.skip for b in skipped), [b.name for b in skipped if not b.skip]


def test_the_convention_is_parsed(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- example: skip: starts a server -->\n```sh\npython3 dev.py serve\n```\n\n"
        "```sh\ncurl -s localhost:8000/api/images -H 'content-type: application/json' -d '{\n"
        '  "bbox": [12, 45, 10, 46]}\'   # → 422 invalid_bbox\n'
        "curl -s localhost:8000/healthz \\\n  -H 'x: y'\n# → 200 status=ok\n"
        "satapi image --bbox 10 45 12 46 > out.txt  # a comment\n```\n"
    )
    first, second = blocks(page)
    assert first.skip == "starts a server" and second.skip is None
    found = commands(second)
    assert [c.argv[0] for c in found] == ["curl", "curl", "satapi"]
    assert found[0].expect == ["422", "invalid_bbox"] and found[0].argv[-1].endswith("46]}")
    assert found[1].expect == ["200", "status=ok"] and found[1].argv[-2:] == ["-H", "x: y"]
    assert found[2].expect == [] and found[2].argv[-2:] == [">", "out.txt"]


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.name)
def test_example_runs(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if block.lang == "toml":
        config = tmp_path / "satapi.toml"
        config.write_text(block.text)
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
        for key in list(os.environ):
            if key.startswith(("SATAPI_", "ANTHROPIC_")):
                monkeypatch.delenv(key)
        monkeypatch.setenv("SATAPI_CONFIG", str(config))
        Settings()
        return

    server: SatapiProcess = request.getfixturevalue("docs_server")
    if block.lang == "python":
        script = tmp_path / "example.py"
        script.write_text(block.text.replace("http://127.0.0.1:8000", server.url))
        proc = _python([str(script)], server, tmp_path)
        assert proc.returncode == 0, f"{block.name}: exit {proc.returncode}\n{proc.stderr}"
        return

    found = commands(block)
    assert found, f"{block.name}: no command"
    for cmd in found:
        name = f"{block.page.relative_to(ROOT)}:{cmd.line}"
        if cmd.argv[0] == "curl":
            _run_curl(cmd, name, server, tmp_path)
        elif cmd.argv[0] == "satapi":
            _run_cli(cmd, name, server, tmp_path)
        else:
            pytest.fail(
                f"{name}: `{cmd.argv[0]}` is neither curl nor satapi: mark the block "
                "<!-- example: skip: REASON --> or make it an example"
            )
