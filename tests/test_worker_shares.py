"""`satapi serve --workers N` without Redis: each worker enforces an equal share of every cap."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from satapi import cli
from satapi.config import Settings
from satapi.coordination import make_ai_limiter, make_limiter
from satapi.coordination.shares import ShareError, local_caps
from satapi.observability.events import NullObserver


def test_caps_are_divided_never_exceeding_the_total(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        max_concurrent_wms=7,
        max_waiting=101,
        worker_processes=2,
        providers={
            "test": {
                "url": "http://wms.test/wms",
                "default_layer": "x",
                "max_concurrency": 5,
                "min_interval_s": 0.5,
            }
        },
    )
    caps = local_caps(settings)
    assert caps.global_cap == 3 and caps.provider_caps["test"] == 2
    assert caps.max_waiting == 50
    assert caps.min_intervals["test"] == 1.0  # the fleet's start rate stays 1 / 0.5 s
    assert "max_concurrent_wms 3 of 7" in caps.describe(settings)
    assert make_limiter(settings).stats()["*"].capacity == 3


def test_with_redis_the_caps_are_global(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        max_concurrent_wms=7, worker_processes=2, redis_url="redis://127.0.0.1:1/0"
    )
    assert local_caps(settings).global_cap == 7


def test_a_cap_too_small_to_share_stops_start_up(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    with pytest.raises(ShareError, match="eox"):
        local_caps(
            make_settings(
                worker_processes=5,
                default_provider="eox",
                providers={"eox": {"max_concurrency": 4}},
            )
        )
    monkeypatch.setenv("SATAPI_PROVIDERS", '{"eox": {"max_concurrency": 2}}')
    monkeypatch.delenv("SATAPI_CONFIG", raising=False)
    # `serve --workers` exports SATAPI_WORKER_PROCESSES for its workers: undone after the test.
    monkeypatch.setenv("SATAPI_WORKER_PROCESSES", "1")
    # `main` sets logging up on this test's captured stderr: put the root handlers back after,
    # or later tests log into a closed stream.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", root.handlers[:])
    assert cli.main(["serve", "--workers", "3"]) == 2
    err = capsys.readouterr().err
    assert "providers.eox.max_concurrency (2) cannot be shared by 3 worker processes" in err
    assert "redis_url" in err


def test_redis_url_must_be_a_redis_url(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError, match="redis://"):
        make_settings(redis_url="http://127.0.0.1:6379")
    settings = make_settings(redis_url="redis://:s3cret@127.0.0.1:6379/0")
    assert "s3cret" in settings.secrets  # redacted from logs
    assert "s3cret" not in settings.model_dump_json()


def test_the_ai_cap_is_shared_too(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        anthropic_api_key="sk-ant-test",
        max_concurrent_ai=7,
        max_ai_waiting=50,
        worker_processes=2,
    )
    caps = local_caps(settings)
    assert (caps.ai_cap, caps.ai_max_waiting) == (3, 25)
    assert "max_concurrent_ai 3 of 7" in caps.describe(settings)
    assert make_ai_limiter(settings, NullObserver()).stats().capacity == 3
    assert local_caps(settings.model_copy(update={"worker_processes": 1})).ai_cap == 7
    with pytest.raises(ShareError, match="max_concurrent_ai"):
        local_caps(settings.model_copy(update={"max_concurrent_ai": 1}))
    # Without a key no AI call is made: a small AI cap does not stop start-up.
    keyless = settings.model_copy(update={"anthropic_api_key": None, "max_concurrent_ai": 1})
    assert local_caps(keyless).ai_cap == 1
