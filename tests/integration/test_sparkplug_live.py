"""Sparkplug B end to end: an edge node (our encoder, bridge/sparkplug/encode.py) publishes to a
real mosquitto, the bridge maps through its alias tables into the real spool, the local API
receives. The no-loss oracle: every numeric value published arrives exactly once, named by its
BIRTH, through DATA sent by alias only, a rebirth with new aliases, and a kill -9 of the
bridge between a BIRTH and its DATA (both after the BIRTH's commit and before it)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from bridge.failpoints import ENV_VAR
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.encode import EdgeNode, Metric
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
  - name: plant
    topic: "spBv1.0/plant/#"
    payload: sparkplug
    device_id: "{node}-{device}"
    sparkplug: {node_device_id: "{node}", separator: _}
"""
Message = tuple[str, bytes]


class Node:
    """An edge node, its messages, and the points each one should become."""

    def __init__(self, name: str, start_ms: int) -> None:
        self.edge = EdgeNode("plant", name)
        self.name = name
        self.ms = start_ms
        self.want: set[Point] = set()

    def _tick(self) -> int:
        self.ms += 1000
        return self.ms

    def birth(self, temp: float, level: int) -> list[Message]:
        ts = self._tick()
        self.want |= {(self.name, "Env_Temp", ts, temp), (f"{self.name}-pump", "Level", ts, level)}
        return [
            self.edge.nbirth([Metric("Env/Temp", DataType.FLOAT, temp)], ts),
            self.edge.dbirth("pump", [Metric("Level", DataType.INT16, level)], ts),
        ]

    def data(self, temp: float, level: int) -> list[Message]:
        ts = self._tick()
        self.want |= {(self.name, "Env_Temp", ts, temp), (f"{self.name}-pump", "Level", ts, level)}
        return [
            self.edge.ndata({"Env/Temp": temp}, ts),  # aliases only, no datatype
            self.edge.ddata("pump", {"Level": level}, ts),
        ]


def start_ms() -> int:
    return int(time.time() * 1000) - 600_000


async def test_births_then_data_by_alias_and_a_rebirth_with_new_aliases(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Two nodes; DATA by alias only (a negative Int16 read as the BIRTH says), with a seq gap
    of node b counted; then node a re-births with its aliases given out in another order:
    every value arrives once, under its own name."""
    a, b = Node("a", start_ms()), Node("b", start_ms())
    messages = a.birth(20.5, -3) + b.birth(30.0, 7)
    for i in range(5):
        if i == 3:
            b.edge.seq += 2  # two of b's messages lost on the way: one gap
        messages += a.data(21.0 + i, -4 - i) + b.data(31.0 + i, 8 + i)
    a.edge.new_session()
    a.edge.aliases[(None, "Other")] = (1, DataType.DOUBLE)  # alias 1 taken: Env/Temp gets another
    messages += a.birth(25.5, 100)
    a.edge.aliases.pop((None, "Other"))
    messages += a.data(26.0, 101)
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings, MAPPINGS) as bridge:
        await publish(broker.port, messages)
        await wait_committed(bridge, len(messages))
        await wait_delivered(api, a.want | b.want)
        assert (
            metric(bridge, "metriqo_bridge_sparkplug_births_total", rule="plant", type="NBIRTH")
            == 3
        )
        assert bridge.spool.file.dead_letters.count == 0
        gaps = metric(
            bridge, "metriqo_bridge_sparkplug_session_events_total", rule="plant", event="seq_gap"
        )
        assert gaps == 1
    assert_exactly(delivered_points(api.store.points()), a.want | b.want)


@pytest.mark.parametrize(
    "failpoint",
    [None, "after_receive_before_commit:crash@1"],
    ids=["killed-after-the-birth-commit", "killed-before-the-birth-commit"],
)
async def test_a_kill_between_birth_and_data_loses_no_alias(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, failpoint: str | None
) -> None:
    """kill -9 of the bridge after the BIRTHs (committed, or received and not yet committed);
    the DATA by alias only is published while it is down; the restarted bridge resolves it
    with the tables from its spool or from the redelivered BIRTHs. Nothing lost, nothing
    dead-lettered, nothing twice."""
    node = Node("n", start_ms())
    births, data = node.birth(20.5, -3), []
    born = set(node.want)
    for i in range(5):
        data += node.data(21.0 + i, -4 - i)
    proc = BridgeProcess(broker.port, api.url, tmp_path / "bridge", MAPPINGS)
    try:
        proc.start({ENV_VAR: failpoint} if failpoint else None)
        await asyncio.to_thread(proc.wait_ready)
        await publish(broker.port, births)
        assert proc.proc is not None
        if failpoint is None:
            await wait_delivered(api, born)
            # Killed once the spool has recorded the API's answer: a batch the API took just
            # before the kill is sent again (at-least-once, test_crash_points covers it), which
            # is not what this test is about (it failed so, once in 10 runs under load).
            await wait_for(lambda: proc.spool_points() == 0, what="the BIRTH's points settled")
            proc.kill()
        try:
            code = await asyncio.to_thread(proc.proc.wait, 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the bridge did not die:\n{proc.output()[-3000:]}")
        assert code == -signal.SIGKILL, proc.output()[-3000:]
        await publish(broker.port, data, client_id="pub-2")  # queued in the bridge's session
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        await wait_delivered(api, node.want)
    finally:
        proc.close()
    # closing(): sqlite3's own 'with' ends the transaction but leaves the connection open
    # (Python 3.13+ warns when the collector finds it, in whichever test runs then).
    with contextlib.closing(sqlite3.connect(tmp_path / "bridge" / "spool.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0
    assert_exactly(delivered_points(api.store.points()), node.want)


async def test_data_before_birth_waits_and_then_delivers_also_across_a_kill(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """The node was up before the bridge: its DATA by alias comes first, is parked (committed
    and acknowledged), the bridge is killed with -9 and restarted, and the node's (re)BIRTH
    maps it: every value arrives once, the parked gauge goes back to 0, nothing is
    dead-lettered."""
    node = Node("n", start_ms())
    births = node.birth(20.5, -3)  # given out, but never reaches the bridge
    del births
    node.want.clear()
    early: list[Message] = []
    for i in range(3):
        early += node.data(21.0 + i, -4 - i)
    late_births = node.birth(25.0, 9)  # same aliases, say after a Node Control/Rebirth
    proc = BridgeProcess(broker.port, api.url, tmp_path / "bridge", MAPPINGS)
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        await publish(broker.port, early)
        await wait_for(
            lambda: proc.metric("metriqo_bridge_sparkplug_parked_messages") == len(early),
            what="DATA parked",
        )
        assert delivered_points(api.store.points()) == []
        proc.kill()
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        assert proc.metric("metriqo_bridge_sparkplug_parked_messages") == len(early)
        await publish(broker.port, late_births, client_id="pub-2")
        await wait_delivered(api, node.want)
        await wait_for(
            lambda: proc.metric("metriqo_bridge_sparkplug_parked_messages") == 0,
            what="parked messages mapped",
        )
    finally:
        proc.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "bridge" / "spool.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM sparkplug_parked").fetchone()[0] == 0
    assert_exactly(delivered_points(api.store.points()), node.want)
