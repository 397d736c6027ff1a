"""The demo's simulated fleet covers every rule of the shipped mapping, and the read-back check
judges coalesced and receive-stamped series correctly."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime

from bridge.lab.demo_check import (
    Verification,
    compare_series,
    held_back,
    lowest_count,
    sent_points,
    windows,
)
from bridge.lab.examples import EXAMPLE_MAPPING
from bridge.lab.fleet import SensorFleet
from bridge.lab.fleet_devices import Device, ExpectedPoint
from bridge.mapping.loader import load_mappings, load_mappings_text
from bridge.models import Coalesce, Deadband

NOW_S = 1_795_681_920.0  # 2026-11-26T08:32:00Z


def _fleet(devices: int | None = None) -> SensorFleet:
    """A fleet of the shipped rules; by default one device per rule."""
    rules = load_mappings(EXAMPLE_MAPPING)
    count = len(rules) if devices is None else devices
    return SensorFleet("127.0.0.1", 1883, count, 100.0, rules=rules, clock=lambda: NOW_S)


def test_every_shipped_rule_gets_a_device() -> None:
    """With one device per rule, every rule of topic-mappings.yaml is simulated, none skipped."""
    fleet = _fleet()
    names = [rule.name for rule in load_mappings(EXAMPLE_MAPPING)]
    assert fleet.skipped_rules == {}
    assert sorted(device.rule.name for device in fleet.devices) == sorted(names)


def test_messages_of_every_shape_map_to_the_points_the_demo_expects() -> None:
    """Booleans, value-mapped words, readings, collect, each, payload device ids and local
    times all map without failures; ignore rules yield nothing; point ids never repeat."""
    fleet = _fleet()
    by_rule: dict[str, list[ExpectedPoint]] = defaultdict(list)
    ignored = 0
    for _ in range(30 * len(fleet.devices)):  # 30 per device, all at one instant of the clock
        message = fleet._next_message()
        rule = next(d.rule for d in fleet.devices if message.topic in d.topics())
        ignored += message.ignored
        assert not (message.ignored and message.points)
        by_rule[rule.name].extend(message.points)
    assert ignored == 30
    assert {p.value for p in by_rule["relay-state"]} <= {0.0, 1.0}
    assert {p.value for p in by_rule["machine-status"]} <= {0.0, 0.5, 1.0}
    assert {p.device_id for p in by_rule["machine-status"]} == {"PRESS-6"}
    # Each tag names its device and metric (readings.device, readings.metric; rename after).
    assert {p.metric for p in by_rule["tag-gateway"]} == {"temp_c", "bar"}
    assert {p.device_id for p in by_rule["tag-gateway"]} == {"gateway7-line1-press01"}
    assert {p.metric for p in by_rule["hall-climate"]} == {
        "pressure_bar",
        "status_fan.rpm",
        "status_filter_pct",
    }
    assert all(0.5 <= p.value <= 1.5 for p in by_rule["hall-climate"] if p.metric == "pressure_bar")
    assert {p.device_id for p in by_rule["valve-gateway"]} == {"gateway9-unit-1", "gateway9-unit-2"}
    # The collect prefix is a template over the topic: the simulated level is in the name.
    assert {p.metric for p in by_rule["telegraf"]} == {
        "measurement11_fan_rpm",
        "measurement11_filter_pct",
    }
    # Plain numbers printed with a decimal comma and a unit (number_format) are read back.
    assert by_rule["hmi-values"]
    assert all(0 <= p.value <= 100 for p in by_rule["hmi-values"])
    vibration = by_rule["vibration"]
    assert all(p.coalesce == Coalesce(1_000_000, "avg") for p in vibration)
    assert len({p.value for p in vibration}) == 1  # constant: any window averages to it
    stamped = [p for points in by_rule.values() for p in points if p.timestamp_us is not None]
    ids = [(p.device_id, p.metric, p.timestamp_us) for p in stamped]
    assert len(ids) == len(set(ids))  # the local-time rule steps whole seconds
    hall_times = sorted({p.timestamp_us or 0 for p in by_rule["hall-climate"]})
    assert hall_times[0] == 1_795_681_920_000_000
    assert len(hall_times) == 30


def test_a_sparkplug_rule_is_an_edge_node_whose_births_go_first() -> None:
    """The Sparkplug rule's device is an edge node (our encoder): its NBIRTH and DBIRTHs go
    first, then DATA by alias only, which the fleet's mapper names from those BIRTHs; two
    devices of the rule are two edge nodes."""
    rules = [r for r in load_mappings(EXAMPLE_MAPPING) if r.sparkplug is not None]
    fleet = SensorFleet("127.0.0.1", 1883, 2, 100.0, rules=rules, clock=lambda: NOW_S)
    assert [d.device_id for d in fleet.devices] == [
        "edge1, edge1-press, edge1-oven",
        "edge2, edge2-press, edge2-oven",
    ]
    messages = [fleet._next_message() for _ in range(2 * 9)]
    kinds = [m.topic.split("/")[2] for m in messages if "/edge1" in m.topic]
    assert kinds == ["NBIRTH", "DBIRTH", "DBIRTH", *(["NDATA", "DDATA", "DDATA"] * 2)]
    data = [p for m in messages if "DATA" in m.topic for p in m.points]
    assert {(p.device_id, p.metric) for p in data} == {
        (node + device, metric)
        for node in ("edge1", "edge2")
        for device, metric in [
            ("", "Supply_Voltage"),
            ("-press", "Temp"),
            ("-oven", "Temp"),
            ("-press", "Motor_Speed"),
            ("-oven", "Motor_Speed"),
        ]
    }
    assert all(p.timestamp_us is not None for p in data)


def test_a_payload_builder_can_be_given_per_rule() -> None:
    """A rule the generic builders cannot guess is published with the builder named for it,
    and its points still come from the mapper."""
    rules = load_mappings_text(
        "version: 1\nrules:\n"
        "  - {name: odd, topic: 'x/{d}/y', device_id: '{d}', metrics: {v: a.b.c}}\n"
    )

    def build(device: Device, rng: random.Random, ts_ms: int) -> bytes:
        return b'{"a": {"b": {"c": 7}}}'

    fleet = SensorFleet("127.0.0.1", 1883, 1, 1.0, rules=rules, payloads={"odd": build})
    message = fleet._next_message()
    assert message.payload == b'{"a": {"b": {"c": 7}}}'
    assert [(p.device_id, p.metric, p.value) for p in message.points] == [("d1", "v", 7.0)]


def _row(t_us: int, value: float) -> dict[str, object]:
    t = datetime.fromtimestamp(t_us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")
    return {"t": t, "avg": value}


def test_coalesced_points_with_payload_times_are_expected_per_window() -> None:
    """Points with payload times fold into one point per epoch-aligned window, at its start."""
    c = Coalesce(1_000_000, "avg")
    base = 1_795_681_920_000_000
    points = [
        ExpectedPoint("d", "m", base + 100_000, 1.0, c),
        ExpectedPoint("d", "m", base + 900_000, 2.0, c),
        ExpectedPoint("d", "m", base + 1_200_000, 5.0, c),
    ]
    assert [(p.timestamp_us, p.value) for p in windows(points)] == [
        (base, 1.5),
        (base + 1_000_000, 5.0),
    ]
    assert lowest_count(points) == 2
    good = Verification()
    compare_series(points, [_row(base, 1.5), _row(base + 1_000_000, 5.0)], good)
    assert good.problems() == []
    bad = Verification()
    compare_series(points, [_row(base, 1.0)], bad)
    assert bad.missing == 2
    assert bad.unexpected == 1


def test_receive_stamped_coalesced_series_are_checked_by_their_constant() -> None:
    """Windows of a receive-stamped series each carry the constant published; a wrong value,
    a repeated window or no point at all is reported."""
    c = Coalesce(1_000_000, "avg")
    points = [ExpectedPoint("d", "m", None, 2.25, c) for _ in range(20)]
    base = 1_795_681_920_000_000
    ok = Verification()
    compare_series(points, [_row(base, 2.25), _row(base + 1_000_000, 2.25)], ok)
    assert ok.problems() == []
    wrong = Verification()
    compare_series(points, [_row(base, 2.25), _row(base + 1_000_000, 3.0)], wrong)
    assert wrong.unexpected == 1
    twice = Verification()
    compare_series(points, [_row(base, 2.25), _row(base, 2.25)], twice)
    assert twice.duplicated == 1
    none = Verification()
    compare_series(points, [], none)
    assert none.missing == 1


def test_deadband_series_expect_only_the_points_the_spool_sends() -> None:
    """The demo predicts the deadband's decisions: a value within the band of the last sent
    one is held back (and must not arrive), a heartbeat's worth of time later it is sent."""
    band = Deadband("absolute", 5.0, 600_000_000)
    base = 1_795_681_920_000_000
    values = [100.0, 102.0, 106.0, 104.0, 101.0, 101.0]
    points = [
        ExpectedPoint("d", "rpm", base + i * 1_000_000, v, None, band) for i, v in enumerate(values)
    ]
    points.append(ExpectedPoint("d", "rpm", base + 700_000_000, 101.0, None, band))  # heartbeat
    sent = [(p.timestamp_us, p.value) for p in sent_points(points)]
    # 102 and 104 are within 5 of the value sent before them, 101 exactly 5 from 106.
    assert sent == [(base, 100.0), (base + 2_000_000, 106.0), (base + 700_000_000, 101.0)]
    assert held_back(points) == 4
    assert lowest_count(points) == 3
    good = Verification()
    compare_series(points, [_row(t, v) for t, v in sent if t is not None], good)
    assert good.problems() == []
    every = Verification()  # a bridge that ignored the deadband
    compare_series(points, [_row(t, p.value) for p in points if (t := p.timestamp_us)], every)
    assert every.problems() != []


def test_the_shipped_deadband_rules_are_simulated_with_their_bands() -> None:
    fleet = _fleet()
    points = [p for _ in range(40 * len(fleet.devices)) for p in fleet._next_message().points]
    banded = {(p.device_id, p.metric) for p in points if p.deadband is not None}
    assert {m for _d, m in banded} == {"spindle_rpm", "power_on"}
    assert held_back(points) > 0


def test_a_rule_collecting_the_whole_message_is_simulated() -> None:
    """collect: {path: ""} (every top-level number, as the recipes write it) gets a payload of
    top-level fields instead of stopping the fleet."""
    rules = load_mappings_text(
        "version: 1\nrules:\n"
        "  - {name: all, topic: 'x/{d}', device_id: '{d}', collect: {path: ''}}\n"
    )
    fleet = SensorFleet("127.0.0.1", 1883, 1, 1.0, rules=rules, clock=lambda: NOW_S)
    assert fleet.skipped_rules == {}
    message = fleet._next_message()
    assert {p.metric for p in message.points} == {"fan.rpm", "filter_pct"}


def test_a_linear_map_with_a_range_is_simulated_inside_it() -> None:
    """The fleet runs a linear map backwards to pick raw values whose result stays in range;
    an expr with a range cannot be run backwards, so its rule is skipped with the reason."""
    rules = load_mappings_text(
        "version: 1\nrules:\n"
        "  - {name: tx, topic: 'tx/{d}', device_id: '{d}', metrics: {p: {path: ma,"
        " linear: {from: [4, 20], to: [0, 10]}, range: [0, 10]}}}\n"
        "  - {name: gauge, topic: 'g/{d}', device_id: '{d}', payload: number, metric: lvl,"
        " transform: {linear: {from: [20, 4], to: [0, 100]}, range: [0, 100]}}\n"
        "  - {name: ex, topic: 'ex/{d}', device_id: '{d}', metrics: {t: {path: f,"
        " expr: '(x - 32) * 5 / 9', range: [0, 100]}}}\n"
    )
    fleet = SensorFleet("127.0.0.1", 1883, 2, 1.0, rules=rules, clock=lambda: NOW_S)
    assert fleet.skipped_rules == {
        "ex": "an expr with a range (no raw value can be picked inside it)"
    }
    points = [p for _ in range(200) for p in fleet._next_message().points]
    assert {p.metric for p in points} == {"p", "lvl"}
    assert all(0 <= p.value <= 10 for p in points if p.metric == "p")
    assert all(0 <= p.value <= 100 for p in points if p.metric == "lvl")
