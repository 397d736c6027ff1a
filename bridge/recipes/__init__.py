"""The recipe library: ready mapping files for the conventions plants run (Tasmota,
Zigbee2MQTT, Shelly Gen2, ESPHome, Home Assistant statestream, OPC UA PubSub JSON, Telegraf
JSON, Kepware IoT Gateway, plain numbers).

Each recipe is a complete mapping file (``version``, ``rules``, ``tests``) shipped beside this
module as package data, and a recogniser that says whether one sampled message follows the
convention (``metriqo-bridge discover`` offers the recipe it recognises). Pure code: reading
the YAML text is the only I/O, once per process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from bridge.errors import ConfigError
from bridge.recipes import recognisers

Recogniser = Callable[[str, bytes], bool]


@dataclass(frozen=True)
class Recipe:
    """One convention's mapping file and how to recognise its messages.

    Attributes:
        name: the recipe's name, e.g. ``tasmota`` (also its file, ``tasmota.yaml``).
        title: one line for humans.
        text: the recipe's YAML text: a complete mapping file (version, rules, tests).
    """

    name: str
    title: str
    text: str = field(repr=False)
    _recogniser: Recogniser = field(repr=False, compare=False)

    def recognises(self, topic: str, payload: bytes) -> bool:
        """True when this topic and payload follow the recipe's convention.

        Judged by topic shape and payload shape together; cheap, and never raises, whatever
        the bytes (``discover`` calls it for every sampled message).
        """
        return self._recogniser(topic, payload)


# Name, title, recogniser; in the order recognise() tries them (specific before general:
# plain-numbers accepts any three-level topic with a number).
_CATALOGUE: tuple[tuple[str, str, Recogniser], ...] = (
    (
        "tasmota",
        "Tasmota: tele/<device>/SENSOR, STATE, LWT and stat/<device>/POWER<n>",
        recognisers.tasmota,
    ),
    (
        "zigbee2mqtt",
        "Zigbee2MQTT: zigbee2mqtt/<friendly name> and its availability",
        recognisers.zigbee2mqtt,
    ),
    (
        "shelly-gen2",
        "Shelly Gen2+: <id>/events/rpc notifications, <id>/status/<component>, <id>/online",
        recognisers.shelly_gen2,
    ),
    (
        "esphome",
        "ESPHome: <node>/<sensor|binary_sensor|switch|number>/<id>/state, <node>/status",
        recognisers.esphome,
    ),
    (
        "ha-statestream",
        "Home Assistant MQTT Statestream: homeassistant/<domain>/<entity>/state, attributes",
        recognisers.ha_statestream,
    ),
    (
        "opcua-pubsub-json",
        "OPC UA PubSub JSON network messages: opcua/json/data/<publisher>/...",
        recognisers.opcua_pubsub_json,
    ),
    (
        "telegraf-json",
        "Telegraf MQTT output, json format: telegraf/<host>/<measurement>",
        recognisers.telegraf_json,
    ),
    (
        "kepware-iot-gateway",
        "Kepware/TOP Server IoT Gateway MQTT agent, standard template: iotgateway",
        recognisers.kepware_iot_gateway,
    ),
    (
        "plain-numbers",
        "A plain number per topic: <prefix>/<device>/<metric>",
        recognisers.plain_numbers,
    ),
)


@cache
def catalogue() -> tuple[Recipe, ...]:
    """Every recipe, in the order :func:`recognise` tries them."""
    files = resources.files(__name__)
    return tuple(
        Recipe(name, title, files.joinpath(f"{name}.yaml").read_text(encoding="utf-8"), check)
        for name, title, check in _CATALOGUE
    )


def names() -> tuple[str, ...]:
    """The recipes' names, in catalogue order."""
    return tuple(name for name, _, _ in _CATALOGUE)


def recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        ConfigError: no recipe has that name (the message lists the known ones).
    """
    for found in catalogue():
        if found.name == name:
            return found
    known = ", ".join(names())
    raise ConfigError(f"no recipe named {name!r}; the recipes are: {known}", file="recipes")


def recognise(topic: str, payload: bytes) -> Recipe | None:
    """The first recipe that recognises this message, or None."""
    for candidate in catalogue():
        if candidate.recognises(topic, payload):
            return candidate
    return None
