"""The simulated devices of the sensor fleet: one per rule of the mapping file, each with the
topic, device id and payload that rule reads, and the points the bridge must deliver for each
message (:class:`ExpectedPoint`). Pure: randomness is a seeded generator passed in; the
publishing is :mod:`bridge.lab.fleet`."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bridge.mapping.mapper import FieldPath, Rule, Template
from bridge.models import Coalesce, Deadband

if TYPE_CHECKING:
    from bridge.lab.fleet_sparkplug import SparkplugNode

SITES = ("berlin", "lyon", "turin", "gdansk", "porto", "brno")
NUMBER_METRICS = ("voltage", "current")


@dataclass(frozen=True, slots=True)
class ExpectedPoint:
    """A point the bridge must deliver for one acknowledged message.

    Attributes:
        device_id: the API device id the mapping renders for the topic.
        metric: the API metric name.
        timestamp_us: measurement time from the payload (epoch µs), or None when the payload
            carries none and the bridge stamps its receive time.
        value: the published value (exactly representable after a JSON round trip).
        coalesce: how the spool folds the rule's points (then this is one raw point of a
            window, and the API gets the window's one point instead).
        deadband: the band the spool decides this point by (then the API gets it only when
            it moved out of the band around the last sent value of its series).
    """

    device_id: str
    metric: str
    timestamp_us: int | None
    value: float
    coalesce: Coalesce | None = None
    deadband: Deadband | None = None


def band_of(rule: Rule, metric: str) -> Deadband | None:
    """The deadband the spool decides this rule's ``metric`` by (None: always sent)."""
    return rule.deadband.of(metric) if rule.deadband is not None else None


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    points: tuple[ExpectedPoint, ...]
    ignored: bool = False  # for an ignore rule: nothing may arrive


class Signal:
    """A bounded random walk (or a counter) that looks like the quantity it is named after."""

    # (name fragment, low, high, decimals); the first fragment found in the name wins.
    _PROFILES = (
        ("temp", 18.0, 27.0, 2),
        ("rh", 30.0, 60.0, 1),
        ("humid", 30.0, 60.0, 1),
        ("kw", 0.5, 12.0, 3),
        ("power", 0.5, 12.0, 3),
        ("rpm", 900.0, 1600.0, 0),
        ("load", 0.0, 1.0, 3),
        ("volt", 225.0, 235.0, 1),
        ("current", 0.0, 16.0, 2),
    )
    _COUNTERS = ("parts", "count", "total")

    def __init__(self, name: str, rng: random.Random) -> None:
        key = name.lower()
        self._counter = any(c in key for c in self._COUNTERS)
        low, high, decimals = 0.0, 100.0, 2
        for fragment, lo, hi, dec in self._PROFILES:
            if fragment in key:
                low, high, decimals = lo, hi, dec
                break
        self._low, self._high, self._decimals = low, high, decimals
        self._value = float(rng.randint(1000, 20000)) if self._counter else rng.uniform(low, high)

    def next(self, rng: random.Random) -> float:
        """The next reading: counters only go up, other signals wander within their range."""
        if self._counter:
            self._value += rng.randint(0, 3)
            return self._value
        step = (self._high - self._low) * 0.02
        self._value = min(self._high, max(self._low, self._value + rng.uniform(-step, step)))
        # Rounded so the decimal text published is exactly the float the API will return.
        return float(round(self._value, self._decimals))


@dataclass(slots=True)
class Stream:
    """One topic of one simulated device."""

    topic: str
    metric: str  # API metric name, for plain-number payloads
    signal: Signal | None


class Device:
    """A simulated device: one rule, its captures, and a signal per metric.

    A ``shaped`` device (:mod:`bridge.lab.fleet_shapes`) publishes one topic (``topic`` when
    given, a real one the rule maps, else one made from the filter and captures); its device id is
    set by the fleet from the first payload mapped, since it may come from the payload. It keeps
    a serial for payload fields and the constants of coalesced metrics.
    """

    def __init__(
        self,
        rule: Rule,
        captures: dict[str, str],
        rng: random.Random,
        *,
        shaped: bool = False,
        topic: str | None = None,
    ) -> None:
        self.rule = rule
        self.shaped = shaped
        self.device_id = "" if shaped else rule.device_id.render(captures)
        self.serial = "SN-" + "-".join(captures.values()) if captures else "SN-1"
        self.constants: dict[str, float] = {}
        self.sparkplug: SparkplugNode | None = None  # set by the fleet for a Sparkplug rule
        self.streams: list[Stream] = []
        self.signals = {name: Signal(f"{name} {path.text}", rng) for name, path in rule.metrics}
        self._next_stream = 0
        if rule.payload == "number" and not shaped:
            assert rule.metric is not None
            for per_metric in metric_captures(rule):
                full = {**captures, **per_metric}
                name = rule.metric.render(full)
                self.streams.append(Stream(topic_of(rule, full), name, Signal(name, rng)))
        else:
            self.streams.append(Stream(topic or topic_of(rule, captures), "", None))

    def topics(self) -> list[str]:
        """Every topic the device publishes on."""
        return self.sparkplug.topics() if self.sparkplug else [s.topic for s in self.streams]

    def message(
        self, rng: random.Random, ts_ms: int, build: Callable[[Device, random.Random, int], bytes]
    ) -> tuple[str, bytes]:
        """A shaped device's next (topic, payload): its edge node's, else its topic and what
        ``build`` makes."""
        if self.sparkplug is not None:
            return self.sparkplug.next_message(rng, ts_ms)
        return self.streams[0].topic, build(self, rng, ts_ms)

    def next_stream(self) -> Stream:
        stream = self.streams[self._next_stream % len(self.streams)]
        self._next_stream += 1
        return stream


def unsimulated(rule: Rule) -> str:
    """Why the fleet cannot publish for this plain JSON or number rule and predict its points
    itself ('' if it can); other shapes are :mod:`bridge.lab.fleet_shapes`'."""
    if rule.keep_going:
        return "continue: true"
    ts = rule.timestamp
    if ts is not None and ts.capture is not None:
        return "its timestamp comes from the topic"
    if rule.metric is not None and any(p.filters for p in rule.metric.parts):
        return "its metric template uses filters"
    if rule.payload == "json":
        doc: dict[str, Any] = {}
        paths = [p for _, p in rule.metrics] + ([rule.ts_field] if rule.ts_field else [])
        if not all(put(doc, p, 0) for p in paths):
            return "its field paths overlap"
    return ""


def metric_captures(rule: Rule) -> list[dict[str, str]]:
    """Capture values naming each metric a number device publishes (e.g. ``{metric}``).

    A capture the metric template uses and the device id template does not names the metric;
    one topic per metric name is published for it.
    """
    assert rule.metric is not None
    names = template_captures(rule.metric) - template_captures(rule.device_id)
    own = [name for name in rule.topic.capture_names if name in names]
    if not own:
        return [{}]
    # The first such capture takes the metric names; any others keep their per-device value.
    return [{own[0]: metric} for metric in NUMBER_METRICS]


def template_captures(template: Template) -> set[str]:
    return {part.value for part in template.parts if part.kind == "capture"}


def captures_for(rule: Rule, index: int, topic: str | None) -> dict[str, str]:
    """The capture values of device ``index``: those of ``topic`` when given (a real topic the
    rule maps), else made up, unique per device."""
    if topic is not None:
        return rule.topic.match(topic.split("/")) or {}
    return {name: capture_value(name, index) for name in rule.topic.capture_names}


def capture_value(name: str, index: int) -> str:
    """A topic level for capture ``name`` of device ``index``, unique per device."""
    n = index + 1
    values = {
        "site": SITES[index % len(SITES)],
        "line": f"line{n}",
        "machine": f"press-{n}",
        "device": f"meter-{n:02d}",
    }
    return values.get(name, f"{name}{n}")


def topic_of(rule: Rule, captures: dict[str, str]) -> str:
    levels = []
    for literal, capture in zip(rule.topic.levels, rule.topic.captures, strict=True):
        if literal is not None:
            levels.append(literal)
        else:
            levels.append(captures[capture] if capture is not None else "any")
    return "/".join(levels)


def put(doc: dict[str, Any], path: FieldPath, value: object) -> bool:
    """Place ``value`` at ``path``; False when another field already occupies the spot."""
    node: Any = doc
    for seg, nxt in zip(path.segments, (*path.segments[1:], None), strict=True):
        container: Any = [] if nxt is not None and nxt.isdigit() else {}
        if isinstance(node, list):
            i = int(seg)
            node.extend([None] * (i + 1 - len(node)))
            slot = node[i]
            if nxt is None:
                if slot is not None:
                    return False
                node[i] = value
                return True
            if slot is None:
                node[i] = slot = container
        else:
            slot = node.get(seg)
            if nxt is None:
                if seg in node:
                    return False
                node[seg] = value
                return True
            if slot is None:
                node[seg] = slot = container
        if not isinstance(slot, dict | list):
            return False
        node = slot
    return False


def format_ts(ts_ms: int, fmt: str) -> object:
    if fmt == "epoch_ms":
        return ts_ms
    if fmt == "epoch_s":
        return ts_ms / 1000
    if fmt == "epoch_us":
        return ts_ms * 1000
    if fmt == "epoch_ns":
        return ts_ms * 1_000_000
    stamp = datetime.fromtimestamp(ts_ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ts_ms % 1000:03d}Z"
