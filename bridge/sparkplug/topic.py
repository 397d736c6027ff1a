"""Parse a Sparkplug B topic: ``parse_topic("spBv1.0/G/DDATA/E/D")``.

Topics (Eclipse Sparkplug 3.0, 4.1)::

    spBv1.0/<group_id>/<NBIRTH|NDATA|NDEATH|NCMD>/<edge_node_id>
    spBv1.0/<group_id>/<DBIRTH|DDATA|DDEATH|DCMD>/<edge_node_id>/<device_id>
    spBv1.0/STATE/<host_id>          (a host application's state, 3.0)
    STATE/<host_id>                  (the same in Sparkplug 2.2)

An id is one non-empty topic level without the MQTT wildcards ``+`` and ``#``. Anything else
raises ``PayloadError("bad_sparkplug", ...)`` saying what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import PayloadError

NAMESPACE = "spBv1.0"
NODE_TYPES = frozenset({"NBIRTH", "NDATA", "NDEATH", "NCMD"})
DEVICE_TYPES = frozenset({"DBIRTH", "DDATA", "DDEATH", "DCMD"})
MESSAGE_TYPES = NODE_TYPES | DEVICE_TYPES


@dataclass(frozen=True, slots=True)
class SparkplugTopic:
    """An edge node's or device's message: ``device`` is None for the N* types."""

    group: str
    message_type: str
    edge_node: str
    device: str | None = None

    @property
    def is_birth(self) -> bool:
        return self.message_type in ("NBIRTH", "DBIRTH")

    @property
    def is_death(self) -> bool:
        return self.message_type in ("NDEATH", "DDEATH")

    @property
    def is_data(self) -> bool:
        return self.message_type in ("NDATA", "DDATA")

    @property
    def is_command(self) -> bool:
        return self.message_type in ("NCMD", "DCMD")

    def text(self) -> str:
        """The topic again."""
        parts = [NAMESPACE, self.group, self.message_type, self.edge_node]
        return "/".join([*parts, self.device] if self.device is not None else parts)


@dataclass(frozen=True, slots=True)
class StateTopic:
    """A host application's STATE topic; ``legacy`` for the 2.2 form ``STATE/<host_id>``."""

    host_id: str
    legacy: bool = False

    def text(self) -> str:
        return f"STATE/{self.host_id}" if self.legacy else f"{NAMESPACE}/STATE/{self.host_id}"


def is_sparkplug_topic(topic: str) -> bool:
    """Whether a topic is in the Sparkplug B namespace (or a 2.2 STATE topic), well formed or
    not: cheap, for recognising topics before parsing them."""
    return topic.startswith((f"{NAMESPACE}/", "STATE/"))


def parse_topic(topic: str) -> SparkplugTopic | StateTopic:
    """The parts of a Sparkplug B topic; ``PayloadError("bad_sparkplug")`` if it is not one."""
    parts = topic.split("/")
    if parts[0] == "STATE":
        return StateTopic(_one_id(parts, 1, "host id", topic), legacy=True)
    if parts[0] != NAMESPACE:
        raise _bad(topic, f"the namespace is {parts[0]!r}, not {NAMESPACE!r}")
    if len(parts) >= 2 and parts[1] == "STATE":
        return StateTopic(_one_id(parts, 2, "host id", topic))
    if len(parts) < 4:
        raise _bad(topic, "expected spBv1.0/<group>/<message type>/<edge node>[/<device>]")
    group, kind, node = parts[1], parts[2], parts[3]
    _check_id(group, "group id", topic)
    if kind not in MESSAGE_TYPES:
        known = ", ".join(sorted(MESSAGE_TYPES))
        raise _bad(topic, f"unknown message type {kind!r} (one of {known})")
    _check_id(node, "edge node id", topic)
    if kind in NODE_TYPES:
        if len(parts) != 4:
            raise _bad(topic, f"{kind} has no device id: expected 4 levels, got {len(parts)}")
        return SparkplugTopic(group, kind, node)
    if len(parts) != 5:
        raise _bad(topic, f"{kind} needs a device id: expected 5 levels, got {len(parts)}")
    _check_id(parts[4], "device id", topic)
    return SparkplugTopic(group, kind, node, parts[4])


def _one_id(parts: list[str], index: int, what: str, topic: str) -> str:
    if len(parts) != index + 1:
        raise _bad(topic, f"expected {'/'.join(parts[:index])}/<{what}>")
    _check_id(parts[index], what, topic)
    return parts[index]


def _check_id(value: str, what: str, topic: str) -> None:
    if not value:
        raise _bad(topic, f"the {what} is empty")
    if "+" in value or "#" in value:
        raise _bad(topic, f"the {what} {value!r} holds an MQTT wildcard")


def _bad(topic: str, why: str) -> PayloadError:
    return PayloadError("bad_sparkplug", f"topic {topic[:200]!r}: {why}")
