"""Sparkplug B edge nodes of the simulated fleet: a ``payload: sparkplug`` rule's device is an
edge node (bridge.sparkplug.encode.EdgeNode, our encoder) with metrics of its own and a few
devices. It publishes its NBIRTH and DBIRTHs first (names, aliases, datatypes), then DATA by
alias only, one message per call, on the topic each message type has. The points the bridge
must deliver are taken from the real mapper, which keeps the alias tables as the bridge does,
so the fleet maps each message in the order it publishes them. Pure: randomness is a seeded
generator passed in.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from bridge.lab.fleet_devices import Device
from bridge.lab.fleet_shapes import expected
from bridge.mapping.mapper import Mapper, Rule
from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.encode import EdgeNode, Metric

NAMESPACE = "spBv1.0"
DEFAULT_GROUP = "demo"
# (name, datatype) of the node's own metrics and of each device's; the values are multiples of
# 1/4 (exact as a Float) or whole (Int32), so what the API returns compares with ==.
NODE_METRICS = (("Supply/Voltage", DataType.DOUBLE),)
DEVICE_METRICS = (("Temp", DataType.FLOAT), ("Motor/Speed", DataType.INT32))
DEVICES = ("press", "oven")


def group_of(rule: Rule) -> str:
    """The group the rule's topic names (a literal second level), else the demo's."""
    levels = rule.topic.levels
    if len(levels) > 1 and levels[0] == NAMESPACE and levels[1] is not None:
        return levels[1]
    return DEFAULT_GROUP


def sparkplug_device(rule: Rule, rank: int, rng: random.Random, now_ms: int) -> Device:
    """The fleet's device for a Sparkplug rule: edge node ``edge<rank + 1>``, its device ids
    what its BIRTHs map to (through a mapper of its own: the fleet's keeps the alias tables of
    what it really publishes)."""
    node = SparkplugNode(rule, rank)
    device = Device(rule, {}, rng, shaped=True, topic=node.topics()[0])
    device.sparkplug = node
    probe, mapper = SparkplugNode(rule, rank), Mapper([rule])
    ids: list[str] = []
    for _ in range(1 + len(DEVICES)):  # the NBIRTH and each DBIRTH
        topic, payload = probe.next_message(random.Random(0), now_ms)  # noqa: S311  # a probe
        ids += [p.device_id for p in expected(mapper, rule, topic, payload, now_ms * 1000)]
    device.device_id = ", ".join(dict.fromkeys(ids))
    return device


class SparkplugNode:
    """One edge node: BIRTHs first, then DATA of the node and each device in turn."""

    def __init__(self, rule: Rule, index: int) -> None:
        self.edge = EdgeNode(group_of(rule), f"edge{index + 1}")
        self._born = False
        self._turn = 0
        self._pending: list[Callable[[random.Random, int], tuple[str, bytes]]] = []

    def topics(self) -> list[str]:
        """Every topic this node publishes on."""
        node = self.edge
        out = [f"{NAMESPACE}/{node.group}/{kind}/{node.node}" for kind in ("NBIRTH", "NDATA")]
        for device in DEVICES:
            for kind in ("DBIRTH", "DDATA"):
                out.append(f"{NAMESPACE}/{node.group}/{kind}/{node.node}/{device}")
        return out

    def next_message(self, rng: random.Random, ts_ms: int) -> tuple[str, bytes]:
        """The next message: the node's BIRTHs (one a call) until all went, then DATA."""
        if not self._born:
            self._born = True
            self._pending = [self._nbirth] + [self._dbirth(d) for d in DEVICES]
        if self._pending:
            return self._pending.pop(0)(rng, ts_ms)
        owner = (None, *DEVICES)[self._turn % (1 + len(DEVICES))]
        self._turn += 1
        if owner is None:
            return self.edge.ndata(_values(NODE_METRICS, rng), ts_ms)
        return self.edge.ddata(owner, _values(DEVICE_METRICS, rng), ts_ms)

    def _nbirth(self, rng: random.Random, ts_ms: int) -> tuple[str, bytes]:
        return self.edge.nbirth(_metrics(NODE_METRICS, rng), ts_ms)

    def _dbirth(self, device: str) -> Callable[[random.Random, int], tuple[str, bytes]]:
        def birth(rng: random.Random, ts_ms: int) -> tuple[str, bytes]:
            return self.edge.dbirth(device, _metrics(DEVICE_METRICS, rng), ts_ms)

        return birth


def _value(datatype: int, rng: random.Random) -> float | int:
    if datatype == DataType.INT32:
        return rng.randint(900, 1600)
    return round(rng.uniform(18.0, 240.0) * 4) / 4


def _values(spec: tuple[tuple[str, int], ...], rng: random.Random) -> dict[str, float | int]:
    return {name: _value(datatype, rng) for name, datatype in spec}


def _metrics(spec: tuple[tuple[str, int], ...], rng: random.Random) -> list[Metric]:
    return [Metric(name, datatype, _value(datatype, rng)) for name, datatype in spec]
