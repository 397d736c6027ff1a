"""The event loop setting (bridge/event_loop.py): uvloop where it imports, asyncio's own loop
when asked for or when uvloop is missing, and a configuration error naming the setting when
uvloop is insisted on and missing."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bridge.config.loader import load_settings
from bridge.errors import ConfigError
from bridge.event_loop import loop_factory
from bridge.settings import EventLoop

uvloop = pytest.importorskip("uvloop", reason="uvloop is a dependency on Linux and macOS only")


def _run_on(factory: object) -> type:
    """The class of the loop a Runner made by ``factory`` runs a coroutine on."""

    async def which() -> type:
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[arg-type]
        return runner.run(which())


def test_auto_and_uvloop_run_on_uvloop_where_it_is_installed() -> None:
    choices: tuple[EventLoop, ...] = ("auto", "uvloop")
    for choice in choices:
        name, factory = loop_factory(choice)
        assert name == "uvloop"
        assert _run_on(factory) is uvloop.Loop


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    name, factory = loop_factory("asyncio")
    assert name == "asyncio"
    assert not issubclass(_run_on(factory), uvloop.Loop)
    assert issubclass(_run_on(factory), asyncio.BaseEventLoop)


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # the import raises ImportError
    name, factory = loop_factory("auto")
    assert name == "asyncio"
    assert issubclass(_run_on(factory), asyncio.BaseEventLoop)

    file = tmp_path / "settings.yaml"
    file.write_text("log_level: INFO\nevent_loop: uvloop\n", encoding="utf-8")
    settings = load_settings(file=file, environ={})
    assert settings.event_loop == "uvloop"
    with pytest.raises(ConfigError) as caught:
        loop_factory(settings.event_loop, settings.origins.get("event_loop"))
    assert caught.value.key == "event_loop"
    assert caught.value.file is not None
    assert f"{file}:2" in str(caught.value)
    assert "uvloop cannot be imported" in str(caught.value)


def test_an_unknown_loop_is_refused_by_the_settings(tmp_path: Path) -> None:
    file = tmp_path / "settings.yaml"
    file.write_text("event_loop: trio\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(file=file, environ={})
    assert "event_loop" in str(caught.value)
    assert f"{file}:1" in str(caught.value)
