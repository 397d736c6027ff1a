"""The recipes the demo runs beside the mapping file (Tasmota and Zigbee2MQTT from
:mod:`bridge.recipes`): one combined mapping file, real topics and real-shaped payloads.

The combined file is the mapping file's rules followed by each recipe's rules, written to the
demo's temporary directory and loaded like any mapping file. Where a generic rule of the file
would swallow a recipe's topics (``tele/{device}/{metric}`` comes before Tasmota's
``tele/{device}/SENSOR``), the recipe rule moves up to just above it: specific before general,
as ``check`` recommends. A recipe that still leaves a rule-order warning, or some of whose rule
names the file already uses, is left out with the reason, so the demo never runs a mapping
``check --strict`` would refuse. A file that holds all of a recipe's rules (``recipes write``)
runs them as they are there, with the recipe's samples.

The fleet publishes for a recipe rule on the topics of the recipe's own ``tests:`` that the
combined mapping routes to that rule (so the devices are ``tasmota_8A2F3C``, ``boiler-room``,
``hall_climate``, ...) with those tests' payloads, every number moved a little per message. The
points each message must become come from the bridge's own mapper, as for every shaped rule.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bridge.config.yamlfile import load_yaml_file, load_yaml_text
from bridge.errors import ConfigError
from bridge.lab.fleet_devices import Device
from bridge.lab.fleet_shapes import PayloadBuilder
from bridge.mapping.cover import cover
from bridge.mapping.loader import load_mappings
from bridge.mapping.mapper import Mapper, Rule
from bridge.mapping.overlap import RuleWarning, rule_warnings, topic_lines
from bridge.mapping.topics import TopicRouter
from bridge.recipes import Recipe, recipe

DEMO_RECIPES = ("tasmota", "zigbee2mqtt")

RuleSpec = dict[str, Any]


@dataclass(slots=True)
class DemoMapping:
    """The combined mapping the demo's bridge runs, and what the fleet needs for the recipes.

    Attributes:
        path: the combined mapping file.
        rules: its compiled rules.
        recipes: the recipes that run, in the order they were added.
        in_file: of ``recipes``, those whose rules the mapping file already has (their devices
            still publish the recipe's samples).
        left_out: recipe name → why it does not run.
        recipe_rules: rule name → the recipe it came from.
        payloads: rule name → payload builder, for every recipe rule with samples.
        topics: rule name → the recipe tests' topics that rule maps in the combined file.
    """

    path: Path
    rules: list[Rule]
    recipes: list[Recipe] = field(default_factory=list)
    in_file: set[str] = field(default_factory=set)
    left_out: dict[str, str] = field(default_factory=dict)
    recipe_rules: dict[str, str] = field(default_factory=dict)
    payloads: dict[str, PayloadBuilder] = field(default_factory=dict)
    topics: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def describe(self) -> list[str]:
        """The demo's setup lines about the recipes: which joined, which not and why."""
        lines = []
        for found in self.recipes:
            joined = sum(1 for name in self.recipe_rules.values() if name == found.name)
            where = "in the mapping file" if found.name in self.in_file else "from the library"
            lines.append(f"  recipe   {found.name} ({joined} rules) {where}: {found.title}")
        lines.extend(f"  recipe   {name} left out: {why}" for name, why in self.left_out.items())
        if len(self.in_file) < len(self.recipes):
            subs = cover([r.topic.subscription for r in self.rules])
            lines.append(
                f"           together in {self.path.name} ({len(self.rules)} rules, "
                f"{len(subs.filters)} subscriptions: overlapping filters are subscribed once)"
            )
        return lines


def combine(base: Path, out: Path, names: Sequence[str] = DEMO_RECIPES) -> DemoMapping:
    """Write ``base``'s rules plus the named recipes' rules to ``out`` and load it.

    Raises:
        ConfigError: ``base`` is not a valid mapping file, or a name is no recipe's.
    """
    data, _ = load_yaml_file(base)
    specs: list[RuleSpec] = list(data["rules"])
    added: list[tuple[Recipe, set[str], list[dict[str, Any]]]] = []
    left_out: dict[str, str] = {}
    in_file: set[str] = set()
    for name in names:
        found = recipe(name)
        r_data, _ = load_yaml_text(found.text, f"recipe {name}")
        r_specs: list[RuleSpec] = list(r_data["rules"])
        own = {s["name"] for s in r_specs}
        tests = list(r_data.get("tests") or [])
        taken = {s["name"] for s in specs} & own
        if taken == own:  # the file holds the recipe (``recipes write``): run it as it is there
            added.append((found, own, tests))
            in_file.add(name)
            continue
        if taken:
            left_out[name] = f"the mapping already has rule(s) {', '.join(sorted(taken))}"
            continue
        try:
            ordered, problem = _ordered(specs, r_specs, out)
        except ConfigError as exc:
            ordered, problem = specs, f"the mapping with its rules does not load: {exc}"
        if problem:
            left_out[name] = problem
            continue
        specs = ordered
        added.append((found, own, tests))
    _write(out, specs)
    rules = load_mappings(out)
    result = DemoMapping(out, rules, [r for r, _, _ in added], in_file, left_out)
    router = TopicRouter([r.topic for r in rules])
    by_name = {r.name: r for r in rules}
    samples: dict[str, dict[str, list[bytes]]] = {}
    for found, own, tests in added:
        result.recipe_rules.update(dict.fromkeys(own, found.name))
        for test in tests:
            sample = _sample(test)
            routed = router.route(test["topic"])
            if sample is None or routed is None or rules[routed[0]].name not in own:
                continue
            rule = rules[routed[0]]
            if Mapper([rule]).map(test["topic"], sample, 0).failures:
                continue  # a test of a failure (a dead sensor's nulls): not a reading
            samples.setdefault(rule.name, {}).setdefault(test["topic"], []).append(sample)
    for rule_name, per_topic in samples.items():
        result.payloads[rule_name] = SampleBuilder(per_topic, by_name[rule_name].ignore)
        result.topics[rule_name] = tuple(per_topic)
    return result


class SampleBuilder:
    """Payloads for one recipe rule: a sample of the device's topic, numbers moved a little.

    Integers stay integers and decimals keep their number of places, so the payload looks like
    the device's and each value reads back from the API as exactly the float published.
    """

    def __init__(self, per_topic: dict[str, list[bytes]], ignore: bool = False) -> None:
        self._per_topic = per_topic
        self._any = [s for group in per_topic.values() for s in group]
        self._ignore = ignore

    def __call__(self, device: Device, rng: random.Random, ts_ms: int) -> bytes:
        del ts_ms  # the recipes stamp their points with the receive time
        sample = rng.choice(self._per_topic.get(device.streams[0].topic, self._any))
        if self._ignore:
            return sample
        try:
            doc = orjson.loads(sample)
        except orjson.JSONDecodeError:
            return sample  # a word such as ON or Online
        return orjson.dumps(_moved(doc, rng))


def _moved(node: object, rng: random.Random) -> object:
    if isinstance(node, dict):
        return {key: _moved(value, rng) for key, value in node.items()}
    if isinstance(node, list):
        return [_moved(value, rng) for value in node]
    if isinstance(node, bool) or not isinstance(node, int | float):
        return node
    # A reading that is never negative (a power, a count) stays so.
    low = 0 if node >= 0 else None
    if isinstance(node, int):
        moved_int = node + rng.randint(-2, 2)
        return moved_int if low is None else max(low, moved_int)
    places = len(repr(node).partition(".")[2]) if "e" not in repr(node) else 6
    step = max(abs(node) * 0.02, 10.0**-places)
    moved = round(node + rng.uniform(-step, step), places)
    return moved if low is None else max(0.0, moved)


def _sample(test: dict[str, Any]) -> bytes | None:
    if "payload" in test:
        return str(test["payload"]).encode()
    if "payload_json" in test:
        return orjson.dumps(test["payload_json"])
    return None


def _ordered(
    base: list[RuleSpec], added: list[RuleSpec], scratch: Path
) -> tuple[list[RuleSpec], str]:
    """``base + added``, each added rule that an earlier rule shadows moved just above it.

    Returns the order and '' when the result has no rule-order warning about an added rule;
    otherwise ``base`` and the first such warning.

    Raises:
        ConfigError: the combined rules do not load.
    """
    specs = [*base, *added]
    names = {s["name"] for s in added}
    for _ in range(len(specs) * len(added) + 1):  # each move lifts one added rule: bounded
        warnings = _warnings(specs, scratch, names)
        if not warnings:
            return specs, ""
        movable = [w for w in warnings if w.kind == "shadowed" and w.rule in names]
        if not movable:
            break
        specs.insert(movable[0].other_index, specs.pop(movable[0].index))
    warnings = _warnings(specs, scratch, names)
    if not warnings:
        return specs, ""
    w = warnings[0]
    return base, f"rules[{w.index}] ({w.rule}) {w.message}"


def _warnings(specs: list[RuleSpec], scratch: Path, names: set[str]) -> list[RuleWarning]:
    """The rule-order warnings that involve a rule named in ``names``."""
    _write(scratch, specs)
    rules = load_mappings(scratch)
    return [
        w
        for w in rule_warnings(rules, topic_lines(scratch))
        if w.rule in names or w.other_rule in names
    ]


def _write(path: Path, specs: list[RuleSpec]) -> None:
    # JSON is YAML: no quoting rule to get wrong for regex filters or value maps.
    doc = {"version": 1, "rules": specs}
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
