"""The client commands of the `satapi` CLI (`image`, `analyze`, `compare`, `timeseries`) against
a real satapi (uvicorn on 127.0.0.1) over the real MapServer WMS."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from satapi.app import create_app
from satapi.cli import main
from tests.support.mapserver import MapServerWMS
from tests.test_client import mapserver_settings
from tests.test_vision_sse import ThreadedServer

pytestmark = pytest.mark.mapserver

EARLY, LATE = "2024-01-01", "2024-06-01"
AREA = ["--bbox", "10", "45", "12", "46", "--width", "100", "--height", "50"]
KEY = "cli-test-key-0123"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mapserver_wms: MapServerWMS) -> Iterator[str]:
    """satapi (API key required) under uvicorn; yields its URL."""
    settings = mapserver_settings(
        tmp_path_factory.mktemp("cli-served"), mapserver_wms, api_keys=[KEY]
    )
    server = ThreadedServer(create_app(settings), "satapi-cli-test", lifespan="on").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def env(served: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """SATAPI_URL and SATAPI_API_KEY set as a user would."""
    monkeypatch.setenv("SATAPI_URL", served)
    monkeypatch.setenv("SATAPI_API_KEY", KEY)
    return served


def test_image_saves_the_file(env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scene.png"
    assert main(["image", *AREA, "--time", LATE, "-o", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    image_id = line.split()[0]
    assert len(image_id) == 64 and "100x50 image/png" in line and str(out) in line
    with Image.open(out) as image:
        assert image.size == (100, 50)
    assert not list(tmp_path.glob("*.part"))

    assert main(["image", *AREA, "--time", LATE, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["image"]["id"] == image_id and answer["image"]["cached"] is True


def test_analyze_streams_the_text(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", *AREA, "--time", LATE, "--analyzer", "local"]) == 0
    streamed = capsys.readouterr().out
    assert streamed.startswith("Heuristic pixel analysis (not AI)") and streamed.endswith("\n")
    assert main(["analyze", *AREA, "--time", LATE, "--analyzer", "local", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["analysis"]["text"] == streamed.rstrip("\n")
    assert answer["analysis"]["metrics"]["bare_fraction"] > 0.5  # the clearcut


def test_compare_saves_the_change_mask(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "change.png"
    args = ["compare", *AREA, "--before", EARLY, "--after", LATE, "--analyzer", "local"]
    assert main([*args, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "changed class" in captured.out
    assert f"saved the change mask to {out}" in captured.err
    with Image.open(out) as mask:
        assert mask.size == (100, 50) and mask.mode == "P"
    assert main([*args, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["analysis"]["metrics"]["changed_fraction"] > 0.5


def test_timeseries_table_csv_and_file(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    times = f"{EARLY},2024-03-01,{LATE}"
    # Some dates failed: the rows are printed, and the exit status (3) tells scripts.
    assert main(["timeseries", *AREA, "--times", times]) == 3
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["time", "vegetation", "water", "bare", "built", "cloud", "nodata"]
    assert lines[1].split()[:2] == [EARLY, "1.000"]
    assert lines[2].startswith("2024-03-01") and "time_not_available" in lines[2]
    assert lines[-1] == "(some dates failed)"
    assert captured.err == "satapi: partial: 1 date failed (their rows say why)\n"
    assert main(["timeseries", *AREA, "--times", times, "--csv"]) == 3
    assert "time_not_available" in capsys.readouterr().out

    assert main(["timeseries", *AREA, "--times", f"{EARLY},{LATE}", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["time"] for r in rows] == [EARLY, LATE]
    assert float(rows[1]["bare_fraction"]) > 0.5

    out = tmp_path / "series.csv"
    assert main(["timeseries", *AREA, "--times", EARLY, "-o", str(out)]) == 0
    assert out.read_text().startswith("time,status,image_id,")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["image", "--bbox", "12", "45", "10", "46"], "satapi: invalid_bbox: A bbox needs minx"),
        (["image", "--bbox", "1,2,3"], "satapi: invalid_bbox: --bbox needs four numbers"),
        (["image", *AREA, "--provider", "nowhere"], "satapi: unknown_provider: Unknown provider"),
        (["image", *AREA, "--layer", "nope"], "satapi: unknown_layer: The provider"),
        (["analyze", *AREA, "--layer", "nope"], "satapi: unknown_layer: The provider"),
        (["image", *AREA, "--width", "0"], "satapi: validation_error: Invalid width"),
    ],
)
def test_errors_are_one_line_with_the_code(
    env: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_flags_win_over_the_environment(
    served: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SATAPI_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("SATAPI_API_KEY", raising=False)
    assert main(["image", *AREA]) == 1
    assert capsys.readouterr().err.startswith("satapi: connection_error: ")
    assert main(["image", *AREA, "--url", served]) == 1
    assert capsys.readouterr().err.startswith("satapi: unauthorized: An API key is required")
    assert main(["image", *AREA, "--url", served, "--api-key", KEY]) == 0
    capsys.readouterr()
    # Before the command too, as `git -C` or `docker -H` take theirs.
    assert main(["--url", served, "--api-key", KEY, "image", *AREA]) == 0
    assert "image/png" in capsys.readouterr().out
    assert main(["--url", "http://127.0.0.1:9", "image", *AREA, "--url", served]) == 1
    assert capsys.readouterr().err.startswith("satapi: unauthorized: ")  # the later one wins
    assert main(["--url", served, "jobs", "show", "0" * 32, "--api-key", KEY]) == 1
    assert capsys.readouterr().err.startswith("satapi: job_not_found: ")


def test_console_script_help_and_a_real_run(served: str, tmp_path: Path) -> None:
    """The installed `satapi` script, as a user runs it (negative bbox with `=`, env vars)."""
    script = Path(sys.executable).with_name("satapi")
    helped = subprocess.run(
        [script, "analyze", "--help"], capture_output=True, text=True, timeout=30
    )
    assert helped.returncode == 0
    assert "examples:" in helped.stdout and "SATAPI_URL" in helped.stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATAPI_")}
    env.update({"SATAPI_URL": served, "SATAPI_API_KEY": KEY})
    ran = subprocess.run(
        [script, "image", "--bbox=-10,35,12,46", "--width", "30", "--height", "18"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    # Partly inside the scene (lon 10..12, lat 45..46): fetched, the rest is no data.
    assert ran.returncode == 0, ran.stderr
    assert "30x18 image/png" in ran.stdout


# --- clearest date: the `cloudy` layer's dates have clouds of known extent -----------

CLOUDY = [
    "--bbox",
    "10",
    "45",
    "14",
    "47",
    "--width",
    "200",
    "--height",
    "100",
    "--layer",
    "cloudy",
]


def test_image_and_analyze_with_clearest(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", *CLOUDY, "--clearest", "2024-05-01/2024-09-30"]) == 0
    assert ", clearest date 2024-08-02" in capsys.readouterr().out
    args = ["analyze", *CLOUDY, "--clearest", "2024-05-01/2024-06-30", "--analyzer", "local"]
    assert main([*args, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["selection"]["chosen"] == answer["image"]["time"] == "2024-06-18"
    # Streamed (stderr not a terminal here), the chosen date is still said, on stderr.
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("[clearest date 2024-06-18 of ")
    assert captured.out.startswith("Heuristic pixel analysis")
    assert main([*args, "--max-cloud", "0.05"]) == 1
    assert capsys.readouterr().err.startswith("satapi: too_cloudy: Every candidate")
    with pytest.raises(SystemExit) as exited:  # argparse: --time and --clearest exclude
        main(["image", *CLOUDY, "--clearest", "2024-05-01/2024-06-30", "--time", LATE])
    assert exited.value.code == 2
    assert "not allowed with argument --clearest" in capsys.readouterr().err


def test_compare_and_timeseries_with_clearest(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["compare", *CLOUDY, "--before", "2024-05-01/2024-06-30", "--after", "2024-08-02"]
    assert main([*args, "--analyzer", "local", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["selection"]["before"]["chosen"] == "2024-06-18"
    assert answer["images"]["after"]["time"] == "2024-08-02"
    series = ["timeseries", *CLOUDY, "--start", "2024-04-01", "--end", "2024-06-30"]
    assert main([*series, "--clearest-per", "P1M"]) == 3  # April has no date: partial
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["time", "chosen", "vegetation"]
    assert lines[1].startswith("2024-04-01") and "no_data" in lines[1]
    assert lines[2].split()[:2] == ["2024-05-01", "2024-05-19"]
    assert lines[3].split()[:2] == ["2024-06-01", "2024-06-18"]
    assert main([*series, "--clearest-per", "P1M", "--csv"]) == 3
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["chosen_time"] for r in rows] == ["", "2024-05-19", "2024-06-18"]


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`satapi check-config | head -0`: the reader is gone before satapi writes; no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATAPI_")}
    env["SATAPI_DATA_DIR"] = str(tmp_path)
    read, write = os.pipe()
    os.close(read)  # the reader left before the first byte
    try:
        ran = subprocess.run(
            [sys.executable, "-m", "satapi", "check-config"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        os.close(write)
    assert ran.returncode == 1
    assert ran.stderr == ""


def test_check_config_shows_each_provider_only_its_own_fields(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATAPI_")}
    config = tmp_path / "satapi.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n'
        '[providers.here]\nurl = "http://127.0.0.1:9/wms"\ndefault_layer = "scene"\n'
        '[providers.hub]\nkind = "sentinelhub"\nurl = "https://hub.example"\n'
        'token_url = "https://hub.example/token"\nclient_id = "id"\nclient_secret = "s3cr3t"\n'
    )
    env["SATAPI_CONFIG"] = str(config)
    ran = subprocess.run(
        [sys.executable, "-m", "satapi", "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert ran.returncode == 0, ran.stderr
    providers = json.loads(ran.stdout)["providers"]
    wms, hub = providers["here"], providers["hub"]
    assert wms["default_layer"] == "scene" and wms["check_time"] is True
    assert not {"token_url", "client_id", "client_secret", "evalscript", "collection"} & set(wms)
    assert hub["token_url"] == "https://hub.example/token" and hub["client_secret"] != "s3cr3t"
    assert not {"default_layer", "params", "secret_params", "version"} & set(hub)
    assert "s3cr3t" not in ran.stdout
