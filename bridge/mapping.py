"""The runtime mapper: topic + payload bytes → records, or a reason why not.

Pure code: no I/O, no clock (the receive time is an argument), no third-party types. Rules are
compiled once by :mod:`bridge.mapping_config`; this module only executes them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import orjson

from bridge.errors import PayloadError
from bridge.points import Record
from bridge.timestamps import TimestampFormat, check_not_future, parse_timestamp
from bridge.topics import TopicFilter, TopicRouter

_NUMBER = re.compile(rb"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")
_MISSING = object()
MAX_POINTS_PER_RECORD = 100  # the API's per-request cap: no single object may exceed it


@dataclass(frozen=True, slots=True)
class Template:
    """A string built from literal text and topic captures, e.g. ``{site}-{line}``."""

    text: str
    parts: tuple[tuple[bool, str], ...]  # (is_capture, literal text or capture name)

    def render(self, captures: dict[str, str]) -> str:
        """Fill in the captures."""
        return "".join(captures[v] if is_cap else v for is_cap, v in self.parts)


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A dotted path into a JSON payload; numeric segments index arrays."""

    text: str
    segments: tuple[str, ...]

    def get(self, doc: object) -> object:
        """The value at this path, or the ``_MISSING`` sentinel."""
        cur = doc
        for seg in self.segments:
            if isinstance(cur, dict):
                cur = cur.get(seg, _MISSING)
                if cur is _MISSING:
                    return _MISSING
            elif isinstance(cur, list) and seg.isascii() and seg.isdigit() and int(seg) < len(cur):
                cur = cur[int(seg)]
            else:
                return _MISSING
        return cur


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled mapping rule."""

    name: str
    topic: TopicFilter
    device_id: Template
    payload: str  # "json" | "number"
    metrics: tuple[tuple[str, FieldPath], ...]
    metric: Template | None
    ts_field: FieldPath | None
    ts_format: TimestampFormat
    reject_on_error: bool


@dataclass(slots=True)
class Mapped:
    """What one message became.

    ``records`` go to the spool; ``failures`` are per-metric or per-message problems, each
    counted by reason. The message is dead-lettered when ``failures`` is non-empty (with the
    good records, if any, still delivered) so nothing is dropped without a trace.
    """

    rule: str | None
    records: list[Record] = field(default_factory=list)
    failures: list[PayloadError] = field(default_factory=list)

    @property
    def points(self) -> int:
        """Number of data points (metric values) produced."""
        return sum(len(r.metrics) for r in self.records)


class Mapper:
    """Applies the first matching rule to each message."""

    def __init__(
        self, rules: list[Rule], *, max_payload_bytes: int = 65536, max_future_s: float = 86400.0
    ) -> None:
        self.rules = rules
        self._router = TopicRouter([r.topic for r in rules])
        self._max_payload = max_payload_bytes
        self._max_future_s = max_future_s

    @property
    def subscriptions(self) -> list[str]:
        """Distinct broker filters for all rules, in rule order."""
        return list(dict.fromkeys(r.topic.subscription for r in self.rules))

    def map(self, topic: str, payload: bytes, received_us: int) -> Mapped:
        """Map one message. Never raises for bad input: problems come back as failures."""
        routed = self._router.route(topic)
        if routed is None:
            return Mapped(None, failures=[PayloadError("unmatched", "no rule matches the topic")])
        index, captures = routed
        rule = self.rules[index]
        out = Mapped(rule.name)
        if len(payload) > self._max_payload:
            out.failures.append(
                PayloadError("too_large", f"{len(payload)} bytes > cap {self._max_payload}")
            )
            return out
        device_id = rule.device_id.render(captures)
        if not device_id:
            out.failures.append(PayloadError("bad_device_id", "device_id template rendered empty"))
            return out
        try:
            if rule.payload == "number":
                metrics, ts_us = self._number(rule, captures, payload, received_us)
            else:
                metrics, ts_us = self._json(rule, payload, received_us, out.failures)
        except PayloadError as exc:
            out.failures.append(exc)
            return out
        if rule.reject_on_error and out.failures:
            return out
        if not metrics:
            if not out.failures:
                out.failures.append(PayloadError("no_metrics", "the payload held no metrics"))
            return out
        if len(metrics) <= MAX_POINTS_PER_RECORD:
            out.records.append(Record(device_id, ts_us, metrics, received_us))
        else:
            items = list(metrics.items())
            for start in range(0, len(items), MAX_POINTS_PER_RECORD):
                chunk = dict(items[start : start + MAX_POINTS_PER_RECORD])
                out.records.append(Record(device_id, ts_us, chunk, received_us))
        return out

    def _number(
        self, rule: Rule, captures: dict[str, str], payload: bytes, received_us: int
    ) -> tuple[dict[str, float], int]:
        if not _NUMBER.fullmatch(payload):
            raise PayloadError("not_numeric", "payload is not a plain number")
        value = float(payload)
        if not math.isfinite(value):
            raise PayloadError("non_finite", "value is not finite")
        assert rule.metric is not None
        name = rule.metric.render(captures)
        if not name:
            raise PayloadError("bad_metric_name", "metric template rendered empty")
        return {name: value}, received_us

    def _json(
        self, rule: Rule, payload: bytes, received_us: int, failures: list[PayloadError]
    ) -> tuple[dict[str, float], int]:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise PayloadError("invalid_json", str(exc)[:200]) from None
        if not isinstance(doc, dict):
            raise PayloadError("not_an_object", f"payload is a JSON {type(doc).__name__}")
        ts_us = received_us
        if rule.ts_field is not None:
            raw_ts = rule.ts_field.get(doc)
            if raw_ts is _MISSING:
                raise PayloadError("missing_timestamp", f"no field {rule.ts_field.text!r}")
            ts_us = parse_timestamp(raw_ts, rule.ts_format)
            check_not_future(ts_us, received_us, self._max_future_s)
        metrics: dict[str, float] = {}
        for name, path in rule.metrics:
            value = path.get(doc)
            if value is _MISSING:
                failures.append(PayloadError("missing_field", f"{name}: no field {path.text!r}"))
            elif isinstance(value, bool):
                # bool is an int in Python; a JSON true/false is not a measurement.
                failures.append(PayloadError("boolean_value", f"{name}: boolean, not a number"))
            elif isinstance(value, int | float):
                if isinstance(value, float) and not math.isfinite(value):
                    failures.append(PayloadError("non_finite", f"{name}: value is not finite"))
                else:
                    metrics[name] = float(value)
            else:
                failures.append(
                    PayloadError("not_numeric", f"{name}: {type(value).__name__}, not a number")
                )
        return metrics, ts_us
