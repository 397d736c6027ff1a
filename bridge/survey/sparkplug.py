"""``discover`` and Sparkplug B: topics under ``spBv1.0/`` become one ``payload: sparkplug``
rule per group, not generic patterns (their protobuf payloads look like any binary, and their
message types and edge nodes are levels of one convention, not separate devices).

A draft Sparkplug rule has no ``tests:``: a mapping test's payload is text, and a DATA message
needs its BIRTH to mean anything. ``explain --birth`` is the way to try one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from bridge.errors import PayloadError
from bridge.sparkplug.topic import SparkplugTopic, is_sparkplug_topic, parse_topic
from bridge.survey.topics import TopicStats

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_LISTED = 6  # edge nodes named in a rule's comment


def split_sparkplug(
    topics: Iterable[TopicStats],
) -> tuple[list[TopicStats], list[TopicStats]]:
    """(Sparkplug topics, the others)."""
    sparkplug: list[TopicStats] = []
    others: list[TopicStats] = []
    for t in topics:
        (sparkplug if is_sparkplug_topic(t.topic) else others).append(t)
    return sparkplug, others


def sparkplug_rules(
    topics: Sequence[TopicStats], taken: set[str]
) -> list[tuple[list[str], dict[str, Any]]]:
    """One rule per Sparkplug group seen, with a comment naming its edge nodes and message
    types; STATE topics (host applications) need no rule."""
    groups: dict[str, tuple[dict[str, None], dict[str, None], int]] = {}
    for t in topics:
        try:
            parsed = parse_topic(t.topic)
        except PayloadError:
            continue
        if not isinstance(parsed, SparkplugTopic):
            continue
        nodes, kinds, messages = groups.get(parsed.group, ({}, {}, 0))
        nodes[parsed.edge_node] = None
        kinds[parsed.message_type] = None
        groups[parsed.group] = (nodes, kinds, messages + t.messages)
    out: list[tuple[list[str], dict[str, Any]]] = []
    for group, (nodes, kinds, messages) in sorted(groups.items()):
        name = _unique(f"sparkplug-{_NAME_CHARS.sub('-', group).strip('-.') or 'group'}", taken)
        listed = ", ".join(list(nodes)[:_LISTED]) + (", ..." if len(nodes) > _LISTED else "")
        notes = [
            f"Sparkplug B group {group}: {messages} message(s) of {len(nodes)} edge node(s)"
            f" ({listed}); seen: {', '.join(sorted(kinds))}.",
            "DATA sent by alias is named by the BIRTHs, which the bridge keeps in its spool;",
            "DATA before its BIRTH waits for it. See docs/guide/sparkplug.md.",
        ]
        if not any(k in kinds for k in ("NBIRTH", "DBIRTH")):
            notes.append("No BIRTH seen while listening: DATA waits until the nodes re-birth.")
        rule = {
            "name": name,
            "topic": f"spBv1.0/{group}/#",
            "payload": "sparkplug",
            "device_id": "{node}-{device}",
            "sparkplug": {"node_device_id": "{node}"},
        }
        out.append((notes, rule))
    return out


def _unique(name: str, taken: set[str]) -> str:
    out, n = name[:60], 1
    while out in taken:
        n += 1
        out = f"{name[:56]}-{n}"
    taken.add(out)
    return out
