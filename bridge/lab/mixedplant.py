"""A "mixed plant": about 430 topics of mixed conventions on one broker, for ``discover`` and
``tap`` to find their way through (``simulate-sensors --mixed-plant``, and the tests).

What a real plant broker looks like before anyone wrote a mapping: devices of every convention
the recipe library knows — Tasmota plugs (``SENSOR`` and ``STATE`` JSON, ``LWT`` text, ``POWER``
ON/OFF) here, the others (Zigbee2MQTT, Shelly Gen2, ESPHome, Home Assistant statestream, OPC UA
PubSub JSON, Telegraf, Kepware IoT Gateway, plain numbers under a gateway prefix) in
:mod:`bridge.lab.plant_conventions` — beside shapes no recipe knows: plain numbers in a custom
tree, custom JSON objects of several shapes (one with an epoch-millisecond time), machine state
words, door contacts (true/false), camera snapshots (binary) and free-text logs. Topics are
published round-robin, so every topic comes round once per :attr:`MixedPlant.topics` messages;
availability flags, machine states and attributes are retained, as devices publish them.
paho-mqtt runs in its own network thread. ``PlantTopic.convention`` names the recipe of a
topic (or a generic shape), so tests can tell what ``discover`` should recognise.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bridge.lab.plant_conventions import convention_specs

Payload = Callable[[random.Random, int], bytes]


@dataclass(frozen=True, slots=True)
class PlantTopic:
    """One topic of the plant and how its payloads are made (from a seeded rng and a count)."""

    topic: str
    make: Payload
    retain: bool = False
    convention: str = ""


def _num(lo: float, hi: float) -> Payload:
    return lambda rng, _n: f"{rng.uniform(lo, hi):.2f}".encode()


def _tasmota_sensor(rng: random.Random, _n: int) -> bytes:
    return orjson.dumps(
        {
            "Time": "2026-12-03T10:00:00",
            "ENERGY": {"Power": rng.randint(0, 2000), "Voltage": round(rng.uniform(225, 235), 1)},
            "AM2301": {"Temperature": round(rng.uniform(18, 26), 1)},
            "TempUnit": "C",
        }
    )


def _tasmota_state(rng: random.Random, n: int) -> bytes:
    return orjson.dumps(
        {"Time": "2026-12-03T10:00:00", "Uptime": f"0T0{n % 10}:00:00", "Heap": rng.randint(20, 30),
         "Wifi": {"RSSI": rng.randint(40, 90), "Signal": rng.randint(-90, -40)}}
    )  # fmt: skip


def _climate(rng: random.Random, _n: int) -> bytes:
    now_ms = time.time_ns() // 1_000_000
    return orjson.dumps(
        {"ts": now_ms, "temp": round(rng.uniform(19, 24), 2), "rh": round(rng.uniform(30, 60), 1)}
    )


def _counter(rng: random.Random, n: int) -> bytes:
    return orjson.dumps({"count": n, "rate": round(rng.uniform(0, 5), 2), "meta": {"fw": "1.2"}})


def _gateway(rng: random.Random, n: int) -> bytes:
    load = {"cpu": round(rng.uniform(0, 1), 3), "mem": round(rng.uniform(0, 1), 3)}
    return orjson.dumps({"uptime": 1000 + n, "load": load})


def _word(*words: str) -> Payload:
    return lambda rng, _n: rng.choice(words).encode()


def _binary(rng: random.Random, _n: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + bytes(rng.randrange(256) for _ in range(60))


def _log(rng: random.Random, n: int) -> bytes:
    return f"job {n} finished in {rng.randint(1, 900)} ms on worker {rng.randint(1, 9)}".encode()


def plant_topics() -> list[PlantTopic]:
    """The plant's topics (about 430), in publishing order."""
    out: list[PlantTopic] = []
    for i in range(1, 21):
        dev = f"plug-{i:02d}"
        out += [
            PlantTopic(f"tele/{dev}/SENSOR", _tasmota_sensor, convention="tasmota"),
            PlantTopic(f"tele/{dev}/STATE", _tasmota_state, convention="tasmota"),
            PlantTopic(f"tele/{dev}/LWT", _word("Online"), retain=True, convention="tasmota"),
            PlantTopic(f"stat/{dev}/POWER", _word("ON", "OFF"), convention="tasmota"),
        ]
    for site in ("berlin", "lyon", "porto"):
        for m in range(1, 11):
            base = f"plant/{site}/machine-{m}"
            out += [
                PlantTopic(f"{base}/temp", _num(20, 90), convention="numbers"),
                PlantTopic(f"{base}/pressure", _num(1, 6), convention="numbers"),
                PlantTopic(f"{base}/speed", _num(0, 3000), convention="numbers"),
                PlantTopic(
                    f"{base}/mode", _word("RUNNING", "IDLE", "STOPPED"), True, "state words"
                ),
            ]
    out += [PlantTopic(f"sensors/s{i:03d}", _num(-10, 40), convention="numbers") for i in range(40)]
    out += [PlantTopic(f"lab/room-{i}/climate", _climate, convention="json") for i in range(20)]
    out += [PlantTopic(f"line/{i}/counter", _counter, convention="json") for i in range(15)]
    out += [PlantTopic(f"gw/gw-{i}/status", _gateway, convention="json") for i in range(5)]
    out += [
        PlantTopic(f"door/d{i}/open", _word("true", "false"), convention="booleans")
        for i in range(10)
    ]
    out += [PlantTopic(f"cam/cam-{i}/snapshot", _binary, convention="binary") for i in range(5)]
    out += [PlantTopic(f"logs/svc-{i}", _log, convention="free text") for i in range(5)]
    out += [PlantTopic(*spec) for spec in convention_specs()]
    return out


class MixedPlant:
    """Publishes the plant's topics round-robin at ``rate`` messages/s (QoS 0)."""

    def __init__(self, host: str, port: int, *, rate: float = 500.0, seed: int = 1) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.host = host
        self.port = port
        self.rate = rate
        self.topics = plant_topics()
        self.published = 0
        self._rng = random.Random(seed)  # noqa: S311 - reproducible values, not secrets
        self._stop = threading.Event()

    def message(self, n: int) -> tuple[str, bytes, bool]:
        """The ``n``-th message: topic, payload, retain flag."""
        t = self.topics[n % len(self.topics)]
        return t.topic, t.make(self._rng, n), t.retain

    def stop(self) -> None:
        """Ask :meth:`publish_for` to stop (any thread)."""
        self._stop.set()

    def publish_for(self, seconds: float) -> int:
        """Publish until ``seconds`` have passed or :meth:`stop`; returns messages published.

        Raises:
            OSError: the broker cannot be reached.
        """
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"mixed-plant-{self.port}")
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        try:
            start = time.monotonic()
            n = 0
            while not self._stop.is_set() and time.monotonic() - start < seconds:
                # Publish in small bursts: per-message sleeps cannot keep thousands per second.
                due = int((time.monotonic() - start) * self.rate) + 1
                while n < due:
                    topic, payload, retain = self.message(n)
                    client.publish(topic, payload, qos=0, retain=retain)
                    n += 1
                self._stop.wait(0.01)
            self.published = n
            return n
        finally:
            client.disconnect()
            client.loop_stop()
