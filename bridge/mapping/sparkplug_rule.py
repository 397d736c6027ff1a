"""The ``payload: sparkplug`` rule at run time: a Sparkplug B message → points.

Pure: the alias tables (:class:`~bridge.sparkplug.aliases.AliasTables`) are passed in, and a
BIRTH comes back as a :class:`~bridge.sparkplug.aliases.Birth` for the caller to store with the
message. What each message type does:

- NBIRTH, DBIRTH: the BIRTH's aliases replace the node's (or device's) table, at once, so the
  DATA messages received after it resolve against it; its metrics are readings (a BIRTH carries
  the current value of every metric).
- NDATA, DDATA: each metric is resolved (alias → name and datatype from its BIRTH) and read with
  :func:`bridge.sparkplug.values.numeric_values`. When an alias is unknown the whole message
  is to be **parked** (``park``: its group and edge node) until a BIRTH of that node defines it:
  the intake keeps it (:mod:`bridge.sparkplug.parking`) and maps it again then. A caller that
  parks nothing (``explain``) reports it as ``sparkplug_unknown_alias``.
- NDEATH, DDEATH: no readings, but with ``online_metric`` a 0 for the device (an NDEATH: for
  the node and every device a BIRTH of it defined), stamped with the payload's time, else the
  receive time; a BIRTH gives a 1. An NDEATH whose bdSeq is not that of the node's NBIRTH
  (a late Will of an earlier session) changes nothing.
- NCMD, DCMD, STATE: no readings; counted as ignored (so is a DEATH without ``online_metric``).

Each message of a node's session also comes back as :class:`~bridge.sparkplug.sessions.Seen`
(``seen``), for the caller to track ``seq`` and ``bdSeq`` in receive order.

Every metric's time is its own timestamp, else the payload's, else the receive time; historical
metrics (``is_historical``) are delivered with their own time like any other. Values that are no
number (``is_null``, text without a value map, bytes ...) are counted by the decoder's reason, and
metrics left out by ``include``/``exclude`` are counted as skipped readings: both on purpose, so
neither is dead-lettered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from bridge.errors import PayloadError
from bridge.mapping.templates import Template
from bridge.mapping.timestamps import check_not_before_2000, check_not_future
from bridge.sparkplug.aliases import AliasTables, Birth, bd_seq
from bridge.sparkplug.decode import SparkplugMetric, SparkplugPayload, decode_payload
from bridge.sparkplug.sessions import Seen
from bridge.sparkplug.topic import SparkplugTopic, StateTopic, parse_topic
from bridge.sparkplug.values import numeric_values

UNKNOWN_ALIAS = "sparkplug_unknown_alias"
DEFAULT_EXCLUDE = ("bdSeq", "Node Control/*")
CAPTURES = frozenset({"group", "node", "device"})


@dataclass(frozen=True, slots=True)
class SparkplugRule:
    """The compiled options of a ``payload: sparkplug`` rule (its ``sparkplug:`` block)."""

    node_device_id: Template  # the device of a node's own metrics (NBIRTH, NDATA)
    separator: str = "."  # replaces '/' of Sparkplug folder paths in metric names
    include: tuple[str, ...] = ()  # globs over Sparkplug names; empty: all
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    rename: tuple[tuple[str, str], ...] = ()  # Sparkplug name → metric name
    value_map: tuple[tuple[str, float], ...] | None = None  # text → number for text metrics
    online_metric: str | None = None  # 1 at BIRTH, 0 at DEATH, per device

    def metric_name(self, name: str, suffix: str) -> str:
        """The metric name of a Sparkplug metric (and the suffix of a part of it)."""
        renamed = dict(self.rename).get(name)
        base = renamed if renamed is not None else name.replace("/", self.separator)
        return base + suffix.replace("/", self.separator)

    def wanted(self, name: str) -> bool:
        """Whether ``include``/``exclude`` keep the Sparkplug metric ``name``."""
        if self.include and not any(fnmatchcase(name, g) for g in self.include):
            return False
        return not any(fnmatchcase(name, g) for g in self.exclude)


@dataclass(slots=True)
class SparkplugMapped:
    """What one Sparkplug message became, before the mapper's name checks and grouping."""

    points: list[tuple[str, int, str, float]] = field(default_factory=list)  # device, ts, name, v
    failures: list[PayloadError] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # decoder reasons → values
    left_out: int = 0  # metrics that include/exclude leave out
    birth: Birth | None = None
    control: bool = False  # a DEATH, command or STATE: no readings by design
    park: tuple[str, str] | None = None  # (group, node): an alias is unknown, wait for a BIRTH
    seen: Seen | None = None  # for seq / bdSeq tracking


def map_sparkplug(  # noqa: PLR0917  # the mapper's context of one message
    rule: SparkplugRule,
    device_id: Template,
    topic_text: str,
    payload: bytes,
    received_us: int,
    tables: AliasTables,
    max_future_s: float,
) -> SparkplugMapped:
    """Map one message of a Sparkplug topic; bad topics and payloads raise ``PayloadError``
    (``bad_sparkplug``), everything else comes back in the result."""
    topic = parse_topic(topic_text)
    out = SparkplugMapped()
    if isinstance(topic, StateTopic) or topic.is_command:
        out.control = True
        return out
    message = decode_payload(payload)
    group, node = topic.group, topic.edge_node
    is_node = topic.device is None
    out.seen = Seen(
        group,
        node,
        topic.device,
        topic.message_type,
        message.seq,
        bd_seq(message.metrics) if is_node and not topic.is_data else None,
    )
    device = _device(device_id if not is_node else rule.node_device_id, group, node, topic.device)
    ts_us = _state_time(message.timestamp_ms, received_us, max_future_s)
    if topic.is_death:
        out.control = True
        if rule.online_metric is not None:
            _offline(rule, device_id, topic, out.seen, tables, device, ts_us, out)
        return out
    if topic.is_birth:
        out.birth = tables.birth(group, node, topic.device, message.metrics)
        if rule.online_metric is not None:
            out.points.append((device, ts_us, rule.online_metric, 1.0))
    for metric in message.metrics:
        _metric(rule, topic, message, metric, device, received_us, tables, max_future_s, out)
        if out.park is not None:
            # Nothing of it now, all of it once the BIRTH is known: its values stay in order.
            return SparkplugMapped(park=out.park, seen=out.seen)
    return out


def _device(template: Template, group: str, node: str, device: str | None) -> str:
    rendered = template.render({"group": group, "node": node, "device": device or ""})
    if not rendered:
        raise PayloadError("bad_device_id", "device_id template rendered empty")
    return rendered


def _state_time(timestamp_ms: int | None, received_us: int, max_future_s: float) -> int:
    """The time of a BIRTH's or DEATH's online point: the payload's, or the receive time when
    it has none or one no reading could have (before 2000, too far ahead): the state changed
    when the message says, else when it arrived."""
    if timestamp_ms is None:
        return received_us
    try:
        check_not_before_2000(timestamp_ms * 1000)
        check_not_future(timestamp_ms * 1000, received_us, max_future_s)
    except PayloadError:
        return received_us
    return timestamp_ms * 1000


def _offline(  # noqa: PLR0917  # one DEATH message, with its context
    rule: SparkplugRule,
    device_id: Template,
    topic: SparkplugTopic,
    seen: Seen,
    tables: AliasTables,
    device: str,
    ts_us: int,
    out: SparkplugMapped,
) -> None:
    """The ``online_metric`` 0 points of a DEATH."""
    assert rule.online_metric is not None
    devices = [device]
    if topic.device is None:
        current = tables.session(topic.group, topic.edge_node)
        if None not in (current, seen.bd_seq) and current != seen.bd_seq:
            return  # the Will of an earlier session: the current one goes on
        devices += [
            _device(device_id, topic.group, topic.edge_node, d)
            for d in tables.devices(topic.group, topic.edge_node)
        ]
    out.points += [(d, ts_us, rule.online_metric, 0.0) for d in devices]
    out.control = False


def _metric(  # noqa: PLR0917  # one metric of the message, with its context
    rule: SparkplugRule,
    topic: SparkplugTopic,
    message: SparkplugPayload,
    metric: SparkplugMetric,
    device: str,
    received_us: int,
    tables: AliasTables,
    max_future_s: float,
    out: SparkplugMapped,
) -> None:
    known = tables.resolve(topic.group, topic.edge_node, topic.device, metric)
    if known is None:
        out.park = (topic.group, topic.edge_node)
        return
    if not rule.wanted(known.name):
        out.left_out += 1
        return
    ms = metric.timestamp_ms if metric.timestamp_ms is not None else message.timestamp_ms
    ts_us = received_us if ms is None else ms * 1000
    try:
        check_not_before_2000(ts_us)
        check_not_future(ts_us, received_us, max_future_s)
    except PayloadError as exc:
        out.failures.append(PayloadError(exc.reason, f"{known.name}: {exc.detail}"))
        return
    value_map = dict(rule.value_map) if rule.value_map is not None else None
    numbers = numeric_values(metric, known.datatype, value_map=value_map)
    for suffix, value in numbers.values:
        out.points.append((device, ts_us, rule.metric_name(known.name, suffix), value))
    for _suffix, reason in numbers.skipped:
        out.skipped[reason] = out.skipped.get(reason, 0) + 1
