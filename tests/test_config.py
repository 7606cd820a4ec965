"""Settings: a blank key is no key.

An empty or whitespace-only `ANTHROPIC_API_KEY` (or `SATAPI_ANTHROPIC_API_KEY`, or the TOML
key) means the local analyzer, and the start-up log says so and why; before, it chose the Claude
analyzer and every analysis failed authentication. Blank AWS and Redis settings are unset too.
A blank entry of `api_keys` is dropped; a list of nothing but blanks is refused at start-up
rather than read as "no keys" (which would open the API).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from satapi.app import create_app
from satapi.config import Settings, SettingsError, load_settings
from tests.conftest import WMS_URL, png_bytes
from tests.support.fault_upstream import FaultUpstream, SatapiProcess
from tests.support.wms_mock import mock_transport

BLANKS = ["", "   ", "\t\n"]
BODY = {"bbox": [10, 45, 14, 47], "width": 64, "height": 32}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "SATAPI_CONFIG",
        "ANTHROPIC_API_KEY",
        "SATAPI_ANTHROPIC_API_KEY",
        "SATAPI_API_KEYS",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("blank", BLANKS)
@pytest.mark.parametrize("variable", ["ANTHROPIC_API_KEY", "SATAPI_ANTHROPIC_API_KEY"])
def test_a_blank_anthropic_key_in_the_environment_is_no_key(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, variable: str, blank: str
) -> None:
    clean_env.setenv(variable, blank)
    settings = load_settings(data_dir=tmp_path)
    assert settings.anthropic_api_key is None
    assert settings.secrets == []


@pytest.mark.parametrize("blank", BLANKS)
def test_a_blank_anthropic_key_in_the_file_is_no_key(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, blank: str
) -> None:
    config = tmp_path / "satapi.toml"
    config.write_text(f"anthropic_api_key = {json.dumps(blank)}\nanthropic_base_url = ''\n")
    clean_env.setenv("SATAPI_CONFIG", str(config))
    settings = load_settings(data_dir=tmp_path)
    assert settings.anthropic_api_key is None and settings.anthropic_base_url is None


def test_a_real_key_is_kept_as_given(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("ANTHROPIC_API_KEY", "sk-ant-real")
    assert load_settings(data_dir=tmp_path).anthropic_api_key == SecretStr("sk-ant-real")


def test_blank_aws_and_redis_settings_are_unset(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An exported but empty AWS_ENDPOINT_URL was refused as "must be an http(s) URL", and an
    # empty key id was kept as a credential.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"):
        clean_env.setenv(name, " ")
    settings = load_settings(data_dir=tmp_path, redis_url="  ")
    assert settings.aws_access_key_id is None and settings.aws_secret_access_key is None
    assert settings.aws_endpoint_url is None and settings.aws_region is None
    assert settings.redis_url is None


def test_blank_api_keys_are_dropped_and_only_blanks_are_refused(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = load_settings(data_dir=tmp_path, api_keys=["", "key-one", "  "])
    assert settings.api_keys == [SecretStr("key-one")]
    with pytest.raises(SettingsError, match=r"api_keys.*blank"):
        load_settings(data_dir=tmp_path, api_keys=[""])
    with pytest.raises(SettingsError, match=r"api_keys.*blank"):
        load_settings(data_dir=tmp_path, api_keys=[" ", "\t"])
    # The comma-separated environment form: empty is "no keys", as before.
    clean_env.setenv("SATAPI_API_KEYS", "")
    assert load_settings(data_dir=tmp_path).api_keys == []
    clean_env.setenv("SATAPI_API_KEYS", " , key-two,")
    assert load_settings(data_dir=tmp_path).api_keys == [SecretStr("key-two")]


@pytest.mark.parametrize("blank", BLANKS)
async def test_the_app_with_a_blank_key_analyses_locally_and_says_why(
    make_settings: Callable[..., Settings],
    wms: respx.Router,
    caplog: pytest.LogCaptureFixture,
    blank: str,
) -> None:
    wms.get(WMS_URL).respond(200, content=png_bytes(64, 32), headers={"Content-Type": "image/png"})
    caplog.set_level(logging.INFO, logger="satapi")
    app = create_app(make_settings(anthropic_api_key=blank), http_transport=mock_transport(wms))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://satapi.test"
        ) as client,
    ):
        assert app.state.resources.analysis.ai_available is False
        r = await client.post("/api/vision/analyze_satellite", json={**BODY, "analyzer": "auto"})
        assert r.status_code == 200, r.text
        assert r.json()["analysis"]["analyzer"] == "local"
        claude = await client.post(
            "/api/vision/analyze_satellite", json={**BODY, "analyzer": "claude"}
        )
        assert claude.status_code == 400 and claude.json()["code"] == "ai_not_configured"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("analyzers:")]
    assert lines == [
        "analyzers: local only; 'auto' uses local (no Anthropic API key: ANTHROPIC_API_KEY "
        "and SATAPI_ANTHROPIC_API_KEY are unset or blank)"
    ]


async def test_a_real_server_with_an_empty_key_uses_the_local_analyzer(tmp_path: Path) -> None:
    """`ANTHROPIC_API_KEY= satapi serve`: the log names the local analyzer, `auto` analyses."""
    with FaultUpstream() as upstream:
        settings: dict[str, Any] = {
            "default_provider": "fault",
            "providers": {"fault": {"url": upstream.wms_url, "default_layer": "ok"}},
        }
        server = SatapiProcess(tmp_path, settings, env={"ANTHROPIC_API_KEY": ""}).start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                r = await client.post("/api/vision/analyze_satellite", json=BODY)
                assert r.status_code == 200, r.text
                assert r.json()["analysis"]["analyzer"] == "local"
        finally:
            server.stop()
    log = server.log()
    assert "analyzers: local only" in log and "Traceback" not in log


def test_a_toml_syntax_error_names_the_file_and_line(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "satapi.toml"
    config.write_text('log_format = "json"\nmax_waiting 10\n')
    clean_env.setenv("SATAPI_CONFIG", str(config))
    with pytest.raises(SettingsError) as raised:
        load_settings(data_dir=tmp_path)
    message = str(raised.value)
    assert message.startswith(f"{config} is not valid TOML: ")
    assert "line 2" in message


def test_a_whole_settings_error_reads_as_one_sentence(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(data_dir=tmp_path, default_provider="nowhere")
    message = str(raised.value)
    assert message.startswith("invalid settings: ")
    assert "settings settings" not in message and "setting settings" not in message
    assert "default_provider 'nowhere' is not a configured provider" in message
