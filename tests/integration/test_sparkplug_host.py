"""Sparkplug host mode against a real mosquitto and the local API: the retained STATE birth after
connecting, the death on a clean stop and through the Will when the bridge is killed with -9,
exactly one rate-limited `Node Control/Rebirth` NCMD for a burst of unknown aliases (decoded with
our decoder), the no-loss path unchanged, a broker ACL without publish rights (an error logged,
the bridge consuming on), and consumer mode publishing nothing at all."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.decode import decode_payload
from bridge.sparkplug.encode import REBIRTH, EdgeNode, Metric
from tests.support.guide import guide_block
from tests.support.harness import (
    BridgeProcess,
    delivered_points,
    make_settings,
    metric,
    publish,
    running_bridge,
)
from tests.support.oracle import assert_exactly, wait_committed, wait_delivered, wait_for
from tests.support.tls import password_file

MAPPINGS = """version: 1
rules:
  - name: plant
    topic: "spBv1.0/plant/#"
    payload: sparkplug
    device_id: "{node}-{device}"
    sparkplug: {node_device_id: "{node}", separator: _}
"""
HOST = "metriqo-test"
STATE = f"spBv1.0/STATE/{HOST}"
Point = tuple[str, str, int, float]


class Watcher:
    """A plain MQTT subscriber (its own clean session, QoS 1) that keeps everything it gets."""

    def __init__(self, port: int, filters: list[str], **login: str) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"watch-{time.monotonic_ns() % 10**9}"
        )
        if login:
            client.username_pw_set(login["username"], login["password"])
        client.on_message = self._on_message
        client.on_subscribe = lambda *_a: self._subscribed.set()
        client.on_connect = lambda c, *_a: c.subscribe([(f, 1) for f in filters])
        client.connect("127.0.0.1", port)
        client.loop_start()
        self._client = client
        assert self._subscribed.wait(10), "the watcher was not subscribed"

    def _on_message(self, _c: Any, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[tuple[bytes, bool]]:
        with self._lock:
            return [(p, r) for t, p, r in self.got if t == topic]

    def states(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p, _ in self.on(STATE)]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def node_messages(
    node: EdgeNode, data: int, start_ms: int
) -> tuple[list[Any], list[Any], set[Point]]:
    """(BIRTH, DATA by alias only, the points they make): the BIRTH is withheld by the caller
    so that the DATA comes with aliases the bridge does not know."""
    ts = start_ms
    births = [node.nbirth([Metric("Temp", DataType.FLOAT, 20.5)], ts)]
    want: set[Point] = {(node.node, "Temp", ts, 20.5)}
    datas = []
    for i in range(data):
        ts += 1000
        datas.append(node.ndata({"Temp": 21.0 + i}, ts))
        want.add((node.node, "Temp", ts, 21.0 + i))
    return births, datas, want


def host_settings(broker: LocalBroker, api: LocalApi, tmp_path: Path, **extra: str) -> Any:
    return make_settings(
        broker.port, api.url, tmp_path / "spool.db", **{"sparkplug.host_id": HOST, **extra}
    )


async def test_host_mode_state_birth_one_rebirth_for_a_burst_and_death_on_stop(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Birth retained after connecting (a later subscriber gets it with online=true); five DATA
    messages with unknown aliases make one NCMD to their node (decoded: Node Control/Rebirth =
    true), the other four held back by the limit; the BIRTH then maps the parked DATA, every
    value once; a clean stop publishes the death with the birth's timestamp."""
    start = int(time.time() * 1000) - 600_000
    node = EdgeNode("plant", "n1")
    births, datas, want = node_messages(node, 5, start)
    commands = Watcher(broker.port, ["spBv1.0/+/NCMD/+", STATE])
    try:
        async with running_bridge(host_settings(broker, api, tmp_path), MAPPINGS) as bridge:
            later = Watcher(broker.port, [STATE])  # subscribes after the birth: the retained one
            try:
                await wait_for(lambda: bool(later.on(STATE)), what="the retained STATE birth")
                [(payload, retained)] = later.on(STATE)
            finally:
                later.close()
            birth = json.loads(payload)
            assert retained
            assert birth["online"] is True
            assert isinstance(birth["timestamp"], int)

            await publish(broker.port, datas)
            # (Not a commit count: the rule's filter also brings the bridge's own NCMD back,
            # counted as ignored.)
            await wait_for(
                lambda: metric(bridge, "metriqo_bridge_sparkplug_parked_messages") == len(datas),
                what="the DATA parked",
            )
            sent = "metriqo_bridge_sparkplug_rebirth_requests_total"
            held = "metriqo_bridge_sparkplug_rebirth_requests_held_total"
            assert metric(bridge, sent, reason="unknown_alias") == 1
            assert metric(bridge, held, why="limited") == len(datas) - 1
            await wait_for(lambda: bool(commands.on("spBv1.0/plant/NCMD/n1")), what="the NCMD")

            await publish(broker.port, births, client_id="pub-2")
            await wait_delivered(api, want)
        await wait_for(lambda: len(commands.states()) == 2, what="the STATE death on stop")
        assert commands.states() == [birth, {"online": False, "timestamp": birth["timestamp"]}]
        # The death came after the bridge's every NCMD on the same connection: all are here.
        [(ncmd, _)] = commands.on("spBv1.0/plant/NCMD/n1")
        assert [c for c, _, _ in commands.got if "/NCMD/" in c] == ["spBv1.0/plant/NCMD/n1"]
    finally:
        commands.close()
    rebirth = decode_payload(ncmd).metrics
    assert [(m.name, m.datatype, m.value) for m in rebirth] == [
        (REBIRTH, DataType.BOOLEAN, ("boolean_value", True))
    ]
    after = Watcher(broker.port, [STATE])
    try:
        await wait_for(lambda: bool(after.on(STATE)), what="the retained STATE death")
        assert after.on(STATE)[0][1]  # retained
        assert json.loads(after.on(STATE)[0][0]) == {
            "online": False,
            "timestamp": birth["timestamp"],
        }
    finally:
        after.close()
    assert_exactly(delivered_points(api.store.points()), want)


async def test_the_broker_publishes_the_death_will_when_the_bridge_is_killed(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """kill -9: no DISCONNECT, so the broker publishes the Will, the STATE death with the
    timestamp of the birth before it."""
    watcher = Watcher(broker.port, [STATE])
    proc = BridgeProcess(
        broker.port, api.url, tmp_path / "bridge", MAPPINGS, **{"sparkplug.host_id": HOST}
    )
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        await wait_for(lambda: len(watcher.states()) == 1, what="the STATE birth")
        proc.kill()
        await wait_for(lambda: len(watcher.states()) == 2, what="the Will")
    finally:
        proc.close()
        watcher.close()
    birth, death = watcher.states()
    assert birth["online"] is True
    assert death == {"online": False, "timestamp": birth["timestamp"]}


async def test_consumer_mode_publishes_nothing(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """The default: DATA with unknown aliases parks without a rebirth request, no STATE: a
    subscriber on # sees only what the test published."""
    node = EdgeNode("plant", "n1")
    births, datas, want = node_messages(node, 3, int(time.time() * 1000) - 600_000)
    everything = Watcher(broker.port, ["#"])
    try:
        settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
        async with running_bridge(settings, MAPPINGS) as bridge:
            await publish(broker.port, datas)
            await wait_committed(bridge, len(datas))
            await publish(broker.port, births, client_id="pub-2")
            await wait_delivered(api, want)
            assert metric(bridge, "metriqo_bridge_sparkplug_parked_total", rule="plant") == 3
        published = [t for t, _ in datas + births]
        await wait_for(lambda: len(everything.got) >= len(published), what="the test's messages")
    finally:
        everything.close()
    assert [t for t, _, _ in everything.got] == published
    assert_exactly(delivered_points(api.store.points()), want)


async def test_host_mode_without_publish_rights_logs_and_keeps_consuming(
    api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The shipped ACL's stance (the bridge reads, never writes): the broker refuses the
    STATE birth (v5 PUBACK 0x87, and mosquitto 2.0 drops the connection); the bridge says so
    once with what to allow, turns the host mode off, reconnects and delivers on."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    pw = password_file(workdir / "pw", {"bridge": "bridge-pw", "edge": "edge-pw"})
    acl = workdir / "acl"
    acl.write_text("user bridge\ntopic read #\n\nuser edge\ntopic readwrite spBv1.0/#\n")
    # Anonymous logins stay allowed (the readiness probe), with no topic in the ACL.
    extra = f"password_file {pw}\nacl_file {acl}\n"
    node = EdgeNode("plant", "n1")
    births, datas, want = node_messages(node, 3, int(time.time() * 1000) - 600_000)
    with LocalBroker(workdir=workdir, extra_config=extra) as broker:
        settings = host_settings(broker, api, tmp_path, **{"mqtt.username": "bridge"})
        with caplog.at_level(logging.ERROR, logger="bridge.mqtt.host"):
            async with running_bridge(settings, MAPPINGS, password="bridge-pw") as bridge:
                await wait_for(
                    lambda: "refused the Sparkplug host's STATE" in caplog.text,
                    what="the refusal logged",
                )
                login = {"username": "edge", "password": "edge-pw"}
                await publish(broker.port, births + datas, **login)
                await wait_delivered(api, want)
                assert bridge.source is not None
                assert bridge.source.state.connected
    assert caplog.text.count("refused the Sparkplug host's STATE") == 1
    assert "spBv1.0/+/NCMD/+" in caplog.text
    assert_exactly(delivered_points(api.store.points()), want)


async def test_the_guides_acl_lets_host_mode_publish(api: LocalApi, tmp_path: Path) -> None:
    """The ACL lines the guide gives for host mode (host id metriqo-bridge): the birth goes out
    retained, and a rebirth request reaches the edge node's command topic."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    pw = password_file(workdir / "pw", {"metriqo-bridge": "bridge-pw", "edge": "edge-pw"})
    acl = workdir / "acl"
    acl.write_text(
        guide_block("sparkplug.md", "text", "topic write spBv1.0/STATE/")
        + "\nuser edge\ntopic readwrite spBv1.0/#\n"
    )
    node = EdgeNode("plant", "n1")
    _births, datas, _want = node_messages(node, 1, int(time.time() * 1000) - 600_000)
    login = {"username": "edge", "password": "edge-pw"}
    with LocalBroker(
        workdir=workdir, extra_config=f"password_file {pw}\nacl_file {acl}\n"
    ) as broker:
        state = "spBv1.0/STATE/metriqo-bridge"
        watcher = Watcher(broker.port, [state, "spBv1.0/+/NCMD/+"], **login)
        settings = make_settings(
            broker.port,
            api.url,
            tmp_path / "spool.db",
            **{"sparkplug.host_id": "metriqo-bridge", "mqtt.username": "metriqo-bridge"},
        )
        try:
            async with running_bridge(settings, MAPPINGS, password="bridge-pw"):
                await wait_for(lambda: bool(watcher.on(state)), what="the STATE birth")
                await publish(broker.port, datas, **login)
                await wait_for(
                    lambda: bool(watcher.on("spBv1.0/plant/NCMD/n1")), what="the rebirth request"
                )
        finally:
            watcher.close()
        assert json.loads(watcher.on(state)[0][0])["online"] is True


async def test_a_seq_gap_asks_the_node_for_a_rebirth(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A node whose BIRTH the bridge has: two of its messages lost on the way (a seq gap) make
    one rebirth request with reason seq_gap; its values are all delivered."""
    node = EdgeNode("plant", "n1")
    births, datas, want = node_messages(node, 3, int(time.time() * 1000) - 600_000)
    node.seq += 2  # two messages lost between the node and the broker
    ts = int(time.time() * 1000) - 500_000
    datas.append(node.ndata({"Temp": 30.0}, ts))
    want.add(("n1", "Temp", ts, 30.0))
    commands = Watcher(broker.port, ["spBv1.0/+/NCMD/+"])
    try:
        async with running_bridge(host_settings(broker, api, tmp_path), MAPPINGS) as bridge:
            await publish(broker.port, births + datas)
            await wait_delivered(api, want)
            sent = "metriqo_bridge_sparkplug_rebirth_requests_total"
            assert metric(bridge, sent, reason="seq_gap") == 1
            assert metric(bridge, sent, reason="unknown_alias") == 0
            await wait_for(lambda: bool(commands.on("spBv1.0/plant/NCMD/n1")), what="the NCMD")
    finally:
        commands.close()
    assert_exactly(delivered_points(api.store.points()), want)
