"""The mixed plant's devices of the recipe library's conventions (beside its Tasmota plugs):
Zigbee2MQTT, Shelly Gen2, ESPHome, Home Assistant statestream, OPC UA PubSub JSON, Telegraf
JSON, a Kepware IoT Gateway agent and a gateway of plain numbers.

The payloads are shaped after each recipe's own ``tests:`` samples (bridge/recipes/*.yaml) with
the device level and the values varied, so ``discover`` sees several devices per convention and
meets the cases the recipes handle on purpose: an ESPHome ``nan``, a Home Assistant
``unavailable``, a Shelly button push without readings, a Kepware tag of bad quality, text
attributes and discovery messages under Home Assistant's prefix. Times inside payloads are the
current time, so a bridge delivers them. Pure apart from the clock: values come from the seeded
generator passed in.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

Payload = Callable[[random.Random, int], bytes]
# (topic, payload maker, retained, convention): what mixedplant.PlantTopic is built from.
Spec = tuple[str, Payload, bool, str]


def _now_iso(digits: int = 7) -> str:
    """The current UTC time as ISO 8601 with ``digits`` fractional digits (OPC UA sends 7)."""
    ns = time.time_ns()
    base = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{ns % 1_000_000_000:09d}"[:digits]
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def _r(rng: random.Random, lo: float, hi: float, digits: int = 1) -> float:
    return round(rng.uniform(lo, hi), digits)


def _const(text: str) -> Payload:
    return lambda _rng, _n: text.encode()


def _json(make: Callable[[random.Random, int], object]) -> Payload:
    return lambda rng, n: orjson.dumps(make(rng, n))


# --- Zigbee2MQTT: zigbee2mqtt/<friendly name>, zigbee2mqtt/<friendly name>/availability ---


def _z2m_climate(rng: random.Random, _n: int) -> object:
    return {"battery": rng.randint(60, 100), "humidity": _r(rng, 35, 60, 2),
            "linkquality": rng.randint(60, 200), "pressure": _r(rng, 995, 1025),
            "temperature": _r(rng, 18, 24, 2), "voltage": rng.randint(2900, 3100)}  # fmt: skip


def _z2m_plug(rng: random.Random, _n: int) -> object:
    return {"state": rng.choice(["ON", "OFF"]), "power": _r(rng, 0, 400),
            "energy": _r(rng, 1, 90, 2), "voltage": rng.randint(226, 234),
            "current": _r(rng, 0, 1.8, 2),
            "linkquality": rng.randint(60, 200), "child_lock": "UNLOCK",
            "power_on_behavior": "previous", "last_seen": time.time_ns() // 1_000_000,
            "update": {"state": "idle", "installed_version": 16908800,
                       "latest_version": 16908800},
            "update_available": None}  # fmt: skip


def _z2m_motion(rng: random.Random, _n: int) -> object:
    return {"battery": rng.randint(60, 100), "illuminance": rng.randint(0, 900),
            "linkquality": rng.randint(40, 160), "occupancy": rng.random() < 0.3,
            "voltage": rng.randint(2900, 3100), "last_seen": _now_iso(3)}  # fmt: skip


def zigbee2mqtt() -> list[Spec]:
    """Climate sensors, plugs and motion sensors, each with its retained availability."""
    kinds = {"climate": _z2m_climate, "plug": _z2m_plug, "motion": _z2m_motion}
    names = {"climate": ("hall", "office", "store", "lab"), "plug": ("press", "pump", "fan"),
             "motion": ("office", "hall", "dock")}  # fmt: skip
    out: list[Spec] = []
    for kind, make in kinds.items():
        for place in names[kind]:
            name = f"{place}_{kind}"
            out.append((f"zigbee2mqtt/{name}", _json(make), False, "zigbee2mqtt"))
            online = _const('{"state":"online"}')
            out.append((f"zigbee2mqtt/{name}/availability", online, True, "zigbee2mqtt"))
    return out


# --- Shelly Gen2: <model>-<mac>/events/rpc, /status/<component>, /online ---------------------


def _shelly_rpc(device: str, make: Callable[[random.Random, int], dict[str, object]]) -> Payload:
    def payload(rng: random.Random, n: int) -> bytes:
        params = {"ts": round(time.time(), 2), **make(rng, n)}
        method = "NotifyEvent" if "events" in params else "NotifyStatus"
        return orjson.dumps(
            {"src": device, "dst": f"{device}/events", "method": method, "params": params}
        )

    return payload


def _pm_status(rng: random.Random, n: int) -> dict[str, object]:
    if n % 2:  # the energy counter's minute update, as the device sends it between changes
        energy = {"by_minute": [_r(rng, 700, 800), _r(rng, 700, 800)],
                  "minute_ts": int(time.time()) // 60 * 60,
                  "total": _r(rng, 1000, 2000, 3)}  # fmt: skip
        return {"switch:0": {"id": 0, "aenergy": energy}}
    return {"switch:0": {"id": 0, "apower": _r(rng, 0, 60), "current": _r(rng, 0, 0.3, 3),
                         "voltage": _r(rng, 226, 234)}}  # fmt: skip


def _ht_status(rng: random.Random, _n: int) -> dict[str, object]:
    return {"temperature:0": {"id": 0, "tC": _r(rng, 18, 25), "tF": _r(rng, 64, 77)},
            "humidity:0": {"id": 0, "rh": _r(rng, 35, 60)}}  # fmt: skip


def _button(rng: random.Random, _n: int) -> dict[str, object]:
    push = rng.choice(["single_push", "double_push", "long_push"])
    return {"events": [{"component": "input:0", "id": 0, "event": push, "ts": time.time()}]}


def _switch_status(channel: int) -> Payload:
    def payload(rng: random.Random, _n: int) -> bytes:
        return orjson.dumps(
            {"id": channel, "source": "WS_in", "output": True, "apower": _r(rng, 0, 900),
             "voltage": _r(rng, 226, 234), "freq": 50.0, "current": _r(rng, 0, 4, 3),
             "pf": _r(rng, 0.8, 1, 2),
             "aenergy": {"total": _r(rng, 90000, 99000, 3), "by_minute": [13540.1, 13512.7],
                         "minute_ts": int(time.time()) // 60 * 60},
             "temperature": {"tC": _r(rng, 40, 60), "tF": _r(rng, 104, 140)}}
        )  # fmt: skip

    return payload


def shelly_gen2() -> list[Spec]:
    """Plus 1PM plugs and H&T sensors (RPC notifications), a Pro 4PM (generic status topics), an
    i4 button box (events without readings), each with its retained online flag."""
    rpc: list[tuple[str, Callable[[random.Random, int], dict[str, object]]]]
    rpc = [(f"shellyplus1pm-a8032ab1234{i}", _pm_status) for i in range(4)]
    rpc += [(f"shellyplusht-08b61fcb123{i}", _ht_status) for i in range(2)]
    rpc += [("shellyplusi4-c4d8d5561234", _button)]
    out: list[Spec] = []
    for device, make in rpc:
        out.append((f"{device}/events/rpc", _shelly_rpc(device, make), False, "shelly-gen2"))
        out.append((f"{device}/online", _const("true"), True, "shelly-gen2"))
    pro = "shellypro4pm-c8f09e8a1234"
    out += [(f"{pro}/status/switch:{c}", _switch_status(c), False, "shelly-gen2") for c in range(4)]
    out.append((f"{pro}/online", _const("true"), True, "shelly-gen2"))
    return out


# --- ESPHome: <node>/<kind>/<object id>/state, <node>/status ---------------------------------


def _esphome_number(lo: float, hi: float) -> Payload:
    def payload(rng: random.Random, n: int) -> bytes:
        # Now and then a sensor has no value yet: ESPHome publishes "nan".
        return b"nan" if n % 29 == 0 else f"{rng.uniform(lo, hi):.1f}".encode()

    return payload


def _on_off(rng: random.Random, _n: int) -> bytes:
    return rng.choice([b"ON", b"OFF"])


def esphome() -> list[Spec]:
    """Boiler-room-like nodes: sensors, a number, a binary sensor, a switch, a text sensor and
    the retained status."""
    out: list[Spec] = []
    for node in ("boiler-room", "pump-house", "cold-store", "press-hall"):
        out += [
            (f"{node}/sensor/water_temperature/state", _esphome_number(40, 70), False, "esphome"),
            (f"{node}/sensor/flow_rate/state", _esphome_number(0, 12), False, "esphome"),
            (f"{node}/number/setpoint/state", _const("65"), False, "esphome"),
            (f"{node}/binary_sensor/pump_running/state", _on_off, False, "esphome"),
            (f"{node}/switch/circulation_relay/state", _on_off, False, "esphome"),
            (f"{node}/text_sensor/firmware_version/state",
             _const("2026.11.2 Nov 20 2026, 10:15:02"), False, "esphome"),
            (f"{node}/status", _const("online"), True, "esphome"),
        ]  # fmt: skip
    return out


# --- Home Assistant statestream: homeassistant/<domain>/<entity>/<state|attribute> -----------


def _ha_number(lo: float, hi: float) -> Payload:
    def payload(rng: random.Random, n: int) -> bytes:
        # While Home Assistant starts an entity has no value: "unavailable".
        return b"unavailable" if n % 31 == 0 else f"{rng.uniform(lo, hi):.1f}".encode()

    return payload


def _ha_on_off(rng: random.Random, _n: int) -> bytes:
    return rng.choice([b"on", b"off"])


def ha_statestream() -> list[Spec]:
    """Numeric sensors, on/off entities, a climate entity with attributes, the text attributes
    and timestamps statestream publishes, and MQTT discovery messages under the same prefix."""
    base = "homeassistant"
    out: list[Spec] = []
    sensors = {"boiler_temperature": (55, 70), "outdoor_temperature": (-5, 15),
               "grid_power": (200, 4000), "tank_level": (10, 95)}  # fmt: skip
    for entity, (lo, hi) in sensors.items():
        out.append((f"{base}/sensor/{entity}/state", _ha_number(lo, hi), False, "ha-statestream"))
    out += [
        (f"{base}/sensor/boiler_temperature/unit_of_measurement", _const('"°C"'), True,
         "ha-statestream"),
        (f"{base}/sensor/boiler_temperature/last_updated",
         lambda _rng, _n: orjson.dumps(_now_iso(6)[:-1] + "+00:00"), False, "ha-statestream"),
    ]  # fmt: skip
    for domain, entity in (("binary_sensor", "boiler_door"), ("binary_sensor", "dock_door"),
                           ("switch", "circulation_pump"), ("light", "hall")):  # fmt: skip
        out.append((f"{base}/{domain}/{entity}/state", _ha_on_off, False, "ha-statestream"))
    for room in ("office", "workshop"):
        out += [
            (f"{base}/climate/{room}/state", lambda rng, _n: rng.choice([b"heat", b"off"]),
             False, "ha-statestream"),
            (f"{base}/climate/{room}/current_temperature",
             lambda rng, _n: f"{rng.uniform(18, 23):.1f}".encode(), False, "ha-statestream"),
            (f"{base}/climate/{room}/temperature", _const("21.5"), False, "ha-statestream"),
            (f"{base}/climate/{room}/friendly_name", _const(f'"{room.title()}"'), True,
             "ha-statestream"),
            (f"{base}/climate/{room}/hvac_modes", _const('["heat","off"]'), True,
             "ha-statestream"),
        ]  # fmt: skip
    # Discovery messages that devices publish under the same prefix (not statestream's).
    config = {"name": "Boiler temperature", "unit_of_measurement": "°C",
              "state_topic": "boiler-room/sensor/water_temperature/state"}  # fmt: skip
    out.append((f"{base}/sensor/boiler_temperature/config", _json(lambda _r, _n: config), True,
                "ha-discovery"))  # fmt: skip
    return out


# --- OPC UA PubSub JSON: opcua/json/data/<publisher>/<writer group>[/<writer>] -----------------


def _ua(publisher: str, messages: Callable[[random.Random, int], list[object]]) -> Payload:
    def payload(rng: random.Random, n: int) -> bytes:
        return orjson.dumps({"MessageId": f"{publisher}-{n}", "MessageType": "ua-data",
                             "PublisherId": publisher, "Messages": messages(rng, n)})  # fmt: skip

    return payload


def _press_fast(rng: random.Random, n: int) -> list[object]:
    return [
        {"DataSetWriterId": 1, "DataSetWriterName": "press", "SequenceNumber": n,
         "MetaDataVersion": {"MajorVersion": 1, "MinorVersion": 0},
         "MessageType": "ua-keyframe", "Timestamp": _now_iso(),
         "Payload": {"Temperature": _r(rng, 60, 80), "Pressure": _r(rng, 4, 7),
                     "Running": True, "Recipe": "A-17"}},
        {"DataSetWriterId": 2, "SequenceNumber": n, "Timestamp": _now_iso(1),
         "Payload": {"SpindleSpeed": rng.randint(1400, 1500), "Load": None}},
    ]  # fmt: skip


def _press_slow(rng: random.Random, _n: int) -> list[object]:
    return [{"DataSetWriterId": 4, "Payload": {"OilLevel": _r(rng, 80, 95)}}]


def _plc_datavalue(rng: random.Random, n: int) -> list[object]:
    stamp = _now_iso()
    status = {"Code": 1083310080, "Symbol": "UncertainLastUsableValue"}
    step_up = {"Value": n, "SourceTimestamp": stamp, "ServerTimestamp": stamp}
    flow = {"Value": _r(rng, 10, 15, 2), "StatusCode": status, "SourceTimestamp": stamp,
            "SourcePicoseconds": 100}  # fmt: skip
    return [{"DataSetWriterId": 1000, "SequenceNumber": n, "MessageType": "ua-deltaframe",
             "Timestamp": stamp, "Payload": {"StepUp": step_up, "FlowRate": flow}}]  # fmt: skip


def _variant(rng: random.Random, n: int) -> list[object]:
    return [{"DataSetWriterId": 3, "Timestamp": _now_iso(0),
             "Payload": {"Temperature": {"Type": 11, "Body": _r(rng, 60, 80)},
                         "Count": {"Type": 7, "Body": 10000 + n}}}]  # fmt: skip


def opcua_pubsub_json() -> list[Spec]:
    """Two press lines (plain values, Variant encoding, a message without Timestamp) and a PLC
    with DataValue encoding."""
    base = "opcua/json/data"
    specs = [
        ("press-line-1/fast-group", _ua("press-line-1", _press_fast)),
        ("press-line-1/slow-group", _ua("press-line-1", _press_slow)),
        ("press-line-2/fast-group", _ua("press-line-2", _press_fast)),
        ("press-line-2/variant-group", _ua("press-line-2", _variant)),
        ("opc.tcp-plc7-4840/group1/writer1000", _ua("opc.tcp-plc7-4840", _plc_datavalue)),
    ]
    return [(f"{base}/{path}", make, False, "opcua-pubsub-json") for path, make in specs]


# --- Telegraf JSON: telegraf/<host>/<measurement> -------------------------------------------


def _telegraf(host: str, name: str) -> Payload:
    def payload(rng: random.Random, _n: int) -> bytes:
        tags: dict[str, str] = {"host": host}
        stamp: int = int(time.time())
        if name == "cpu":
            tags["cpu"] = "cpu-total"
            idle = _r(rng, 80, 99)
            fields: dict[str, object] = {"usage_idle": idle, "usage_system": _r(rng, 0, 5),
                                         "usage_user": round(100 - idle, 1)}  # fmt: skip
        elif name == "mem":
            fields = {"available": rng.randint(5, 7) * 1_000_000_000,
                      "used_percent": _r(rng, 15, 40)}  # fmt: skip
        elif name == "disk":
            tags.update(device="sda1", fstype="ext4", mode="rw", path="/")
            fields = {"free": rng.randint(40, 45) * 1_000_000_000, "inodes_used": 312456,
                      "used_percent": _r(rng, 25, 35)}  # fmt: skip
        elif name == "system":  # a string field, and millisecond time
            fields = {"load1": _r(rng, 0, 2, 2), "n_cpus": 4, "uptime": 864000,
                      "uptime_format": "10 days,  0:00"}  # fmt: skip
            stamp = time.time_ns() // 1_000_000
        else:  # a Modbus input plugin's measurement
            tags.update(name="tank-farm", slave_id="1", type="holding_register")
            fields = {"tank_level": _r(rng, 2, 4, 2), "pump_current": _r(rng, 10, 14)}
        return orjson.dumps({"fields": fields, "name": name, "tags": tags, "timestamp": stamp})

    return payload


def telegraf_json() -> list[Spec]:
    """Three gateway hosts, each with cpu, mem, disk, system and a Modbus measurement."""
    return [
        (f"telegraf/{host}/{name}", _telegraf(host, name), False, "telegraf-json")
        for host in ("plc-gw-01", "plc-gw-02", "edge-03")
        for name in ("cpu", "mem", "disk", "system", "modbus")
    ]


# --- Kepware IoT Gateway: iotgateway, the standard template ----------------------------------


def _kepware(rng: random.Random, n: int) -> bytes:
    now_ms = time.time_ns() // 1_000_000
    values = [
        {"id": "Channel1.Device1.Tag1", "v": _r(rng, 60, 80), "q": True, "t": now_ms - 20},
        {"id": "Channel1.Device1.Tag2", "v": rng.randint(0, 9), "q": True, "t": now_ms - 20},
        {"id": "Channel1.Device1.Running", "v": rng.random() < 0.8, "q": True, "t": now_ms - 20},
        {"id": "Channel1.Device1.Tag3", "v": 0, "q": n % 5 != 0, "t": now_ms - 20},
        {"id": "Channel1.Device2.Level", "v": _r(rng, 2, 4, 2), "q": True, "t": now_ms - 270},
        {"id": "Channel2.Press1.Force", "v": _r(rng, 100, 300), "q": True, "t": now_ms - 270},
    ]
    return orjson.dumps({"timestamp": now_ms, "values": values})


def kepware_iot_gateway() -> list[Spec]:
    """One agent on its default topic with tags of three devices (one of bad quality now and
    then)."""
    return [("iotgateway", _kepware, False, "kepware-iot-gateway")]


# --- Plain numbers: <prefix>/<device>/<metric> -----------------------------------------------


def _plain(lo: float, hi: float, fmt: str = "{:.1f}") -> Payload:
    return lambda rng, _n: fmt.format(rng.uniform(lo, hi)).encode()


def plain_numbers() -> list[Spec]:
    """A gateway publishing one number per topic under its prefix "plant7"."""
    metrics = {
        "boiler-1": {"flow_temp": _plain(55, 70), "return_temp": _plain(40, 50)},
        "boiler-2": {"flow_temp": _plain(55, 70), "return_temp": _plain(40, 50)},
        "meter-4": {"energy_wh": _plain(1e6, 2e6, "{:.4e}"), "power_w": _plain(0, 5000, "{:.0f}")},
        "cold-store": {"air_temp": _plain(-22, -16), "door_open_s": _plain(0, 60, "{:.0f}")},
        "compressor-3": {"pressure_bar": _plain(6, 9, "{:.2f}"), "motor_temp": _plain(40, 80)},
    }
    return [
        (f"plant7/{device}/{metric}", make, False, "plain-numbers")
        for device, by_metric in metrics.items()
        for metric, make in by_metric.items()
    ]


def convention_specs() -> list[Spec]:
    """Every convention's topics (Tasmota's are in mixedplant), in publishing order."""
    return [
        *zigbee2mqtt(),
        *shelly_gen2(),
        *esphome(),
        *ha_statestream(),
        *opcua_pubsub_json(),
        *telegraf_json(),
        *kepware_iot_gateway(),
        *plain_numbers(),
    ]
