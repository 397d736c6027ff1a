"""A simulated sensor fleet that publishes what the mapping file describes (demo, benchmarks).

Each simulated device is driven by one rule of the loaded mapping: its topic is the rule's filter
with every capture filled in, its device id is the rule's ``device_id`` template rendered with
those captures, and a JSON payload carries a value at every field path the rule reads (plus the
timestamp field in the rule's format). A user who renames a metric or a device template still
gets a fleet the bridge maps cleanly.

The fleet records, for every message the broker acknowledged, exactly which points the bridge
must deliver (`ExpectedPoint`). paho-mqtt runs in its own network thread (``loop_start``);
:meth:`SensorFleet.publish_for` blocks, so async callers run it with ``asyncio.to_thread``.
paho types stay inside this module.
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bridge.errors import BridgeError
from bridge.mapping.mapper import FieldPath, Rule, Template
from bridge.mapping.topics import TopicRouter
from bridge.mapping.transforms import Transform

QOS = 1
MAX_INFLIGHT = 1000
# MQTT v5 PUBACK reason 0x10: accepted, but no client subscribes to the topic, so the broker
# dropped the message. Before the bridge's SUBSCRIBE is processed this is what a publish gets.
NO_MATCHING_SUBSCRIBERS = 0x10
_FAILURE = 0x80  # reason codes from 0x80 up are refusals
_SITES = ("berlin", "lyon", "turin", "gdansk", "porto", "brno")
_NUMBER_METRICS = ("voltage", "current")


class FleetError(BridgeError):
    """The fleet could not connect, or the broker refused or never acknowledged its messages."""


@dataclass(frozen=True, slots=True)
class ExpectedPoint:
    """A point the bridge must deliver for one acknowledged message.

    Attributes:
        device_id: the API device id the mapping renders for the topic.
        metric: the API metric name.
        timestamp_us: measurement time from the payload (epoch µs), or None when the payload
            carries none and the bridge stamps its receive time.
        value: the published value (exactly representable after a JSON round trip).
    """

    device_id: str
    metric: str
    timestamp_us: int | None
    value: float


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes
    points: tuple[ExpectedPoint, ...]


class _Signal:
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
class _Stream:
    """One topic of one simulated device."""

    topic: str
    metric: str  # API metric name, for plain-number payloads
    signal: _Signal | None


class _Device:
    """A simulated device: one rule, its captures, and a signal per metric."""

    def __init__(self, rule: Rule, captures: dict[str, str], rng: random.Random) -> None:
        self.rule = rule
        self.device_id = rule.device_id.render(captures)
        self.streams: list[_Stream] = []
        self.signals = {name: _Signal(f"{name} {path.text}", rng) for name, path in rule.metrics}
        self._next_stream = 0
        if rule.payload == "number":
            assert rule.metric is not None
            for per_metric in _metric_captures(rule):
                full = {**captures, **per_metric}
                name = rule.metric.render(full)
                self.streams.append(_Stream(_topic(rule, full), name, _Signal(name, rng)))
        else:
            self.streams.append(_Stream(_topic(rule, captures), "", None))

    def next_stream(self) -> _Stream:
        stream = self.streams[self._next_stream % len(self.streams)]
        self._next_stream += 1
        return stream


def _unsimulated(rule: Rule) -> str:
    """Why the fleet cannot publish for this rule and predict its points exactly ('' if it can)."""
    if rule.ignore:
        return "an ignore rule"
    if rule.payload not in ("json", "number"):
        return f"payload: {rule.payload} is not simulated"
    if rule.topic.patterns:
        return "its topic has pattern levels"
    if rule.device_id.uses_payload:
        return "its device_id reads payload fields"
    if rule.keep_going:
        return "continue: true"
    if rule.coalesce is not None:
        return "it coalesces points"
    if rule.collect is not None or rule.readings is not None or rule.each is not None:
        return "collect/readings/each rules are not simulated"
    if any(t != Transform() for t in rule.transforms):
        return "it transforms values"
    ts = rule.timestamp
    if ts is not None and (ts.capture or ts.pattern or ts.tz or ts.fallback_to_receive_time):
        return "its timestamp form is not simulated"
    parts = (*rule.device_id.parts, *(rule.metric.parts if rule.metric else ()))
    if any(p.filters for p in parts):
        return "its templates use filters"
    return ""


def _metric_captures(rule: Rule) -> list[dict[str, str]]:
    """Capture values naming each metric a number device publishes (e.g. ``{metric}``).

    A capture the metric template uses and the device id template does not names the metric;
    one topic per metric name is published for it.
    """
    assert rule.metric is not None
    names = _template_captures(rule.metric) - _template_captures(rule.device_id)
    own = [name for name in rule.topic.capture_names if name in names]
    if not own:
        return [{}]
    # The first such capture takes the metric names; any others keep their per-device value.
    return [{own[0]: metric} for metric in _NUMBER_METRICS]


def _template_captures(template: Template) -> set[str]:
    return {part.value for part in template.parts if part.kind == "capture"}


def _capture_value(name: str, index: int) -> str:
    """A topic level for capture ``name`` of device ``index``, unique per device."""
    n = index + 1
    values = {
        "site": _SITES[index % len(_SITES)],
        "line": f"line{n}",
        "machine": f"press-{n}",
        "device": f"meter-{n:02d}",
    }
    return values.get(name, f"{name}{n}")


def _topic(rule: Rule, captures: dict[str, str]) -> str:
    levels = []
    for literal, capture in zip(rule.topic.levels, rule.topic.captures, strict=True):
        if literal is not None:
            levels.append(literal)
        else:
            levels.append(captures[capture] if capture is not None else "any")
    return "/".join(levels)


def _put(doc: dict[str, Any], path: FieldPath, value: object) -> bool:
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


def _format_ts(ts_ms: int, fmt: str) -> object:
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


def _check_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the simulated fleet publishes only to a loopback address, not {host!r}")


class SensorFleet:
    """Publishes simulated readings at a total rate and records the points they must become.

    Args:
        host: broker address; a loopback IP unless ``any_host`` (tests and the demo never
            publish anywhere else by accident).
        port: broker port.
        devices: number of simulated devices, spread over the rules round-robin.
        rate: messages per second, all devices together.
        seed: seeds every generated value (`random.Random`), so runs are reproducible.
        rules: the compiled mapping; the shipped ``topic-mappings.yaml`` when None.
        clock: wall clock for payload timestamps (epoch seconds).
        any_host: allow a broker that is not on loopback (``simulate-sensors --host``).
        keep_expected: record the expected points (off for a simulator that runs for days).

    Attributes:
        expected: points the bridge must deliver, for every message the broker accepted.
        published: messages acknowledged by the broker (PUBACK) and routed to a subscriber.
        unrouted: acknowledged messages the broker dropped because nobody subscribed.
        rejected: messages the broker refused (PUBACK reason code >= 0x80).
        unconfirmed: messages with no PUBACK when publishing ended.
        skipped_rules: rule names the fleet cannot simulate, with the reason.
    """

    def __init__(
        self,
        host: str,
        port: int,
        devices: int,
        rate: float,
        seed: int = 1,
        *,
        rules: list[Rule] | None = None,
        clock: Callable[[], float] = time.time,
        any_host: bool = False,
        keep_expected: bool = True,
    ) -> None:
        if not any_host:
            _check_loopback(host)
        if devices < 1:
            raise ValueError("devices must be at least 1")
        if rate <= 0:
            raise ValueError("rate must be positive")
        if rules is None:
            from bridge.mapping.loader import load_mappings

            rules = load_mappings(Path(__file__).resolve().parents[2] / "topic-mappings.yaml")
        self.host = host
        self.port = port
        self.rate = rate
        self._rng = random.Random(seed)
        self._clock = clock
        self.skipped_rules: dict[str, str] = {}
        usable = [r for r in rules if self._usable(r, rules)]
        if not usable:
            raise ValueError("no rule of the mapping can be simulated: " + str(self.skipped_rules))
        self.devices = [
            _Device(usable[i % len(usable)], self._captures(usable[i % len(usable)], i), self._rng)
            for i in range(devices)
        ]
        self._client_id = f"metriqo-demo-fleet-{seed}"
        self._last_ms: dict[str, int] = {}
        self._next_device = 0
        self._lock = threading.Condition()
        self._inflight: dict[int, _Message] = {}
        self._early: dict[int, int] = {}  # PUBACKs that beat publish() returning their mid
        self._connected = threading.Event()
        self._connect_error = ""
        self._stopping = threading.Event()
        self.expected: list[ExpectedPoint] = []
        self._keep_expected = keep_expected
        self.published = 0
        self.unrouted = 0
        self.rejected = 0
        self.unconfirmed = 0

    # -- building devices and messages ---------------------------------------------------

    def _usable(self, rule: Rule, rules: list[Rule]) -> bool:
        reason = _unsimulated(rule)
        if reason:
            self.skipped_rules[rule.name] = reason
            return False
        if rule.topic.tail:
            # A '#' filter matches topics no template can name; only simulate fixed shapes.
            self.skipped_rules[rule.name] = "topic ends in '#'"
            return False
        probe = _Device(rule, self._captures(rule, 0), random.Random(0))
        router = TopicRouter([r.topic for r in rules])
        for stream in probe.streams:
            routed = router.route(stream.topic)
            if routed is None or rules[routed[0]] is not rule:
                self.skipped_rules[rule.name] = "an earlier rule matches its topics first"
                return False
        if rule.payload == "json":
            doc: dict[str, Any] = {}
            paths = [p for _, p in rule.metrics]
            if rule.ts_field is not None:
                paths.append(rule.ts_field)
            if not all(_put(doc, p, 0) for p in paths):
                self.skipped_rules[rule.name] = "its field paths overlap"
                return False
        return True

    @staticmethod
    def _captures(rule: Rule, index: int) -> dict[str, str]:
        return {name: _capture_value(name, index) for name in rule.topic.capture_names}

    def _timestamp_ms(self, device_id: str) -> int:
        # Strictly increasing per device id, so every point id device/metric@time is unique
        # even when the clock stands still or several simulated devices share one id.
        now_ms = int(self._clock() * 1000)
        ts = max(now_ms, self._last_ms.get(device_id, 0) + 1)
        self._last_ms[device_id] = ts
        return ts

    def _next_message(self) -> _Message:
        device = self.devices[self._next_device % len(self.devices)]
        self._next_device += 1
        stream = device.next_stream()
        rule = device.rule
        if stream.signal is not None:
            value = stream.signal.next(self._rng)
            point = ExpectedPoint(device.device_id, stream.metric, None, value)
            return _Message(stream.topic, repr(value).encode(), (point,))
        doc: dict[str, Any] = {}
        ts_us: int | None = None
        if rule.ts_field is not None:
            ts_ms = self._timestamp_ms(device.device_id)
            ts_us = ts_ms * 1000
            _put(doc, rule.ts_field, _format_ts(ts_ms, rule.ts_format))
        points = []
        for name, path in rule.metrics:
            value = device.signals[name].next(self._rng)
            _put(doc, path, int(value) if value.is_integer() else value)
            points.append(ExpectedPoint(device.device_id, name, ts_us, value))
        return _Message(stream.topic, orjson.dumps(doc), tuple(points))

    # -- MQTT ----------------------------------------------------------------------------

    def _on_connect(self, _c: Any, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._connect_error = f"broker refused the fleet's connection: {reason}"
        self._connected.set()

    def _on_publish(self, _c: Any, _ud: Any, mid: int, reason: Any, _props: Any) -> None:
        # paho's network thread, holding paho's own lock: only take ours, never call paho.
        code = int(reason.value)
        with self._lock:
            message = self._inflight.pop(mid, None)
            if message is None:
                self._early[mid] = code
            else:
                self._settle(message, code)

    def _settle(self, message: _Message, code: int) -> None:
        if code == NO_MATCHING_SUBSCRIBERS:
            self.unrouted += 1
        elif code >= _FAILURE:
            self.rejected += 1
        else:
            self.published += 1
            if self._keep_expected:
                self.expected.extend(message.points)
        self._lock.notify_all()

    def _publish(self, client: mqtt.Client, message: _Message) -> None:
        info = client.publish(message.topic, message.payload, qos=QOS)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise FleetError(f"publish failed: {mqtt.error_string(info.rc)}")
        with self._lock:
            code = self._early.pop(info.mid, None)
            if code is None:
                self._inflight[info.mid] = message
            else:
                self._settle(message, code)

    def _wait_acks(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: not self._inflight, timeout)

    def _await_subscriber(self, client: mqtt.Client, timeout: float) -> None:
        """Publish the first message until the broker routes it to a subscriber.

        A message published before the bridge's SUBSCRIBE is processed is dropped by the
        broker (PUBACK 0x10); republishing that same message is safe because nobody got it.
        The bridge subscribes to all its filters in one packet, so one routed message proves
        every topic of the fleet reaches it.
        """
        message = self._next_message()
        deadline = time.monotonic() + timeout
        while not self._stopping.is_set():
            self._publish(client, message)
            if not self._wait_acks(max(0.1, deadline - time.monotonic())):
                raise FleetError("the broker did not acknowledge the fleet's first message")
            with self._lock:
                if not self.unrouted:
                    return
                self.unrouted = 0  # not lost: the same message is published again
            if time.monotonic() > deadline:
                raise FleetError(f"no client subscribed to {message.topic!r} within {timeout} s")
            self._stopping.wait(0.05)

    def stop(self) -> None:
        """Make a running :meth:`publish_for` return early (from any thread)."""
        self._stopping.set()

    def publish_for(
        self,
        seconds: float,
        on_progress: Callable[[int], None] | None = None,
        *,
        subscriber_timeout: float = 10.0,
        ack_timeout: float = 30.0,
    ) -> None:
        """Publish ``rate * seconds`` messages, evenly spaced, then wait for their PUBACKs.

        Blocking: call it with ``asyncio.to_thread``. ``on_progress`` gets the count of
        acknowledged messages about ten times a second (from this thread).

        Raises:
            FleetError: no connection, no subscriber, or a publish the client refused.
        """
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=mqtt.MQTTv5
        )
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        try:
            client.connect(self.host, self.port, keepalive=30, clean_start=True)
        except OSError as exc:
            raise FleetError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        client.loop_start()
        try:
            if not self._connected.wait(10.0):
                raise FleetError(f"no CONNACK from {self.host}:{self.port} in 10 s")
            if self._connect_error:
                raise FleetError(self._connect_error)
            self._await_subscriber(client, subscriber_timeout)
            total = max(1, round(seconds * self.rate))
            start = time.monotonic()
            last_report = start
            for k in range(1, total):
                due = start + k / self.rate
                if self._stopping.wait(max(0.0, due - time.monotonic())):
                    break
                self._publish(client, self._next_message())
                if on_progress is not None and time.monotonic() - last_report >= 0.1:
                    last_report = time.monotonic()
                    on_progress(self.published)
            self._wait_acks(0.0 if self._stopping.is_set() else ack_timeout)
            with self._lock:
                self.unconfirmed = len(self._inflight)
            if on_progress is not None:
                on_progress(self.published)
        finally:
            client.disconnect()
            client.loop_stop()
