"""Sparkplug B end to end against an edge node written by someone else: Eclipse Tahu's
JavaScript client (npm ``sparkplug-client``, tests/peers/sparkplug/edge-node.js) publishes to a
real mosquitto, the bridge maps it into the real spool, the local API receives.

The no-loss oracle: every numeric value the peer printed as published arrives exactly once,
under its device, metric NAME (resolved from the aliases of the right BIRTH) and time. The
peer publishes at QoS 0 like sparkplug-client does, except where the bridge is offline while
the node publishes: a QoS 0 message for an offline subscriber is dropped by the broker by
MQTT design, so those scenarios ask the peer for QoS 1 (and a QoS 1 Will, as Sparkplug 3.0
does; sparkplug-client's own is QoS 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support.harness import (
    BridgeProcess,
    delivered_points,
    make_settings,
    metric,
    running_bridge,
)
from tests.support.oracle import assert_exactly, wait_delivered, wait_for
from tests.support.sparkplug_edge import TahuEdgeNode

MAPPINGS = """version: 1
rules:
  - name: plant
    topic: "spBv1.0/plant/#"
    payload: sparkplug
    device_id: "{node}-{device}"
    sparkplug: {node_device_id: "{node}", separator: _, exclude: [bdSeq]%s}
"""
RULE = MAPPINGS % ""


@pytest.fixture
def peers() -> Iterator[list[TahuEdgeNode]]:
    """Edge nodes started by a test, killed at its end whatever happened."""
    started: list[TahuEdgeNode] = []
    yield started
    for peer in started:
        peer.close()


def start_peer(peers: list[TahuEdgeNode], port: int, name: str, **kw: object) -> TahuEdgeNode:
    peer = TahuEdgeNode(port, name, **kw)  # type: ignore[arg-type]
    peers.append(peer)
    peer.wait_connected()
    return peer


async def run(peer: TahuEdgeNode, command: str, **args: object) -> None:
    await asyncio.to_thread(peer.do, command, **args)


def sparkplug_event(bridge: object, event: str) -> float:
    return metric(
        bridge,  # type: ignore[arg-type]
        "metriqo_bridge_sparkplug_session_events_total",
        rule="plant",
        event=event,
    )


async def test_birth_then_data_by_alias_only(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, peers: list[TahuEdgeNode]
) -> None:
    """NBIRTH + DBIRTH with names and aliases, then DATA with aliases only (a negative Int16,
    a Float, a Double): every value once, under its name; no gap, nothing dead-lettered."""
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings, RULE) as bridge:
        peer = await asyncio.to_thread(start_peer, peers, broker.port, "e1")
        await run(peer, "birth")
        await run(peer, "data", count=4, interval_ms=20)
        await wait_delivered(api, peer.want)
        assert sparkplug_event(bridge, "seq_gap") == 0
        assert bridge.spool.file.dead_letters.count == 0
        await run(peer, "stop")
    assert len(peer.want) == 3 * 5
    assert_exactly(delivered_points(api.store.points()), peer.want)


async def test_a_rebirth_with_new_aliases_and_a_seq_gap(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, peers: list[TahuEdgeNode]
) -> None:
    """Two nodes; node a skips a seq (one gap counted), node b re-births with its aliases
    handed out backwards (Env/Temp and Flow swap 1 and 3): nothing confused, nothing lost."""
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings, RULE) as bridge:
        a = await asyncio.to_thread(start_peer, peers, broker.port, "a")
        b = await asyncio.to_thread(start_peer, peers, broker.port, "b")
        for peer in (a, b):
            await run(peer, "birth")
            await run(peer, "data", count=2)
        await run(a, "skip_seq")
        await run(a, "data", count=2)
        await run(b, "birth", reverse=True)
        await run(b, "data", count=2)
        await wait_delivered(api, a.want | b.want)
        assert sparkplug_event(bridge, "seq_gap") == 1
        nbirths = metric(
            bridge, "metriqo_bridge_sparkplug_births_total", rule="plant", type="NBIRTH"
        )
        assert nbirths == 3
        assert bridge.spool.file.dead_letters.count == 0
    assert {p["alias"] for p in b.published if p["metric"] == "Env/Temp"} == {1, 3}
    assert_exactly(delivered_points(api.store.points()), a.want | b.want)


async def test_data_before_birth_is_parked_until_the_birth(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, peers: list[TahuEdgeNode]
) -> None:
    """The node publishes DATA by alias before any BIRTH (as if the bridge had missed it):
    held back (parked, counted), then mapped by the BIRTH that follows."""
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings, RULE) as bridge:
        peer = await asyncio.to_thread(start_peer, peers, broker.port, "e1")
        await run(peer, "data", count=2)  # an NDATA and a DDATA each
        await wait_for(
            lambda: metric(bridge, "metriqo_bridge_sparkplug_parked_messages") == 4,
            what="DATA parked",
        )
        assert delivered_points(api.store.points()) == []
        await run(peer, "birth")
        await run(peer, "data")
        await wait_delivered(api, peer.want)
        await wait_for(
            lambda: metric(bridge, "metriqo_bridge_sparkplug_parked_messages") == 0,
            what="parked messages mapped",
        )
        assert bridge.spool.file.dead_letters.count == 0
    assert_exactly(delivered_points(api.store.points()), peer.want)


async def test_a_broker_restart_between_birth_and_data(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, peers: list[TahuEdgeNode]
) -> None:
    """The broker restarts (SIGTERM, its sessions saved); the node reconnects and re-births,
    as a sparkplug-client application does on its "birth" event, then sends DATA by alias."""
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings, RULE) as bridge:
        peer = await asyncio.to_thread(start_peer, peers, broker.port, "e1", qos=1)
        await run(peer, "birth")
        await run(peer, "data", count=2)
        await wait_delivered(api, peer.want)
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)
        await asyncio.to_thread(peer.wait_connected, 2)
        await run(peer, "birth")
        await run(peer, "data", count=2)
        await wait_delivered(api, peer.want)
        assert bridge.spool.file.dead_letters.count == 0
    assert_exactly(delivered_points(api.store.points()), peer.want)


async def test_the_bridge_killed_between_birth_and_data(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, peers: list[TahuEdgeNode]
) -> None:
    """kill -9 of the bridge after the BIRTHs; DATA by alias only at QoS 0 (sparkplug-client's)
    once it is back: the aliases come from its spool, not from a new BIRTH."""
    proc = BridgeProcess(broker.port, api.url, tmp_path / "bridge", RULE)
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        peer = await asyncio.to_thread(start_peer, peers, broker.port, "e1")
        await run(peer, "birth")
        await wait_delivered(api, peer.want)
        # Killed once the spool has recorded the API's answer: this is about the aliases, not
        # about a batch the API took just before the kill (test_crash_points covers those).
        await wait_for(lambda: proc.spool_points() == 0, what="the BIRTH's points sent")
        proc.kill()
        assert proc.proc is not None
        try:
            code = await asyncio.to_thread(proc.proc.wait, 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the bridge did not die:\n{proc.output()[-3000:]}")
        assert code == -signal.SIGKILL, proc.output()[-3000:]
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        await run(peer, "data", count=3)
        await wait_delivered(api, peer.want)
    finally:
        proc.close()
    # closing(): sqlite3's own 'with' ends the transaction but leaves the connection open
    # (Python 3.13+ warns when the collector finds it, in whichever test runs then).
    with contextlib.closing(sqlite3.connect(tmp_path / "bridge" / "spool.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0
    assert_exactly(delivered_points(api.store.points()), peer.want)


async def test_a_death_while_the_bridge_is_offline(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, peers: list[TahuEdgeNode]
) -> None:
    """The bridge stops; the node vanishes (no DISCONNECT), the broker publishes its Will
    NDEATH (QoS 1) into the bridge's persistent session; the bridge, back, takes it: the node
    and its device go offline (online = 0 once each), after their DATA."""
    rules = MAPPINGS % ", online_metric: online"
    proc = BridgeProcess(broker.port, api.url, tmp_path / "bridge", rules)
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        peer = await asyncio.to_thread(start_peer, peers, broker.port, "e1", qos=1, will_qos=1)
        await run(peer, "birth")
        await run(peer, "data", count=2)
        birth_ms = min(p["timestamp"] for p in peer.published)
        online = {(device, "online", birth_ms, 1) for device in ("e1", "e1-pump")}
        await wait_delivered(api, peer.want | online)
        assert await asyncio.to_thread(proc.terminate) == 0
        await run(peer, "vanish")
        proc.start()
        await asyncio.to_thread(proc.wait_ready)

        def offline() -> list[tuple[str, float]]:
            return sorted(
                (device, value)
                for device, name, _ts, value in delivered_points(api.store.points())
                if name == "online" and value == 0
            )

        await wait_for(lambda: len(offline()) >= 2, what="the NDEATH's online = 0")
    finally:
        proc.close()
    points = delivered_points(api.store.points())
    assert offline() == [("e1", 0), ("e1-pump", 0)]
    assert_exactly([p for p in points if p[1] != "online" or p[3] != 0], peer.want | online)
