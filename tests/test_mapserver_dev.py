"""The README's offline route: `python3 dev.py mapserver` starts the local MapServer and writes the
satapi settings that use it to a file, printing where (not the settings themselves)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.support.mapserver_plugin import _require_mapserver

ROOT = Path(__file__).resolve().parents[1]


def test_dev_py_has_the_mapserver_command() -> None:
    spec = importlib.util.spec_from_file_location("satapi_dev", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    assert {"serve", "test", "mapserver"} <= set(dev.COMMANDS)


def test_mapserver_dev_writes_its_settings_to_a_file(tmp_path: Path) -> None:
    _require_mapserver()
    config = tmp_path / "satapi.local.toml"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "mapserver_dev.py"), "--config", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C to stop."):
                break
        output = "".join(lines)
        assert f"satapi settings written to {config.resolve()}" in output, output
        assert "start satapi with: SATAPI_CONFIG=satapi.local.toml python3 dev.py serve" in output
        assert "[providers" not in output and "default_provider" not in output  # only in the file

        settings = tomllib.loads(config.read_text())
        assert settings["default_provider"] == "mapserver"
        url = settings["providers"]["mapserver"]["url"]
        with urllib.request.urlopen(f"{url}?SERVICE=WMS&REQUEST=GetCapabilities", timeout=10) as r:
            capabilities = r.read().decode()
        assert "<Name>scene</Name>" in capabilities and "<Name>cloudy</Name>" in capabilities
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rest, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("mapserver_dev.py did not stop on SIGTERM")
    assert proc.returncode == 0 and "stopped." in rest
