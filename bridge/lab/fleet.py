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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bridge.errors import BridgeError
from bridge.lab.fleet_devices import (
    Device,
    ExpectedPoint,
    Message,
    band_of,
    captures_for,
    format_ts,
    put,
    unsimulated,
)
from bridge.lab.fleet_shapes import PayloadBuilder, build_payload, shaped, step_ms, unsupported
from bridge.lab.fleet_shapes import expected as shaped_points
from bridge.lab.fleet_sparkplug import sparkplug_device
from bridge.mapping.mapper import Mapper, Rule
from bridge.mapping.topics import TopicRouter

QOS = 1
MAX_INFLIGHT = 1000
# MQTT v5 PUBACK reason 0x10: accepted, but no client subscribes to the topic, so the broker
# dropped the message. Before the bridge's SUBSCRIBE is processed this is what a publish gets.
NO_MATCHING_SUBSCRIBERS = 0x10
_FAILURE = 0x80  # reason codes from 0x80 up are refusals


class FleetError(BridgeError):
    """The fleet could not connect, or the broker refused or never acknowledged its messages."""


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
        rules: the compiled mapping; the packaged example ``topic-mappings.yaml`` when None.
        clock: wall clock for payload timestamps (epoch seconds).
        any_host: allow a broker that is not on loopback (``simulate-sensors --host``).
        keep_expected: record the expected points (off for a simulator that runs for days).
        payloads: rule name → how to build that rule's payloads, for rules whose payloads the
            generic builders cannot guess (a recipe's device format, say); their points come
            from the mapper like every shaped rule's.
        topics: rule name → real topics its devices publish on in turn (a recipe's test topics).

    Attributes:
        expected: points the bridge must deliver, for every message the broker accepted.
        published: messages acknowledged by the broker (PUBACK) and routed to a subscriber.
        unrouted: acknowledged messages the broker dropped because nobody subscribed.
        ignored: of ``published``, messages on an ignore rule's topics (nothing may arrive).
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
        payloads: Mapping[str, PayloadBuilder] | None = None,
        topics: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if not any_host:
            _check_loopback(host)
        if devices < 1:
            raise ValueError("devices must be at least 1")
        if rate <= 0:
            raise ValueError("rate must be positive")
        if rules is None:
            from bridge.lab.examples import EXAMPLE_MAPPING
            from bridge.mapping.loader import load_mappings

            rules = load_mappings(EXAMPLE_MAPPING)
        self.host = host
        self.port = port
        self.rate = rate
        self._rng = random.Random(seed)
        self._clock = clock
        self.skipped_rules: dict[str, str] = {}
        self._payloads = dict(payloads or {})
        self._topics = {name: tuple(given) for name, given in (topics or {}).items() if given}
        self._last_ms: dict[str, int] = {}
        # Shaped rules' points come from the real mapper, one per rule (each already routes
        # its own topics first: _usable checks that).
        self._mappers: dict[str, Mapper] = {}
        usable = [r for r in rules if self._usable(r, rules)]
        if not usable:
            raise ValueError("no rule of the mapping can be simulated: " + str(self.skipped_rules))
        n = len(usable)
        self.devices = [self._device(usable[i % n], i, rank=i // n) for i in range(devices)]
        self._client_id = f"metriqo-demo-fleet-{seed}"
        self._next_device = 0
        self._lock = threading.Condition()
        self._inflight: dict[int, Message] = {}
        self._early: dict[int, int] = {}  # PUBACKs that beat publish() returning their mid
        self._connected = threading.Event()
        self._connect_error = ""
        self._stopping = threading.Event()
        self.expected: list[ExpectedPoint] = []
        self._keep_expected = keep_expected
        self.published = 0
        self.ignored = 0
        self.unrouted = 0
        self.rejected = 0
        self.unconfirmed = 0

    # -- building devices and messages ---------------------------------------------------

    def _device(
        self, rule: Rule, index: int, rng: random.Random | None = None, rank: int = 0
    ) -> Device:
        if rule.sparkplug is not None:  # an edge node: its BIRTHs go first, on their topics
            return sparkplug_device(rule, rank, rng or self._rng, int(self._clock() * 1000))
        topic = given[rank % len(given)] if (given := self._topics.get(rule.name)) else None
        captures = captures_for(rule, index, topic)
        device = Device(rule, captures, rng or self._rng, shaped=self._shaped(rule), topic=topic)
        if device.shaped:
            # The device id may come from the payload ({$serial}, {@key}): map a sample.
            probe = self._shaped_message(device, random.Random(index), self._clock())
            device.device_id = ", ".join(dict.fromkeys(p.device_id for p in probe.points))
        return device

    def _shaped(self, rule: Rule) -> bool:
        return rule.name in self._payloads or shaped(rule)

    def _usable(self, rule: Rule, rules: list[Rule]) -> bool:
        if rule.name in self._payloads:
            reason = ""
        else:
            reason = unsupported(rule) if shaped(rule) else unsimulated(rule)
        if reason:
            self.skipped_rules[rule.name] = reason
            return False
        if rule.topic.tail and rule.sparkplug is None:
            # A '#' filter matches topics no template can name; only simulate fixed shapes.
            self.skipped_rules[rule.name] = "topic ends in '#'"
            return False
        if self._shaped(rule):
            self._mappers[rule.name] = Mapper([rule])
            try:
                probe = self._device(rule, 0, random.Random(0))
            except ValueError as exc:
                self.skipped_rules[rule.name] = str(exc)
                return False
        else:
            probe = Device(rule, captures_for(rule, 0, None), random.Random(0))
        router = TopicRouter([r.topic for r in rules])
        for topic in probe.topics():
            routed = router.route(topic)
            if routed is None or rules[routed[0]] is not rule:
                self.skipped_rules[rule.name] = "an earlier rule matches its topics first"
                return False
        return True

    def _timestamp_ms(self, device_id: str, step: int = 1) -> int:
        # Strictly increasing per device id, so every point id device/metric@time is unique
        # even when the clock stands still or several simulated devices share one id. A time
        # format without milliseconds steps a whole second (it runs ahead of the clock when a
        # device publishes faster than once a second).
        now_ms = int(self._clock() * 1000)
        ts = max(now_ms, self._last_ms.get(device_id, 0) + step)
        self._last_ms[device_id] = ts
        return ts

    def _next_message(self) -> Message:
        device = self.devices[self._next_device % len(self.devices)]
        self._next_device += 1
        if device.shaped:
            return self._shaped_message(device, self._rng, self._clock())
        stream = device.next_stream()
        rule = device.rule
        if stream.signal is not None:
            value = stream.signal.next(self._rng)
            point = _point(device, stream.metric, None, value)
            return Message(stream.topic, repr(value).encode(), (point,))
        doc: dict[str, Any] = {}
        ts_us: int | None = None
        if rule.ts_field is not None:
            ts_ms = self._timestamp_ms(device.device_id)
            ts_us = ts_ms * 1000
            put(doc, rule.ts_field, format_ts(ts_ms, rule.ts_format))
        points = []
        for name, path in rule.metrics:
            value = device.signals[name].next(self._rng)
            put(doc, path, int(value) if value.is_integer() else value)
            points.append(_point(device, name, ts_us, value))
        return Message(stream.topic, orjson.dumps(doc), tuple(points))

    def _shaped_message(self, device: Device, rng: random.Random, now_s: float) -> Message:
        rule = device.rule
        ts_ms = self._timestamp_ms(device.device_id or device.streams[0].topic, step_ms(rule))
        topic, payload = device.message(rng, ts_ms, self._payloads.get(rule.name, build_payload))
        mapper = self._mappers[rule.name]
        points = shaped_points(mapper, rule, topic, payload, int(now_s * 1_000_000))
        return Message(topic, payload, points, ignored=rule.ignore)

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

    def _settle(self, message: Message, code: int) -> None:
        if code == NO_MATCHING_SUBSCRIBERS:
            self.unrouted += 1
        elif code >= _FAILURE:
            self.rejected += 1
        else:
            self.published += 1
            self.ignored += message.ignored
            if self._keep_expected:
                self.expected.extend(message.points)
        self._lock.notify_all()

    def _publish(self, client: mqtt.Client, message: Message) -> None:
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


def _point(device: Device, metric: str, ts_us: int | None, value: float) -> ExpectedPoint:
    """A point a plain JSON or number device publishes, with its rule's deadband for it."""
    return ExpectedPoint(device.device_id, metric, ts_us, value, None, band_of(device.rule, metric))
