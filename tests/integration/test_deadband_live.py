"""Deadbands end to end through a real broker, the real spool and the local API: the API gets
exactly the points the decision picks from the stream, across a bridge restart (with messages
queued at the broker meanwhile) and across a kill -9 between the spool commit and its PUBACKs."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bridge.app import Bridge
from bridge.deadband import Sent, decide
from bridge.failpoints import ENV_VAR
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.mapping.loader import load_mappings_text
from tests.support.harness import (
    BridgeProcess,
    delivered_points,
    make_settings,
    metric,
    publish,
    running_bridge,
)
from tests.support.oracle import Point, assert_exactly, wait_committed, wait_delivered, wait_for

MAPPINGS = """version: 1
rules:
  - name: env
    topic: site/{dev}/env
    device_id: '{dev}'
    metrics:
      temp_c: t
      mode: {path: m, deadband: {on_change: true}}
    timestamp: {field: ts, format: epoch_ms}
    deadband: {absolute: 0.5, heartbeat_s: 15}
"""
DEVICES = ("d1", "d2")
N = 40  # messages per device, one a second of measurement time


def stream(start_ms: int) -> list[tuple[str, bytes]]:
    """Per device, a slowly drifting noisy temperature and a mode that changes every 10
    readings, in measurement order."""
    out = []
    for i in range(N):
        for k, dev in enumerate(DEVICES):
            temp = round(20 + 0.1 * i + ((i * 7 + k) % 5 - 2) * 0.05, 2)
            body = {"t": temp, "m": (i // 10 + k) % 3, "ts": start_ms + i * 1000}
            out.append((f"site/{dev}/env", orjson.dumps(body)))
    return out


def published(messages: list[tuple[str, bytes]]) -> list[Point]:
    out = []
    for topic, payload in messages:
        body = orjson.loads(payload)
        dev = topic.split("/")[1]
        out += [
            (dev, "temp_c", body["ts"], float(body["t"])),
            (dev, "mode", body["ts"], float(body["m"])),
        ]
    return out


def chosen(messages: list[tuple[str, bytes]]) -> set[Point]:
    """The points the deadbands let through, decided in order by the spool's own rule."""
    [rule] = load_mappings_text(MAPPINGS, "m.yaml")
    assert rule.deadband is not None
    last: dict[tuple[str, str], Sent | None] = {}
    want = set()
    for dev, name, ts_ms, value in published(messages):
        band = rule.deadband.of(name)
        assert band is not None
        send, last[(dev, name)] = decide(last.get((dev, name)), value, ts_ms * 1000, band)
        if send:
            want.add((dev, name, ts_ms, value))
    return want


def committed(proc: BridgeProcess) -> float:
    """Messages the bridge process has committed (0 while it does not answer)."""
    try:
        return proc.metric("metriqo_bridge_messages_committed_total")
    except OSError:
        return 0.0


def held_back(bridge: Bridge) -> float:
    return metric(bridge, "metriqo_bridge_points_held_back_total", rule="env", reason="deadband")


async def test_a_restart_neither_resends_nor_loses_a_change(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Part of the stream before a graceful restart, part queued at the broker while the bridge
    is down, the rest after: the API holds exactly the points the deadbands choose from the
    whole stream, once each, and the held-back counter accounts for every other point."""
    start_ms = int(time.time() * 1000) - 600_000
    messages = stream(start_ms)
    want = chosen(messages)
    assert 0 < len(want) < len(published(messages)) / 2  # the bands do hold most back
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    first, down, after = messages[:30], messages[30:50], messages[50:]
    async with running_bridge(settings, MAPPINGS) as bridge:
        await publish(broker.port, first)
        await wait_committed(bridge, len(first))
        await wait_delivered(api, chosen(first))
        held_first = held_back(bridge)
    await publish(broker.port, down, client_id="pub-2")  # queued in the bridge's session
    async with running_bridge(settings, MAPPINGS) as bridge:
        await publish(broker.port, after, client_id="pub-3")
        await wait_committed(bridge, len(down) + len(after))
        await wait_delivered(api, want)
        await wait_for(lambda: bridge.spool.file.depth_points == 0, what="spool drained")
        held = held_first + held_back(bridge)
        assert metric(bridge, "metriqo_bridge_dead_letters_total", reason="missing_field") == 0
    got = delivered_points(api.store.points())
    assert_exactly(got, want)
    assert held == len(published(messages)) - len(want)


async def test_a_crash_before_the_pubacks_loses_no_change(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """kill -9 between a spool commit and its PUBACKs: the broker redelivers that commit's
        messages to the restarted bridge, which decides them against the committed state. No
        chosen point is lost, none is invented, none arrives twice (but a batch the API accepted
    just before the kill, resent as without deadbands); the only possible extra points
        are readings of the redelivered messages that the first decision held back and that are
        now older than their series' last sent value (passed, never dropped)."""
    start_ms = int(time.time() * 1000) - 600_000
    messages = stream(start_ms)
    want = chosen(messages)
    proc = BridgeProcess(broker.port, api.url, tmp_path / "bridge", MAPPINGS)
    try:
        proc.start({ENV_VAR: "after_commit_before_puback:crash@2"})
        await asyncio.to_thread(proc.wait_ready)
        await publish(broker.port, messages[:2])  # the first commit
        assert proc.proc is not None
        # The rest only once those two are committed: published together on a busy machine,
        # all 30 can go in one commit, and the second one, where the failpoint fires, never
        # comes.
        async with asyncio.timeout(60):  # (or the failpoint fired already, were they split)
            while await asyncio.to_thread(committed, proc) < 2 and proc.proc.poll() is None:
                await asyncio.sleep(0.05)
        await publish(broker.port, messages[2:30])  # the second: crash after it
        try:
            code = await asyncio.to_thread(proc.proc.wait, 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the failpoint did not fire:\n{proc.output()[-3000:]}")
        assert code == -signal.SIGKILL, proc.output()[-3000:]
        # A batch the API accepted just before the kill, not yet deleted, is sent again (as
        # without deadbands): the only duplicates allowed. The snapshot waits until the server
        # has finished with the dead process's connections: a request it sent just before the
        # kill can still be in the server's buffers, stored a moment after the process died.
        async with asyncio.timeout(30):
            await api.settle()
        at_crash = set(delivered_points(api.store.points()))
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        await publish(broker.port, messages[30:], client_id="pub-2")
        await wait_delivered(api, want, timeout=60)
        async with asyncio.timeout(30):
            while await asyncio.to_thread(proc.spool_points) != 0:
                await asyncio.sleep(0.05)
        assert proc.terminate() == 0
    finally:
        proc.close()
    got = delivered_points(api.store.points())
    assert want <= set(got)
    # Extra points only from the redelivered messages, which were all published before the crash.
    assert set(got) - want <= set(published(messages[:30]))
    twice = {p for p, n in Counter(got).items() if n > 1}
    assert twice <= at_crash, f"sent twice, not by a resent batch: {sorted(twice - at_crash)}"
