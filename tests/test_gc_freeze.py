"""The server freezes what start-up made, so full collections under load stay short."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgi_lifespan import LifespanManager

import satapi.app
from satapi import cli
from satapi.app import app_from_env, create_app
from satapi.config import Settings


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()  # no test's objects stay out of the collector's reach
    gc.set_threshold(*thresholds)


async def test_a_server_app_freezes_start_up_objects(
    make_settings: Callable[..., Settings],
) -> None:
    async with LifespanManager(create_app(make_settings(), freeze_gc=True)):
        frozen = gc.get_freeze_count()
        # What start-up made (modules, models, clients) is out of the collector's reach.
        assert frozen > 10_000
        assert len(gc.get_objects()) < frozen
        # and the young generation is collected less often than Python's default (700).
        assert gc.get_threshold() == satapi.app.GC_THRESHOLDS


async def test_other_apps_do_not_freeze(make_settings: Callable[..., Settings]) -> None:
    thresholds = gc.get_threshold()
    async with LifespanManager(create_app(make_settings())):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == thresholds


def test_the_servers_factory_asks_for_it(
    monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings]
) -> None:
    seen: dict[str, Any] = {}

    def fake_create_app(settings: Settings, **kwargs: Any) -> object:
        seen.update(kwargs)
        return object()

    monkeypatch.setattr(satapi.app, "load_settings", make_settings)
    monkeypatch.setattr(satapi.app, "setup_logging", lambda *a: None)
    monkeypatch.setattr(satapi.app, "create_app", fake_create_app)
    app_from_env()
    assert seen == {"watch_signals": True, "freeze_gc": True, "warm_up": True}


async def test_a_server_app_turns_the_collector_back_on_when_ready(
    make_settings: Callable[..., Settings],
) -> None:
    # `satapi serve` keeps the cyclic collector off while it starts (satapi.cli).
    gc.disable()
    try:
        async with LifespanManager(create_app(make_settings(), freeze_gc=True)):
            assert gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("argv", "serving"),
    [
        (["check-config"], False),
        (["serve", "--workers", "2"], False),
        (["serve"], True),
    ],
)
def test_the_command_line_leaves_the_collector_on(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], serving: bool
) -> None:
    """Off while one serving process starts (its app turns it on), on for every other command,
    and on again whatever way the command ends."""
    seen: list[bool] = []
    monkeypatch.setattr(cli, "_server_command", lambda args: seen.append(gc.isenabled()) or 0)
    assert cli.main(argv) == 0
    assert seen == [not serving]
    assert gc.isenabled()
    with pytest.raises(SystemExit):
        cli.main(["--no-such-option"])
    assert gc.isenabled()
