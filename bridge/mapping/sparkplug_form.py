"""Compiling a ``payload: sparkplug`` rule (its ``sparkplug:`` block) into a
:class:`~bridge.mapping.sparkplug_rule.SparkplugRule`.

The device id templates name ``{group}``, ``{node}`` and ``{device}``: the Sparkplug ids of the
message's topic, whatever the rule's topic filter captures. A ``sparkplug`` rule takes neither
``metrics``, ``metric``, ``collect``, ``readings``, ``each``, ``transform`` nor ``timestamp``: the
payload names its metrics and carries their times.
"""

from __future__ import annotations

from bridge.mapping.deadband_spec import compile_deadbands
from bridge.mapping.element_forms import Compiling
from bridge.mapping.mapper import Rule
from bridge.mapping.sparkplug_rule import CAPTURES, DEFAULT_EXCLUDE, SparkplugRule
from bridge.mapping.templates import Template
from bridge.mapping.topics import TopicFilter
from bridge.models import Coalesce

DEFAULT_DEVICE_ID = "{group}-{node}-{device}"
DEFAULT_NODE_DEVICE_ID = "{group}-{node}"
_NOT_HERE = ("metrics", "metric", "collect", "readings", "each", "transform", "timestamp")


def sparkplug_rule(compiling: Compiling, topic: TopicFilter) -> Rule | None:
    """The runtime rule of a ``payload: sparkplug`` rule; None or a rule with errors
    reported (the caller counts them)."""
    spec = compiling.spec
    compiling.captures |= CAPTURES  # the templates name the Sparkplug ids
    device_id = device_template(compiling)
    sparkplug = compile_sparkplug(compiling)
    deadband = compile_deadbands(spec, compiling.fail)
    if sparkplug is None:
        return None
    return Rule(
        name=spec.name,
        topic=topic,
        device_id=device_id,
        payload=spec.payload,
        metrics=(),
        metric=None,
        ts_field=None,
        ts_format="auto",
        reject_on_error=spec.on_error == "reject_message",
        keep_going=spec.continue_,
        coalesce=(
            Coalesce(round(spec.coalesce.window_s * 1_000_000), spec.coalesce.function)
            if spec.coalesce
            else None
        ),
        deadband=deadband,
        sparkplug=sparkplug,
    )


def device_template(compiling: Compiling) -> Template:
    """The rule's ``device_id`` (default ``{group}-{node}-{device}``)."""
    text = compiling.spec.device_id or DEFAULT_DEVICE_ID
    template = compiling.template(text, "device_id", payload_fields=False)
    compiling.fixed_text(template.literals, "device_id", device=True)
    return template


def compile_sparkplug(compiling: Compiling) -> SparkplugRule | None:
    """The rule's Sparkplug options; None (and errors reported) when they are wrong."""
    spec = compiling.spec
    for key in _NOT_HERE:
        if getattr(spec, key) is not None:
            compiling.fail(key, f"'{key}' is not for payload: sparkplug (see 'sparkplug:')")
    block = spec.sparkplug
    node_text = (block.node_device_id if block else None) or DEFAULT_NODE_DEVICE_ID
    node = compiling.template(node_text, ("sparkplug", "node_device_id"), payload_fields=False)
    if "device" in {p.value for p in node.parts if p.kind == "capture"}:
        compiling.fail(
            ("sparkplug", "node_device_id"),
            "a node's own metrics have no device: use {group} and {node} only",
        )
    compiling.fixed_text(node.literals, ("sparkplug", "node_device_id"), device=True)
    if block is None:
        return SparkplugRule(node_device_id=node)
    if block.online_metric is not None:
        compiling.fixed_text([block.online_metric], ("sparkplug", "online_metric"))
    for old, new in (block.rename or {}).items():
        compiling.fixed_text([new], ("sparkplug", "rename", old))
    if "/" in block.separator:
        compiling.fail(("sparkplug", "separator"), "the separator replaces '/': it cannot hold one")
    return SparkplugRule(
        node_device_id=node,
        separator=block.separator,
        include=tuple(block.include or ()),
        exclude=DEFAULT_EXCLUDE if block.exclude is None else tuple(block.exclude),
        rename=tuple((block.rename or {}).items()),
        value_map=tuple(block.map.items()) if block.map is not None else None,
        online_metric=block.online_metric,
    )


def not_sparkplug(compiling: Compiling) -> None:
    """A rule of another payload with a ``sparkplug:`` block is an error."""
    if compiling.spec.sparkplug is not None:
        compiling.fail("sparkplug", "'sparkplug' is for payload: sparkplug")
