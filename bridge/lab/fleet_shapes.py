"""Payloads for the rule shapes beyond plain JSON fields and numbers: on/off states, words through
a value map, lists of readings, collected blocks, several devices per message, device ids read
from the payload, local-time stamps and coalesced rules.

Each builder writes a payload the rule reads; the points the bridge must deliver for it are then
taken from the real :class:`~bridge.mapping.mapper.Mapper` (the same pure code the bridge runs).
The demo proves delivery, not the mapping: ``metriqo-bridge test`` checks what a rule maps to.
Values are multiples of 1/4, so the spool's sums and averages of coalesced windows are exact and
the demo can compare them with ``==``. Pure: randomness is a seeded generator passed in.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge.lab.fleet_devices import Device, ExpectedPoint, band_of, format_ts
from bridge.mapping.mapper import Mapper, Rule, TimestampRule
from bridge.mapping.transforms import Transform

# Sample fields of a collected block, nested as devices report them; the text field is skipped
# by collect (not numeric), as it is in the plant.
_COLLECTED = ({"fan": {"rpm": None}, "filter_pct": None, "label": "ok"},)
_EACH_KEYS = ("unit-1", "unit-2")
_TAG_NAMES = ("Line1.Press01.Temp", "Line1.Press01.Bar")

# (device, rng, payload time in epoch ms) -> payload. build_payload is the generic one; a rule
# whose device format it cannot guess (a recipe's) gets its own through SensorFleet(payloads=).
PayloadBuilder = Callable[[Device, random.Random, int], bytes]


def shaped(rule: Rule) -> bool:
    """True when the rule needs this module (the fleet builds plain JSON and numbers itself)."""
    return (
        rule.ignore
        or rule.payload in ("boolean", "text", "sparkplug")
        or rule.topic.patterns != ()
        or rule.device_id.uses_payload
        or rule.coalesce is not None
        or rule.collect is not None
        or rule.readings is not None
        or rule.each is not None
        or any(t != Transform() for t in rule.transforms)
        or (rule.timestamp is not None and rule.timestamp.pattern is not None)
        or (rule.timestamp is not None and rule.timestamp.tz is not None)
        or any(p.filters for p in rule.device_id.parts)
    )


def unsupported(rule: Rule) -> str:
    """Why no payload can be built for this rule ('' if one can)."""
    if rule.keep_going:
        return "continue: true"
    if rule.sparkplug is not None and rule.topic.levels[:1] != ("spBv1.0",):
        return "its topic does not start with spBv1.0/"
    if rule.payload == "text" and not (rule.transforms and rule.transforms[0].value_map):
        return "payload: text without a value map"
    if rule.collect is not None and rule.collect.include:
        return "collect with include"
    if any(_uninvertible(t) for t in rule.transforms):
        return "an expr with a range (no raw value can be picked inside it)"
    ts = rule.timestamp
    if ts is not None and ts.capture is not None:
        return "its timestamp comes from the topic"
    if rule.metric is not None and rule.payload == "json":
        return "a templated metric name"
    return ""


def receive_stamped(rule: Rule) -> bool:
    """True when the bridge stamps this rule's points with its receive time."""
    if rule.sparkplug is not None:
        return False  # the payload's time (every payload the fleet publishes has one)
    if rule.readings is not None:
        return rule.readings.time is None
    return rule.timestamp is None


def step_ms(rule: Rule) -> int:
    """Smallest step between two payload times the rule can tell apart."""
    spec = rule.readings_time if rule.readings is not None else rule.timestamp
    if spec is None or spec.pattern is None or "%f" in spec.pattern:
        return 1
    return 1000


def build_payload(device: Device, rng: random.Random, ts_ms: int) -> bytes:
    """One payload the device's rule maps without failures."""
    rule = device.rule
    if rule.ignore:
        return b"debug: free text the plant does not want in Metriqo"
    if rule.payload == "boolean":
        return rng.choice((b"ON", b"OFF"))
    if rule.payload == "text":
        return rng.choice(sorted(rule.transforms[0].value_map)).encode()
    if rule.readings is not None:
        return orjson.dumps(_readings(rule, rng, ts_ms))
    if rule.payload == "number":
        transform = rule.transforms[0] if rule.transforms else Transform()
        return _printed(_value(rng, transform), transform).encode()
    doc: dict[str, Any] = {}
    for part in rule.device_id.parts:
        if part.kind == "field":
            _put(doc, part.path, device.serial)
    if rule.timestamp is not None and rule.timestamp.field is not None:
        _put(doc, rule.timestamp.field.segments, _time(rule.timestamp, ts_ms))
    if rule.each is not None:
        elements = {key: _metrics_doc(device, rng, key) for key in _EACH_KEYS}
        _put(doc, rule.each.segments, elements)
    else:
        doc.update(_metrics_doc(device, rng, ""))
    if rule.collect is not None:
        block = orjson.loads(orjson.dumps(_COLLECTED[0]))
        block["fan"]["rpm"] = _value(rng, None)
        block["filter_pct"] = _value(rng, None)
        if rule.collect.path:
            _put(doc, rule.collect.path, block)
        else:  # collect: {path: ""} takes the message's own top-level fields
            doc.update({key: value for key, value in block.items() if key not in doc})
    return orjson.dumps(doc)


def expected(
    mapper: Mapper, rule: Rule, topic: str, payload: bytes, received_us: int
) -> tuple[ExpectedPoint, ...]:
    """The points the bridge makes of one message (none for an ignore rule).

    Raises:
        ValueError: the mapper reports a failure, i.e. the builder does not fit the rule.
    """
    mapped = mapper.map(topic, payload, received_us)
    if mapped.failures:
        raise ValueError(f"rule {rule.name}: simulated payload fails: {mapped.failures[0]}")
    stamped = not receive_stamped(rule)
    return tuple(
        ExpectedPoint(
            r.device_id,
            metric,
            r.ts_us if stamped else None,
            value,
            rule.coalesce,
            band_of(rule, metric),
        )
        for r in mapped.records
        for metric, value in r.metrics.items()
    )


def _metrics_doc(device: Device, rng: random.Random, key: str) -> dict[str, Any]:
    rule = device.rule
    doc: dict[str, Any] = {}
    transforms = rule.transforms or (Transform(),) * len(rule.metrics)
    for (name, path), transform in zip(rule.metrics, transforms, strict=False):
        if rule.coalesce is not None and receive_stamped(rule):
            value = device.constants.setdefault(f"{key}/{name}", _value(rng, transform))
        else:
            value = _value(rng, transform)
        _put(doc, path.segments, value)
    return doc


def _readings(rule: Rule, rng: random.Random, ts_ms: int) -> object:
    spec = rule.readings
    assert spec is not None
    # rename's keys are raw names, unless a metric template renders them (then they are its
    # results, and the tag names below produce them).
    renamed = list(spec.rename)[:1] if spec.metric is None else []
    names = (*renamed, *_TAG_NAMES)
    items: list[dict[str, Any]] = []
    for name in names:
        item: dict[str, Any] = {}
        if spec.name:
            _put(item, spec.name, name)
        # Per-reading device and metric templates read the element's fields: each gets the tag
        # name (dotted, as tag-list gateways send it: segment and re filters find their parts).
        for template in (spec.metric, spec.device):
            for part in template.parts if template is not None else ():
                if part.kind == "field":
                    _put(item, part.path, name, replace=True)
        _put(item, spec.value, _value(rng, spec.transform))
        if spec.time is not None:
            _put(item, spec.time, _time(rule.readings_time or TimestampRule(), ts_ms))
        for path, want in spec.where:
            _put(item, path, want)
        items.append(item)
    if spec.where:  # one reading the where conditions leave out, as a gateway sends them
        bad = dict(orjson.loads(orjson.dumps(items[0])))
        path, want = spec.where[0]
        _put(bad, path, (not want) if isinstance(want, bool) else f"not-{want}", replace=True)
        items.append(bad)
    if not spec.path:
        return items
    doc: dict[str, Any] = {}
    _put(doc, spec.path, items)
    return doc


def _value(rng: random.Random, transform: Transform | None) -> float:
    """A raw value the transform keeps in its range, a multiple of 1/4 (exact sums)."""
    low, high = 0.0, 100.0
    if transform is not None and transform.low is not None and transform.high is not None:
        span = transform.high - transform.low
        inside = (transform.low + span * 0.05, transform.high - span * 0.05)
        convert = transform.convert
        if convert is not None and convert.inverse is not None:
            a, b = (convert.inverse(v) for v in inside)
        else:
            a, b = ((v - transform.offset) / transform.scale for v in inside)
        low, high = min(a, b), max(a, b)
    return round(rng.uniform(low, high) * 4) / 4


def _uninvertible(transform: Transform) -> bool:
    """A range after a conversion the fleet cannot run backwards (an expr)."""
    ranged = transform.low is not None or transform.high is not None
    return ranged and transform.convert is not None and transform.convert.inverse is None


def _printed(value: float, transform: Transform) -> str:
    """A plain number as the rule's number_format prints it (decimal mark, first unit)."""
    fmt = transform.number
    text = f"{value:.2f}"
    if fmt is None:
        return text
    text = text.replace(".", fmt.decimal)
    return f"{text} {fmt.units[0]}" if fmt.units else text


def _time(spec: TimestampRule, ts_ms: int) -> object:
    if spec.pattern is not None:
        when = datetime.fromtimestamp(ts_ms / 1000, spec.tz or UTC)
        return when.strftime(spec.pattern)
    return format_ts(ts_ms, spec.fmt)


def _put(
    doc: dict[str, Any], path: tuple[str, ...], value: object, *, replace: bool = False
) -> None:
    node = doc
    for seg in path[:-1]:
        node = node.setdefault(seg, {})
    if replace or path[-1] not in node:
        node[path[-1]] = value
