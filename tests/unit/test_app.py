"""The Bridge's lifecycle against a real mosquitto (``broker``) and the local API (``api``):
start, readiness, delivery, graceful stop within its budget, the spool lock, and reload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge.app import Bridge
from bridge.config.loader import load_settings
from bridge.errors import SpoolLocked
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.mapping.loader import load_mappings
from bridge.settings import Settings, SpoolSettings
from bridge.spool.store import Spool
from tests.support import TOKEN, waiting

DEADLINE_S = 20.0
T_MS = 1_731_657_600_000  # payload timestamps: 2024-11-15T08:00:00Z
RULES = """
version: 1
rules:
  - name: plain
    topic: "tele/{device}/{metric}"
    device_id: "{device}"
    payload: number
    metric: "{metric}"
"""
MORE_RULES = (
    RULES
    + """
  - name: env
    topic: "plant/{site}/env"
    device_id: "{site}"
    metrics: {temp: temp}
    timestamp: {field: ts, format: auto}
"""
)


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll observable state under this module's deadline (a bridge start is slow)."""
    await waiting.until(predicate, what, timeout=DEADLINE_S, step=0.02)


def settings_for(port: int, api_url: str, tmp_path: Path, **extra: str) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "mqtt.port": str(port),
            "mqtt.client_id": "bridge-under-test",
            "mqtt.reconnect_max_s": "1",
            "api.base_url": api_url,
            "api.token": TOKEN,
            "api.requests_per_minute": "1000000",
            "api.retry_max_s": "0.5",
            "spool.path": str(tmp_path / "spool" / "bridge.db"),
            "http.port": "0",
            "batch.linger_s": "0.2",
            "mapping.file": str(tmp_path / "mappings.yaml"),
            "mapping.reload_interval_s": "0",
            "stop_timeout_s": "5",
            **extra,
        },
    )


def make_bridge(settings: Settings) -> Bridge:
    path = settings.mapping.file
    if not path.exists():
        path.write_text(RULES, encoding="utf-8")
    return Bridge(settings, load_mappings(path), lambda: TOKEN, mappings_path=path)


@contextlib.asynccontextmanager
async def running(bridge: Bridge, *, subscribed: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``bridge`` until started (and subscribed); stop it on exit, within its budget."""
    task = asyncio.create_task(bridge.run())
    try:
        async with asyncio.timeout(DEADLINE_S):
            await bridge.started()
        if subscribed:
            await until(
                lambda: bool(bridge.source and bridge.source.state.subscribed),
                "up",
            )
        yield task
    finally:
        if not task.done():
            bridge.stop()
        async with asyncio.timeout(bridge.settings.stop_timeout_s + 5):
            await task


def publish(port: int, messages: list[tuple[str, bytes]], *, retain: bool = False) -> None:
    """Publish at QoS 1 and wait for every PUBACK (blocking: run it in a thread)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for info in [client.publish(t, p, qos=1, retain=retain) for t, p in messages]:
            info.wait_for_publish(DEADLINE_S)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def stored(api: LocalApi) -> set[tuple[str, str, float]]:
    return {(p.device_id, p.metric, p.value) for p in api.store.points()}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_bridge_starts_delivers_and_stops_within_its_budget(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Started and subscribed, the bridge reports no problems, delivers what is published, and
    run() returns within stop_timeout_s of stop()."""
    bridge = make_bridge(settings_for(broker.port, api.url, tmp_path))
    async with running(bridge) as task:
        assert bridge.problems() == []
        await asyncio.to_thread(publish, broker.port, [("tele/d1/t", b"1.5"), ("tele/d2/t", b"2")])
        await until(lambda: len(stored(api)) == 2, "two points stored")
        assert stored(api) == {("d1", "t", 1.5), ("d2", "t", 2.0)}
        began = time.monotonic()
        bridge.stop()
        async with asyncio.timeout(bridge.settings.stop_timeout_s):
            await task
        assert time.monotonic() - began < bridge.settings.stop_timeout_s
    assert bridge.spool.file.depth_points == 0


async def test_stop_delivers_what_still_lingers(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Points committed but lingering (linger_s is a minute) are delivered by the graceful
    stop instead of being left for the next start."""
    settings = settings_for(broker.port, api.url, tmp_path, **{"batch.linger_s": "60"})
    bridge = make_bridge(settings)
    committed = "metriqo_bridge_messages_committed_total"
    async with running(bridge) as task:
        await asyncio.to_thread(publish, broker.port, [("tele/d1/t", b"1"), ("tele/d2/t", b"2")])
        await until(
            lambda: bridge.metrics.registry.get_sample_value(committed) == 2,
            "commit",
        )
        assert api.store.point_count() == 0
        bridge.stop()
        async with asyncio.timeout(settings.stop_timeout_s):
            await task
    assert stored(api) == {("d1", "t", 1.0), ("d2", "t", 2.0)}
    assert bridge.spool.file.depth_points == 0


async def test_stop_timeout_bounds_shutdown_and_keeps_undelivered_points(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """With the API unreachable, stop() still ends run() at about stop_timeout_s, and the
    committed points stay in the spool for the next start."""
    url = f"http://127.0.0.1:{closed_port()}/api/v2"
    settings = settings_for(broker.port, url, tmp_path, stop_timeout_s="1")
    bridge = make_bridge(settings)
    committed = "metriqo_bridge_messages_committed_total"
    async with running(bridge) as task:
        await asyncio.to_thread(publish, broker.port, [("tele/d1/t", b"1"), ("tele/d2/t", b"2")])
        await until(
            lambda: bridge.metrics.registry.get_sample_value(committed) == 2,
            "commit",
        )
        began = time.monotonic()
        bridge.stop()
        async with asyncio.timeout(DEADLINE_S):
            await task
        assert 0.9 <= time.monotonic() - began < 1.0 + 3.0
    spool = Spool(SpoolSettings(settings.spool.path, reserve_bytes=0))
    spool.open()
    try:
        assert spool.file.depth_points == 2
    finally:
        spool.close()


async def test_a_second_bridge_on_the_same_spool_is_refused(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """While one bridge runs, another on the same spool path fails with SpoolLocked, and the
    first keeps running."""
    settings = settings_for(broker.port, api.url, tmp_path)
    first = make_bridge(settings)
    async with running(first) as task:
        second = make_bridge(settings)
        with pytest.raises(SpoolLocked):
            async with asyncio.timeout(DEADLINE_S):
                await second.run()
        assert not task.done()
        assert first.problems() == []


async def test_problems_name_a_broker_that_cannot_be_reached(api: LocalApi, tmp_path: Path) -> None:
    """Started without a broker, the bridge is not ready and says why."""
    bridge = make_bridge(settings_for(closed_port(), api.url, tmp_path))
    async with running(bridge, subscribed=False):
        await until(
            lambda: bool(bridge.source and bridge.source.state.last_error),
            "an error",
        )
        (problem,) = bridge.problems()
        assert problem.startswith("mqtt not connected: connect to 127.0.0.1:")


async def test_reload_keeps_the_old_rules_on_a_broken_file_and_takes_a_good_one(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A broken mapping file: reload() returns False and the running rules still map; a
    good one: reload() returns True and its new topic is subscribed and delivered."""
    settings = settings_for(broker.port, api.url, tmp_path)
    bridge = make_bridge(settings)
    path = settings.mapping.file
    async with running(bridge):
        old = bridge.mapper
        path.write_text(RULES + "  - name: [broken\n", encoding="utf-8")
        assert await bridge.reload() is False
        assert bridge.mapper is old
        failures = bridge.metrics.registry.get_sample_value(
            "metriqo_bridge_config_reloads_total", {"result": "failure"}
        )
        assert failures == 1
        await asyncio.to_thread(publish, broker.port, [("tele/d1/t", b"1")])
        await until(
            lambda: ("d1", "t", 1.0) in stored(api),
            "the old rules still map",
        )

        path.write_text(MORE_RULES, encoding="utf-8")
        assert await bridge.reload() is True
        assert [r.name for r in bridge.mapper.rules] == ["plain", "env"]
        # Retained: whether it reaches the broker before or after the new SUBSCRIBE (no public
        # signal tells when that is acknowledged), the new subscription gets it.
        payload = b'{"temp": 20.5, "ts": %d}' % T_MS
        await asyncio.to_thread(publish, broker.port, [("plant/s1/env", payload)], retain=True)
        await until(
            lambda: ("s1", "temp", 20.5) in stored(api),
            "the new rule maps",
        )


COALESCED = (
    RULES
    + """
  - name: slow-env
    topic: "plant/{site}/env"
    device_id: "{site}"
    metrics: {temp: temp}
    coalesce: {window_s: 60, function: avg}
"""
)
BANDED = (
    RULES
    + """
  - name: banded-env
    topic: "plant/{site}/env"
    device_id: "{site}"
    metrics: {temp: temp}
    deadband: {absolute: 0.5}
"""
)


def kept_apart(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "keeps its own coalescing" in r.message]


async def test_a_share_group_names_the_rules_whose_state_each_member_keeps_apart(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each bridge of a share group keeps its own coalescing windows, deadbands and Sparkplug
    aliases and sees only part of a device's messages: with api.replicas above 1 the bridge
    names the rules that have such state, at start and after a reload; alone, nothing."""
    caplog.set_level(logging.WARNING, logger="bridge.app")
    grouped = settings_for(
        broker.port, api.url, tmp_path, **{"mqtt.share_group": "hall3", "api.replicas": "2"}
    )
    grouped.mapping.file.write_text(COALESCED, encoding="utf-8")
    bridge = make_bridge(grouped)
    async with running(bridge):
        [said] = kept_apart(caplog)
        assert "share group 'hall3' of 2 bridges" in said
        assert "slow-env (coalesce)" in said
        assert "plain" not in said
        caplog.clear()
        grouped.mapping.file.write_text(BANDED, encoding="utf-8")
        assert await bridge.reload() is True
        [said] = kept_apart(caplog)
        assert "banded-env (deadband)" in said
        assert "slow-env" not in said
        caplog.clear()

    (tmp_path / "alone").mkdir()
    alone = settings_for(broker.port, api.url, tmp_path / "alone", **{"mqtt.share_group": "hall3"})
    alone.mapping.file.write_text(COALESCED, encoding="utf-8")
    async with running(make_bridge(alone)):
        assert kept_apart(caplog) == []
