"""The demo's recipes: the shipped mapping plus Tasmota and Zigbee2MQTT make one mapping file
without rule-order warnings, and the fleet publishes real-shaped payloads on the recipes' own
test topics."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import orjson

from bridge.lab.demo_recipes import DEMO_RECIPES, SampleBuilder, combine
from bridge.lab.examples import EXAMPLE_MAPPING
from bridge.lab.fleet import SensorFleet
from bridge.lab.fleet_devices import Device, ExpectedPoint
from bridge.mapping.loader import load_mappings
from bridge.mapping.overlap import rule_warnings
from bridge.mapping.topics import TopicRouter
from bridge.recipes import recipe

NOW_S = 1_795_681_920.0  # 2026-11-26T08:32:00Z


def test_the_shipped_mapping_and_both_recipes_combine_without_warnings(tmp_path: Path) -> None:
    """Every shipped and recipe rule is in the combined file, which check would not warn
    about; Tasmota's rules sit above the shipped tele/{device}/{metric} that would shadow them."""
    combined = combine(EXAMPLE_MAPPING, tmp_path / "combined.yaml")
    shipped = [r.name for r in load_mappings(EXAMPLE_MAPPING)]
    names = [r.name for r in combined.rules]
    assert [r.name for r in combined.recipes] == list(DEMO_RECIPES)
    assert combined.left_out == {}
    assert [n for n in names if n in shipped] == shipped  # the file's own order is kept
    assert len(names) == len(shipped) + len(combined.recipe_rules)
    assert rule_warnings(combined.rules) == []
    assert names.index("tasmota-sensor") < names.index("plain-sensors")
    assert [r.name for r in load_mappings(combined.path)] == names


def test_recipe_topics_route_to_their_rule_and_failing_samples_are_left_out(
    tmp_path: Path,
) -> None:
    """The topics given to the fleet are the recipes' test topics that reach each rule in the
    combined file: stat/.../POWER stays with the shipped relay-state, the null samples go."""
    combined = combine(EXAMPLE_MAPPING, tmp_path / "combined.yaml")
    router = TopicRouter([r.topic for r in combined.rules])
    for rule_name, topics in combined.topics.items():
        for topic in topics:
            routed = router.route(topic)
            assert routed is not None
            assert combined.rules[routed[0]].name == rule_name
    assert combined.topics["tasmota-power"] == ("stat/tasmota_4CH/POWER2",)
    assert "zigbee2mqtt/new_sensor" not in combined.topics["zigbee2mqtt-device"]
    assert set(combined.payloads) == set(combined.topics)


def test_a_recipe_whose_rule_names_are_partly_taken_is_left_out(tmp_path: Path) -> None:
    """A file rule named like one of a recipe's (but not holding the recipe) keeps its name:
    the recipe stays out, and the demo says why."""
    base = tmp_path / "base.yaml"
    base.write_text(
        "version: 1\nrules:\n"
        "  - {name: tasmota-sensor, topic: 'meters/{d}', device_id: '{d}',"
        " payload: number, metric: v}\n",
        encoding="utf-8",
    )
    combined = combine(base, tmp_path / "combined.yaml")
    assert [r.name for r in combined.recipes] == ["zigbee2mqtt"]
    assert "tasmota-sensor" in combined.left_out["tasmota"]
    assert "tasmota left out" in "\n".join(combined.describe())
    assert rule_warnings(combined.rules) == []


def test_a_recipe_that_would_leave_a_warning_is_left_out(tmp_path: Path) -> None:
    """A recipe rule that only partly overlaps a file rule cannot be ordered by moving it (either
    way some topics change hands): the recipe stays out, with the warning as the reason."""
    base = tmp_path / "base.yaml"
    base.write_text(
        "version: 1\nrules:\n"
        "  - {name: halls, topic: '{site}/hall_climate', device_id: x,"
        " payload: number, metric: v}\n",
        encoding="utf-8",
    )
    combined = combine(base, tmp_path / "combined.yaml", ("zigbee2mqtt",))
    assert combined.recipes == []
    assert "overlaps rules[0] (halls)" in combined.left_out["zigbee2mqtt"]
    assert [r.name for r in combined.rules] == ["halls"]


def test_sample_payloads_keep_their_shape_and_move_their_numbers() -> None:
    """Integers stay integers, decimals keep their places, text and booleans stay as they were,
    and words (ON, Online) are published as they are."""
    sample = b'{"Time":"2026-11-26T09:32:00","ENERGY":{"Power":45,"Factor":0.87},"ok":true}'
    build = SampleBuilder({"tele/plug/SENSOR": [sample], "stat/plug/POWER": [b"ON"]})
    device = _device("tele/plug/SENSOR")
    rng = random.Random(3)
    docs = [orjson.loads(build(device, rng, 0)) for _ in range(50)]
    assert all(d["Time"] == "2026-11-26T09:32:00" and d["ok"] is True for d in docs)
    assert all(isinstance(d["ENERGY"]["Power"], int) for d in docs)
    assert all(abs(d["ENERGY"]["Power"] - 45) <= 2 for d in docs)
    assert all(round(d["ENERGY"]["Factor"], 2) == d["ENERGY"]["Factor"] for d in docs)
    assert len({d["ENERGY"]["Factor"] for d in docs}) > 1
    assert build(_device("stat/plug/POWER"), rng, 0) == b"ON"


def test_the_fleet_simulates_every_recipe_rule_on_real_topics(tmp_path: Path) -> None:
    """With two devices per rule every rule is simulated, recipe devices are named as in the
    recipes' samples, their messages map without failures, and ignore rules yield nothing."""
    combined = combine(EXAMPLE_MAPPING, tmp_path / "combined.yaml")
    fleet = SensorFleet(
        "127.0.0.1",
        1883,
        2 * len(combined.rules),
        100.0,
        rules=combined.rules,
        clock=lambda: NOW_S,
        payloads=combined.payloads,
        topics=combined.topics,
    )
    assert fleet.skipped_rules == {}
    by_rule: dict[str, list[ExpectedPoint]] = defaultdict(list)
    by_topic = {d.streams[0].topic: d.rule.name for d in fleet.devices if d.shaped}
    for _ in range(4 * len(fleet.devices)):
        message = fleet._next_message()
        if message.topic in by_topic:
            by_rule[by_topic[message.topic]].extend(message.points)
    devices = {
        d.device_id for d in fleet.devices if d.rule.name in {"tasmota-sensor", "tasmota-power"}
    }
    assert devices == {"tasmota_8A2F3C", "boiler-room", "tasmota_4CH"}
    zigbee = {d.device_id for d in fleet.devices if d.rule.name == "zigbee2mqtt-device"}
    assert zigbee == {"hall_climate", "press_plug"}
    assert {"ENERGY.Power", "DS18B20.Temperature"} <= {p.metric for p in by_rule["tasmota-sensor"]}
    assert {p.metric for p in by_rule["tasmota-power"]} == {"power2"}
    assert {p.value for p in by_rule["zigbee2mqtt-availability"]} <= {0.0, 1.0}
    assert by_rule["tasmota-stat-other"] == []
    assert all(p.timestamp_us is None for p in by_rule["zigbee2mqtt-device"])


def _device(topic: str) -> Device:
    rules = load_mappings(EXAMPLE_MAPPING)
    return Device(rules[0], {}, random.Random(0), shaped=True, topic=topic)


def test_a_recipe_the_file_already_holds_runs_with_its_samples(tmp_path: Path) -> None:
    """A mapping file written from a recipe (``recipes write``) keeps its rules once, and the
    recipe still runs: its devices publish the recipe's samples on its test topics."""
    written = tmp_path / "tasmota.yaml"
    written.write_text(recipe("tasmota").text, encoding="utf-8")
    combined = combine(written, tmp_path / "combined.yaml")
    assert [r.name for r in combined.recipes] == list(DEMO_RECIPES)
    assert combined.in_file == {"tasmota"}
    assert combined.left_out == {}
    assert len(combined.rules) == len(load_mappings(written)) + 2
    assert "stat/tasmota_8A2F3C/POWER" in combined.topics["tasmota-power"]
    assert "tasmota (6 rules) in the mapping file" in "\n".join(combined.describe())
