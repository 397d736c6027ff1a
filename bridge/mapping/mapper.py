"""The runtime mapper: topic + payload bytes → records, or a reason why not.

Pure code: no I/O, no clock (the receive time is an argument), no third-party types. Rules are
compiled once by :mod:`bridge.mapping.loader`; this module only executes them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import tzinfo

import orjson

from bridge.errors import PayloadError
from bridge.limits import MAX_POINTS_PER_REQUEST  # no single object may exceed a request
from bridge.mapping.cover import Cover, cover
from bridge.mapping.identifiers import CheckedIdentifiers, IdentifierLimits
from bridge.mapping.plain_fields import (
    PlainMetric,
    plain_json_metrics,
    plain_metrics,
    take_value,
)
from bridge.mapping.readings import MISSING as _MISSING
from bridge.mapping.readings import (
    CollectRule,
    Reading,
    ReadingsRule,
    Where,
    get_path,
    group_readings,
    grouped_records,
    matches,
)
from bridge.mapping.sparkplug_rule import SparkplugMapped, SparkplugRule, map_sparkplug
from bridge.mapping.templates import Template
from bridge.mapping.timestamps import (
    TimestampFormat,
    check_not_future,
    check_not_past,
    parse_timestamp,
)
from bridge.mapping.topics import TopicFilter, TopicRouter, parse_filter
from bridge.mapping.transforms import IDENTITY, Transform, parse_boolean
from bridge.models import Coalesce, Deadbands, Record, payload_size
from bridge.sparkplug.aliases import AliasTables, Birth
from bridge.sparkplug.sessions import Seen

_NUMBER = re.compile(rb"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")

__all__ = ["FieldPath", "Mapped", "Mapper", "Rule", "Template", "TimestampRule"]


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A dotted path into a JSON payload; numeric segments index arrays."""

    text: str
    segments: tuple[str, ...]

    def get(self, doc: object) -> object:
        """The value at this path, or the ``MISSING`` marker."""
        return get_path(doc, self.segments)


@dataclass(frozen=True, slots=True)
class TimestampRule:
    """Where and how a rule reads the measurement time."""

    field: FieldPath | None = None
    capture: str | None = None
    fmt: TimestampFormat = "auto"
    pattern: str | None = None
    tz: tzinfo | None = None
    max_future_s: float | None = None  # None: the bridge-wide mapping.max_future_s
    max_past_s: float | None = None
    fallback_to_receive_time: bool = False


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled mapping rule."""

    name: str
    topic: TopicFilter
    device_id: Template
    payload: str  # "json" | "number" | "boolean" | "text" | "sparkplug"
    metrics: tuple[tuple[str, FieldPath], ...]
    metric: Template | None
    ts_field: FieldPath | None
    ts_format: TimestampFormat
    reject_on_error: bool
    transforms: tuple[Transform, ...] = ()  # per entry of ``metrics``; one for plain payloads
    timestamp: TimestampRule | None = None
    ignore: bool = False
    keep_going: bool = False  # "continue: true": later matching rules apply too
    collect: CollectRule | None = None
    readings: ReadingsRule | None = None
    each: FieldPath | None = None  # several devices in one payload: map each element
    coalesce: Coalesce | None = None
    deadband: Deadbands | None = None  # the spool holds back values within it
    metric_names: tuple[Template | None, ...] = ()  # per ``metrics`` entry whose name is a template
    readings_time: TimestampRule | None = None  # how element times are read
    each_where: Where = ()  # conditions an element of ``each`` must meet to be mapped
    sparkplug: SparkplugRule | None = None  # the options of a ``payload: sparkplug`` rule


# The rule label of messages a joined subscription let in that no rule's filter matches: they are
# acknowledged and counted as ignored under this label (metriqo_bridge_messages_ignored_total).
OUTSIDE_FILTERS = "(outside every rule's filter)"


@dataclass(slots=True)
class Mapped:
    """What one message became.

    ``records`` go to the spool; ``failures`` are per-metric or per-message problems, each
    counted by reason. The message is dead-lettered when ``failures`` is non-empty (with the
    good records, if any, still delivered) so nothing is dropped without a trace. An ignored
    message (an ``ignore`` rule matched) has neither and is only counted.
    """

    rule: str | None
    records: list[Record] = field(default_factory=list)
    failures: list[PayloadError] = field(default_factory=list)
    ignored: bool = False
    replaced_timestamps: int = 0
    skipped_readings: int = 0
    births: list[Birth] = field(default_factory=list)  # Sparkplug aliases to store with it
    park: tuple[str, str] | None = None  # Sparkplug (group, node): wait for its BIRTH
    seen: Seen | None = None  # Sparkplug: the facts for seq / bdSeq tracking
    skipped_values: dict[str, int] = field(default_factory=dict)  # Sparkplug: by reason

    @property
    def points(self) -> int:
        """Number of data points (metric values) produced."""
        return sum(len(r.metrics) for r in self.records)


class Mapper:
    """Applies the first matching rule (and later ones after ``continue: true``)."""

    def __init__(
        self,
        rules: list[Rule],
        *,
        max_payload_bytes: int = 65536,
        max_future_s: float = 86400.0,
        identifiers: IdentifierLimits = IdentifierLimits(),  # noqa: B008  # frozen, shared
    ) -> None:
        self.rules = rules
        # Rules of plain top-level fields, by id (stable: the mapper keeps the rules).
        self._plain_fields = {id(r): p for r in rules if (p := plain_metrics(r)) is not None}
        self._router = TopicRouter([r.topic for r in rules])
        self.cover: Cover = cover([r.topic.subscription for r in rules])
        # Only a joined subscription lets in topics outside every rule's filter; then a second
        # router over the rules' plain filters tells those apart from unmatched ones.
        self._inside = (
            TopicRouter([parse_filter(r.topic.subscription) for r in rules])
            if self.cover.joined
            else None
        )
        self._max_payload = max_payload_bytes
        self.max_future_s = max_future_s
        self.identifiers = identifiers
        self._checked = CheckedIdentifiers(identifiers)  # each good name checked once
        # Sparkplug aliases, resolved against and updated by every message of a sparkplug rule;
        # the intake gives the mapper its own, which outlive a reload and live in the spool.
        self.aliases = AliasTables()

    @property
    def subscriptions(self) -> list[str]:
        """The broker filters to subscribe with: a cover of the rules' filters in which no two
        overlap, so that no message arrives twice (:mod:`bridge.mapping.cover`)."""
        return list(self.cover.filters)

    def map(self, topic: str, payload: bytes, received_us: int) -> Mapped:
        """Map one message. Never raises for bad input: problems come back as failures."""
        routes = self._router.route_all(topic)
        if not routes:
            if self._inside is not None and not self._inside.route_all(topic):
                # Let in by a joined subscription only: nobody subscribed to this topic.
                return Mapped(OUTSIDE_FILTERS, ignored=True)
            return Mapped(None, failures=[PayloadError("unmatched", "no rule matches the topic")])
        out: Mapped | None = None
        doc: object = _MISSING
        for index, captures in routes:
            rule = self.rules[index]
            if out is None:
                out = Mapped(rule.name)
            if rule.ignore:
                out.ignored = not out.records and not out.failures
                break
            size = payload_size(payload)  # an excerpt's whole size: it is never parsed
            if size > self._max_payload:
                out.failures.append(
                    PayloadError("too_large", f"{size} bytes > cap {self._max_payload}")
                )
                break
            if rule.payload == "json" and doc is _MISSING:
                try:
                    doc = orjson.loads(payload)
                except orjson.JSONDecodeError as exc:
                    out.failures.append(PayloadError("invalid_json", str(exc)[:200]))
                    break
            if rule.sparkplug is not None:
                _apply_sparkplug(self, rule, topic, payload, received_us, out)
            elif rule.each is None:
                self._apply(rule, captures, payload, doc, received_us=received_us, out=out)
            else:
                self._apply_each(rule, captures, payload, doc, received_us=received_us, out=out)
            if not rule.keep_going:
                break
        assert out is not None
        if not (out.records or out.failures or out.ignored or out.skipped_readings or out.park):
            out.failures.append(PayloadError("no_metrics", "the payload held no metrics"))
        return out

    def _apply(
        self,
        rule: Rule,
        captures: dict[str, str],
        payload: bytes,
        doc: object,
        *,
        received_us: int,
        out: Mapped,
        root: object = _MISSING,
    ) -> None:
        failures: list[PayloadError] = []
        readings: list[Reading] = []
        try:
            if rule.payload == "json":
                if not isinstance(doc, dict) and rule.readings is None:
                    raise PayloadError("not_an_object", f"payload is a JSON {type(doc).__name__}")
                plain = self._plain_fields.get(id(rule))
                metrics = (
                    _json_metrics(rule, doc, failures, captures, plain) if rule.metrics else {}
                )
                if rule.collect is not None:
                    metrics.update(rule.collect.collect(doc, failures, captures))
                if rule.readings is not None:
                    readings, skipped = rule.readings.extract(
                        doc,
                        lambda raw: self._reading_time(rule, raw, received_us),
                        failures,
                        captures,
                    )
                    out.skipped_readings += skipped
            else:
                metrics = self._plain(rule, captures, payload)
            ts_us = self._timestamp(rule, captures, doc, received_us, out, root=root)
            # Readings that name their own device need no rule device (nor its payload fields).
            own = rule.readings is not None and rule.readings.device is not None
            device_id = self._device_id(rule, captures, doc) if metrics or not own else ""
        except PayloadError as exc:
            out.failures.append(exc)
            return
        # A bad metric name or reading device drops that point only: the others are good data.
        if not self._checked.known_metric_names(metrics):
            metrics = {k: v for k, v in metrics.items() if self._name_ok(k, failures)}
        readings = [r for r in readings if self._reading_ok(r, failures)]
        # The common message (its own metrics only, one request's worth) is one record as it
        # is: ``metrics`` is this message's own dict, so it needs no copy nor regrouping.
        simple = not readings and 0 < len(metrics) <= MAX_POINTS_PER_REQUEST
        groups = None if simple else group_readings(readings, device_id, ts_us, metrics, failures)
        out.failures.extend(failures)
        if rule.reject_on_error and failures:
            return
        if groups is None:
            out.records.append(
                Record(device_id, ts_us, metrics, received_us, rule.coalesce, rule.deadband)
            )
        else:
            out.records.extend(grouped_records(groups, received_us, rule.coalesce, rule.deadband))

    def _device_id(self, rule: Rule, captures: dict[str, str], doc: object) -> str:
        device_id = rule.device_id.render(captures, doc)
        if not device_id:
            raise PayloadError("bad_device_id", "device_id template rendered empty")
        problem = self._checked.device_id_problem(device_id)
        if problem is not None:
            raise PayloadError("bad_device_id", problem)
        return device_id

    def _reading_ok(self, reading: Reading, failures: list[PayloadError]) -> bool:
        if reading.device is not None:
            problem = self.identifiers.device_id_problem(reading.device)
            if problem is not None:
                failures.append(
                    PayloadError("bad_device_id", f"reading {reading.position}: {problem}")
                )
                return False
        problem = self.identifiers.metric_name_problem(reading.name)
        if problem is not None:
            failures.append(
                PayloadError("bad_metric_name", f"reading {reading.position}: {problem}")
            )
            return False
        return True

    def _name_ok(self, name: str, failures: list[PayloadError]) -> bool:
        problem = self._checked.metric_name_problem(name)
        if problem is None:
            return True
        failures.append(PayloadError("bad_metric_name", problem))
        return False

    def _apply_each(
        self,
        rule: Rule,
        captures: dict[str, str],
        payload: bytes,
        doc: object,
        *,
        received_us: int,
        out: Mapped,
    ) -> None:
        """Map every element of the list or object at ``rule.each`` as its own message part;
        ``{@key}`` is the element's key (or index)."""
        assert rule.each is not None
        items = rule.each.get(doc)
        if isinstance(items, dict):
            pairs = [(str(k), v) for k, v in items.items()]
        elif isinstance(items, list):
            pairs = [(str(i), v) for i, v in enumerate(items)]
        else:
            where = rule.each.text
            reason = "missing_field" if items is _MISSING else "not_a_list"
            out.failures.append(PayloadError(reason, f"{where!r} holds no list or object"))
            return
        records, failures = len(out.records), len(out.failures)
        for key, element in pairs:
            if not matches(element, rule.each_where):
                out.skipped_readings += 1  # left out on purpose: counted like readings
                continue
            before = len(out.failures)
            self._apply(
                rule,
                {**captures, "@key": key},
                payload,
                element,
                received_us=received_us,
                out=out,
                root=doc,
            )
            # Name the element in its failures: one bad element among hundreds is findable.
            out.failures[before:] = [
                PayloadError(f.reason, f"{rule.each.text}[{key}]: {f.detail}")
                for f in out.failures[before:]
            ]
        if rule.reject_on_error and len(out.failures) > failures:
            del out.records[records:]  # reject_message: nothing of this message, all elements

    def _reading_time(self, rule: Rule, raw: object, received_us: int) -> int:
        spec = rule.readings_time or TimestampRule()
        ts_us = parse_timestamp(raw, spec.fmt, spec.tz, spec.pattern)
        future = self.max_future_s if spec.max_future_s is None else spec.max_future_s
        check_not_future(ts_us, received_us, future)
        check_not_past(ts_us, received_us, spec.max_past_s)
        return ts_us

    def _plain(self, rule: Rule, captures: dict[str, str], payload: bytes) -> dict[str, float]:
        transform = rule.transforms[0] if rule.transforms else IDENTITY
        assert rule.metric is not None
        name = rule.metric.render(captures)
        if not name:
            raise PayloadError("bad_metric_name", "metric template rendered empty")
        if rule.payload == "number" and transform.number is not None:
            return {name: transform.apply(name, _text(payload))}
        if rule.payload == "number":
            if not _NUMBER.fullmatch(payload):
                raise PayloadError("not_numeric", "payload is not a plain number")
            value = float(payload)
            if not math.isfinite(value):
                raise PayloadError("non_finite", "value is not finite")
            return {name: transform.apply(name, value)}
        if rule.payload == "boolean":
            return {name: transform.apply(name, parse_boolean(payload))}
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("not_text", "payload is not UTF-8 text") from None
        return {name: transform.apply(name, text)}

    def _timestamp(
        self,
        rule: Rule,
        captures: dict[str, str],
        doc: object,
        received_us: int,
        out: Mapped,
        *,
        root: object = _MISSING,
    ) -> int:
        ts = rule.timestamp
        if ts is None:
            return received_us
        if ts.capture is not None:
            raw: object = captures.get(ts.capture, "")
        else:
            assert ts.field is not None
            raw = ts.field.get(doc)
            if raw is _MISSING and root is not _MISSING:
                raw = ts.field.get(root)  # an element without its own time: the message's
            if raw is _MISSING:
                if ts.fallback_to_receive_time:
                    out.replaced_timestamps += 1
                    return received_us
                raise PayloadError("missing_timestamp", f"no field {ts.field.text!r}")
        try:
            ts_us = parse_timestamp(raw, ts.fmt, ts.tz, ts.pattern)
            future = self.max_future_s if ts.max_future_s is None else ts.max_future_s
            check_not_future(ts_us, received_us, future)
            check_not_past(ts_us, received_us, ts.max_past_s)
        except PayloadError:
            if ts.fallback_to_receive_time:
                out.replaced_timestamps += 1
                return received_us
            raise
        return ts_us


def _json_metrics(
    rule: Rule,
    doc: object,
    failures: list[PayloadError],
    captures: dict[str, str],
    plain: tuple[PlainMetric, ...] | None = None,
) -> dict[str, float]:
    if plain is not None and type(doc) is dict:
        return plain_json_metrics(plain, doc, failures)
    metrics: dict[str, float] = {}
    transforms = rule.transforms or (IDENTITY,) * len(rule.metrics)
    names = rule.metric_names or (None,) * len(rule.metrics)
    for (name, path), transform, template in zip(rule.metrics, transforms, names, strict=True):
        if template is not None:
            try:
                name = template.render(captures, doc)  # noqa: PLW2901  # the rendered name
            except PayloadError as exc:
                failures.append(exc)
                continue
            if not name:
                failures.append(PayloadError("bad_metric_name", f"{template.text!r} is empty"))
                continue
        take_value(metrics, failures, name, path.get(doc), path.text, transform)
    return metrics


def _apply_sparkplug(  # noqa: PLR0917  # one message through one rule of the mapper
    mapper: Mapper, rule: Rule, topic: str, payload: bytes, received_us: int, out: Mapped
) -> None:
    assert rule.sparkplug is not None
    try:
        result = map_sparkplug(
            rule.sparkplug,
            rule.device_id,
            topic,
            payload,
            received_us,
            mapper.aliases,
            mapper.max_future_s,
        )
    except PayloadError as exc:
        out.failures.append(exc)
        return
    _sparkplug_records(rule, result, received_us, mapper.identifiers, out)


def _sparkplug_records(
    rule: Rule,
    result: SparkplugMapped,
    received_us: int,
    ids: IdentifierLimits,
    out: Mapped,
) -> None:
    """Records of a mapped Sparkplug message, grouped by device and time."""
    out.seen = result.seen
    if result.birth is not None:
        out.births.append(result.birth)
    if result.control:
        out.ignored = not out.records and not out.failures
        return
    if result.park is not None:
        out.park = result.park
        return
    out.skipped_readings += result.left_out + sum(result.skipped.values())
    for reason, n in result.skipped.items():
        out.skipped_values[reason] = out.skipped_values.get(reason, 0) + n
    failures = result.failures
    groups: dict[tuple[str, int], dict[str, float]] = {}
    for device, ts_us, name, value in result.points:
        problem = ids.device_id_problem(device)
        if problem is not None:
            failures.append(PayloadError("bad_device_id", problem))
            continue
        problem = ids.metric_name_problem(name)
        if problem is not None:
            failures.append(PayloadError("bad_metric_name", problem))
            continue
        groups.setdefault((device, ts_us), {})[name] = value
    out.failures.extend(failures)
    if rule.reject_on_error and failures:
        return
    out.records.extend(grouped_records(groups, received_us, rule.coalesce, rule.deadband))


def _text(payload: bytes) -> str:
    """A plain payload as text for a number format (not UTF-8: not a number either)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("not_numeric", "payload is not UTF-8 text") from None
