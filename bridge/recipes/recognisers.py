"""Recognisers of the recipe library: does one message follow a convention?

Each takes a topic and the raw payload and answers by topic shape first (cheap string checks,
so most messages are turned away before their payload is read) and payload shape second. They
never raise: a payload that is not UTF-8, not JSON, huge or deeply nested is simply not
recognised. ``discover`` calls them for every sampled message.
"""

from __future__ import annotations

import re

import orjson

# A payload larger than this is not parsed: sampled messages of the conventions here are a few
# KiB at most, and parsing megabytes per sampled message would make discovery slow.
MAX_PARSED = 256 * 1024

# The mapper's plain number (bridge/mapping/mapper.py): what a `payload: number` rule accepts.
NUMBER = re.compile(rb"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")
# ESPHome publishes "nan" for a sensor without a value: still its convention (the recipe
# dead-letters it).
_ESPHOME_NUMBER = re.compile(rb"\s*(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|nan)\s*")
_TASMOTA_POWER = re.compile(r"POWER\d*")
_TASMOTA_ANSWER = re.compile(r"RESULT|STATUS\d*")
_SHELLY_ID = re.compile(r"shelly[a-z0-9]+-[0-9a-f]{12}")
_SHELLY_METHODS = frozenset({"NotifyStatus", "NotifyFullStatus", "NotifyEvent"})
_ESPHOME_NUMERIC = frozenset({"sensor", "number"})
_ESPHOME_ON_OFF = frozenset({"binary_sensor", "switch"})
_HA_BASE = "homeassistant"
_HA_TIMESTAMPS = frozenset({"last_changed", "last_updated", "last_reported"})


def _json(payload: bytes) -> object:
    """The parsed payload, or None when it is too large or not JSON (nor UTF-8)."""
    if len(payload) > MAX_PARSED:
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:  # also invalid UTF-8 and nesting deeper than orjson allows
        return None


def _object(payload: bytes) -> dict[str, object] | None:
    doc = _json(payload)
    return doc if isinstance(doc, dict) else None


def _word(payload: bytes, *words: bytes) -> bool:
    return len(payload) <= 64 and payload.strip() in words


def _is_number(payload: bytes) -> bool:
    return len(payload) <= 64 and NUMBER.fullmatch(payload) is not None


def tasmota(topic: str, payload: bytes) -> bool:
    """``tele/<device>/SENSOR|STATE`` with a JSON object carrying Tasmota's "Time";
    ``tele/<device>/LWT`` Online/Offline; ``stat/<device>/POWER<n>`` ON/OFF;
    ``stat|tele/<device>/RESULT`` and ``stat/<device>/STATUS<n>`` with a JSON object."""
    levels = topic.split("/")
    if len(levels) != 3 or levels[0] not in ("tele", "stat") or not levels[1]:
        return False
    prefix, _, kind = levels
    if prefix == "tele" and kind in ("SENSOR", "STATE"):
        doc = _object(payload)
        return doc is not None and isinstance(doc.get("Time"), str)
    if prefix == "tele" and kind == "LWT":
        return _word(payload, b"Online", b"Offline")
    if prefix == "stat" and _TASMOTA_POWER.fullmatch(kind):
        return _word(payload, b"ON", b"OFF")
    if kind == "RESULT" or (prefix == "stat" and _TASMOTA_ANSWER.fullmatch(kind)):
        return _object(payload) is not None
    return False


def zigbee2mqtt(topic: str, payload: bytes) -> bool:
    """``zigbee2mqtt/<friendly name>`` with a JSON object, or its ``/availability`` with
    ``{"state": "online"|"offline"}`` (or the legacy plain word)."""
    levels = topic.split("/")
    if levels[0] != "zigbee2mqtt" or len(levels) not in (2, 3) or levels[1] in ("", "bridge"):
        return False
    if len(levels) == 2:
        return _object(payload) is not None
    if levels[2] != "availability":
        return False
    if _word(payload, b"online", b"offline"):
        return True
    doc = _object(payload)
    return doc is not None and doc.get("state") in ("online", "offline")


def shelly_gen2(topic: str, payload: bytes) -> bool:
    """``<shelly id>/events/rpc`` with a Notify* JSON-RPC notification,
    ``<shelly id>/status/<component>`` with a JSON object, ``<shelly id>/online`` true/false."""
    levels = topic.split("/")
    if not 2 <= len(levels) <= 3 or not _SHELLY_ID.fullmatch(levels[0]):
        return False
    if levels[1:] == ["events", "rpc"]:
        doc = _object(payload)
        return (
            doc is not None
            and doc.get("method") in _SHELLY_METHODS
            and isinstance(doc.get("params"), dict)
        )
    if len(levels) == 3 and levels[1] == "status" and levels[2]:
        return _object(payload) is not None
    if levels[1:] == ["online"]:
        return _word(payload, b"true", b"false")
    return False


def esphome(topic: str, payload: bytes) -> bool:
    """``<node>/sensor|number/<id>/state`` with a number (or "nan"),
    ``<node>/binary_sensor|switch/<id>/state`` with ON/OFF (ESPHome's upper case), and
    ``<node>/text_sensor/<id>/state`` with text, and ``<node>/status`` online/offline (its
    availability). Topics under Home Assistant's base are not ESPHome's."""
    levels = topic.split("/")
    if len(levels) == 2 and levels[1] == "status" and levels[0] not in ("", _HA_BASE):
        return _word(payload, b"online", b"offline")
    if len(levels) != 4 or levels[3] != "state" or levels[0] in ("", _HA_BASE) or not levels[2]:
        return False
    kind = levels[1]
    if kind in _ESPHOME_NUMERIC:
        return len(payload) <= 64 and _ESPHOME_NUMBER.fullmatch(payload) is not None
    if kind in _ESPHOME_ON_OFF:
        return _word(payload, b"ON", b"OFF")
    if kind == "text_sensor":
        return 0 < len(payload) <= 1024 and b"\x00" not in payload and _is_utf8(payload)
    return False


def ha_statestream(topic: str, payload: bytes) -> bool:
    """``homeassistant/<domain>/<entity>/state`` with a state word or number, and
    ``homeassistant/<domain>/<entity>/<attribute>`` with a JSON value (statestream encodes
    attributes and timestamps as JSON). Discovery's ``.../config`` is not statestream."""
    levels = topic.split("/")
    if len(levels) != 4 or levels[0] != _HA_BASE or not all(levels[1:]):
        return False
    last = levels[3]
    if last == "config":
        return False
    if last == "state":
        # States are short text ("21.5", "on", "unavailable"), never a JSON object.
        return (
            0 < len(payload) <= 255
            and b"\x00" not in payload
            and not payload.lstrip().startswith(b"{")
            and _is_utf8(payload)
        )
    doc = _json(payload)
    if last in _HA_TIMESTAMPS:
        return isinstance(doc, str)
    return doc is not None or payload.strip() == b"null"


def opcua_pubsub_json(topic: str, payload: bytes) -> bool:
    """``opcua/json/data/<publisher>/...`` with a JSON network message: MessageType "ua-data"
    and a Messages list of DataSetMessages with a Payload object."""
    levels = topic.split("/", 4)
    if len(levels) < 4 or levels[:3] != ["opcua", "json", "data"] or not levels[3]:
        return False
    doc = _object(payload)
    if doc is None or doc.get("MessageType") != "ua-data":
        return False
    messages = doc.get("Messages")
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(isinstance(m, dict) and isinstance(m.get("Payload"), dict) for m in messages)
    )


def telegraf_json(topic: str, payload: bytes) -> bool:
    """``telegraf/<host>/<measurement>`` with Telegraf's json serializer's object: fields,
    name, tags and timestamp."""
    levels = topic.split("/")
    if len(levels) != 3 or levels[0] != "telegraf" or not levels[1] or not levels[2]:
        return False
    doc = _object(payload)
    return (
        doc is not None
        and isinstance(doc.get("fields"), dict)
        and isinstance(doc.get("name"), str)
        and isinstance(doc.get("tags"), dict)
        and "timestamp" in doc
    )


def kepware_iot_gateway(topic: str, payload: bytes) -> bool:
    """``iotgateway`` with the standard template: {"timestamp": ..., "values": [{"id", "v",
    "q", "t"}, ...]}."""
    if topic != "iotgateway":
        return False
    doc = _object(payload)
    if doc is None or "timestamp" not in doc:
        return False
    values = doc.get("values")
    return isinstance(values, list) and all(
        isinstance(v, dict) and "id" in v and "v" in v for v in values
    )


def plain_numbers(topic: str, payload: bytes) -> bool:
    """``<prefix>/<device>/<metric>`` with a plain number."""
    levels = topic.split("/")
    return len(levels) == 3 and all(levels) and not topic.startswith("$") and _is_number(payload)


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
