"""Recipes: complete mapping files for known device conventions, and how to recognise them.

PLACEHOLDER: this module holds the interface and one recipe (Tasmota ``tele/<device>/SENSOR``)
so that ``discover`` can offer recipes; the recipe library branch replaces it with the full
catalogue behind the same interface (:class:`Recipe`, :func:`catalogue`, :func:`recipe`,
:func:`recognise`).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True)
class Recipe:
    """A known convention: a complete mapping file (version, rules, tests) for it.

    Attributes:
        name: short id, e.g. ``tasmota``.
        title: one line for people.
        text: the mapping file YAML.
    """

    name: str
    title: str
    text: str

    def recognises(self, topic: str, payload: bytes) -> bool:
        """True when this message follows the recipe's convention."""
        return _RECOGNISERS[self.name](topic, payload)


def _tasmota_sensor(topic: str, payload: bytes) -> bool:
    levels = topic.split("/")
    if len(levels) != 3 or levels[0] != "tele" or levels[2] != "SENSOR" or not levels[1]:
        return False
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    # Tasmota stamps every SENSOR message with its local "Time".
    return isinstance(doc, dict) and "Time" in doc


_TASMOTA = """\
version: 1
rules:
  # Tasmota sensor telemetry, e.g. tele/plug-3/SENSOR:
  #   {"Time": "2026-12-03T10:00:00", "ENERGY": {"Power": 45, "Voltage": 229}, "TempUnit": "C"}
  # Every numeric field becomes a metric (ENERGY.Power, ...). Tasmota's "Time" is local time
  # without a zone, so the receive time is used.
  - name: tasmota-sensor
    topic: "tele/{device}/SENSOR"
    device_id: "{device}"
    collect: {path: ""}
tests:
  - name: tasmota energy and climate readings
    topic: tele/plug-3/SENSOR
    payload_json:
      Time: "2026-12-03T10:00:00"
      ENERGY: {Power: 45, Voltage: 229.5}
      AM2301: {Temperature: 21.5}
      TempUnit: C
    expect:
      - device_id: plug-3
        metrics: {ENERGY.Power: 45, ENERGY.Voltage: 229.5, AM2301.Temperature: 21.5}
"""

_RECOGNISERS = {"tasmota": _tasmota_sensor}
_CATALOGUE = (Recipe("tasmota", "Tasmota sensor telemetry (tele/<device>/SENSOR)", _TASMOTA),)


def catalogue() -> tuple[Recipe, ...]:
    """Every recipe, in the order ``discover`` offers them."""
    return _CATALOGUE


def recipe(name: str) -> Recipe:
    """The recipe called ``name`` (KeyError if there is none)."""
    for r in _CATALOGUE:
        if r.name == name:
            return r
    raise KeyError(name)


def recognise(topic: str, payload: bytes) -> Recipe | None:
    """The first recipe that recognises this message, if any."""
    for r in _CATALOGUE:
        if r.recognises(topic, payload):
            return r
    return None
