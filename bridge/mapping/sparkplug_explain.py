"""``explain`` for Sparkplug B messages: the decoded payload and how each alias resolves.

Pure: takes the topic, the payload and the alias tables (which the BIRTHs given to ``explain``
filled through the mapper), returns lines of text or a JSON-ready dict.
"""

from __future__ import annotations

from typing import Any

from bridge.errors import PayloadError
from bridge.mapping.mapper import Mapped
from bridge.mapping.sparkplug_rule import UNKNOWN_ALIAS
from bridge.mapping.timestamps import format_timestamp
from bridge.sparkplug.aliases import AliasTables
from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.decode import decode_payload
from bridge.sparkplug.topic import SparkplugTopic, is_sparkplug_topic, parse_topic
from bridge.sparkplug.values import numeric_values


def parked_failure(mapped: Mapped) -> tuple[tuple[str, str], ...]:
    """What ``explain`` reports for a message the bridge would park: it is not mapped now."""
    if mapped.park is None:
        return ()
    group, node = mapped.park
    return (
        (
            UNKNOWN_ALIAS,
            f"no BIRTH of {group}/{node} defines its aliases (give one with --birth); the "
            "bridge parks the message until one arrives, then maps it",
        ),
    )


def _type_name(datatype: int | None) -> str:
    if datatype is None:
        return "datatype unknown"
    try:
        return DataType(datatype).name.title().replace("_", "")
    except ValueError:
        return f"datatype {datatype}"


def describe(topic: str, payload: bytes, tables: AliasTables) -> dict[str, Any] | None:
    """The decode of a Sparkplug message and its alias resolution; None when the topic is
    not a Sparkplug one; ``{"error": ...}`` when it cannot be decoded."""
    if not is_sparkplug_topic(topic):
        return None
    try:
        parsed = parse_topic(topic)
        message = decode_payload(payload)
    except PayloadError as exc:
        return {"error": exc.detail}
    out: dict[str, Any] = {"seq": message.seq, "timestamp_ms": message.timestamp_ms}
    if not isinstance(parsed, SparkplugTopic):
        out["type"] = "STATE"
        return out
    out |= {
        "type": parsed.message_type,
        "group": parsed.group,
        "node": parsed.edge_node,
        "device": parsed.device,
        "birth_known": tables.knows(parsed.group, parsed.edge_node),
    }
    metrics = []
    for m in message.metrics:
        entry: dict[str, Any] = {"alias": m.alias, "name": m.name}
        known = (
            None
            if parsed.is_birth
            else tables.resolve(parsed.group, parsed.edge_node, parsed.device, m)
        )
        datatype = m.datatype if known is None else known.datatype
        if known is not None:
            entry["name"] = known.name
            entry["from_birth"] = m.name is None
        elif m.name is None:
            entry["unknown"] = True
        entry["datatype"] = _type_name(datatype)
        if m.timestamp_ms is not None:
            entry["timestamp_ms"] = m.timestamp_ms
        if m.is_historical:
            entry["historical"] = True
        numbers = numeric_values(m, datatype)
        entry["values"] = [[s, v] for s, v in numbers.values]
        entry["skipped"] = [[s, r] for s, r in numbers.skipped]
        metrics.append(entry)
    out["metrics"] = metrics
    return out


def describe_lines(doc: dict[str, Any]) -> list[str]:
    """:func:`describe`'s result as text."""
    if "error" in doc:
        return [f"sparkplug: cannot decode: {doc['error']}"]
    if doc["type"] == "STATE":
        return ["sparkplug: a host application's STATE message"]
    where = f"{doc['group']}/{doc['node']}" + (f", device {doc['device']}" if doc["device"] else "")
    head = f"sparkplug: {doc['type']} of edge node {where}; seq {doc['seq']}"
    if doc["timestamp_ms"] is not None:
        head += f", time {format_timestamp(doc['timestamp_ms'] * 1000)}"
    lines = [head]
    if not doc["birth_known"] and doc["type"] != "NBIRTH":
        lines.append("  no BIRTH of this edge node known here (give one with --birth)")
    for m in doc["metrics"]:
        label = f"alias {m['alias']}" if m["alias"] is not None else "metric"
        if m.get("unknown"):
            lines.append(f"  {label}: unknown, no BIRTH defines it")
            continue
        source = " from the BIRTH" if m.get("from_birth") else ""
        values = ", ".join(f"{m['name']}{s} = {v:g}" for s, v in m["values"])
        skipped = ", ".join(f"{m['name']}{s}: skipped ({r})" for s, r in m["skipped"])
        what = "; ".join(x for x in (values, skipped) if x)
        extra = " (historical)" if m.get("historical") else ""
        name = m["name"] if m["alias"] is None else f"→ {m['name']}"
        lines.append(f"  {label} {name} ({m['datatype']}{source}){extra}: {what}")
    return lines
