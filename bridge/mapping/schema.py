"""The JSON Schema of ``topic-mappings.yaml``, for editors (``metriqo-bridge schema``).

The schema is generated from the pydantic models that validate the file, so it follows every
change to the format; a short description is added to the main keys for editor hover text. It
checks structure only (keys, types, enums): whether a template names a capture its topic has, a
JSON rule has metrics and so on is checked by ``metriqo-bridge check``.

It declares draft 2020-12, as pydantic generates it, but uses only keywords draft-07 knows as
well (``$defs`` is reached by plain JSON-pointer ``$ref``s): the Red Hat YAML language server
validates with draft-07 rules.
"""

from __future__ import annotations

from typing import Any

import orjson

from bridge.mapping.spec import MappingFile

DIALECT = "https://json-schema.org/draft/2020-12/schema"
TITLE = "metriqo-bridge topic-mappings.yaml"
REPO_PATH = "deploy/topic-mappings.schema.json"

_NUMBER_FORMAT = (
    "Opt-in: read numbers written as text (payload: number, json string fields of 'metrics') "
    "with a decimal comma, thousands separators, a unit, hex or binary."
)
_TRANSFORM = {
    "scale": "Multiply the value by this (value * scale + offset).",
    "offset": "Add this after scaling (value * scale + offset).",
    "linear": "A linear map between two datasheet points, e.g. {from: [4, 20], to: [0, 10]} "
    "(4-20 mA to 0-10 bar); instead of scale/offset. Values outside 'from' convert too: use "
    "range to reject or clamp them.",
    "expr": "An arithmetic expression over the value x, e.g. '(x - 32) * 5 / 9': numbers, "
    "+ - * / % **, abs min max round sqrt exp log log10; instead of scale/offset.",
    "round": "Round the value to this many decimal digits (0-12).",
    "range": "[low, high] of the converted value: values outside are rejected or clamped "
    "(see out_of_range).",
    "out_of_range": "reject (default: the point is dropped and counted) or clamp.",
    "map": "Text value → number, e.g. {RUNNING: 1, STOPPED: 0}; matched exactly, then "
    "ignoring case.",
}

# Model (``$defs`` name; MappingFile is the root) → key → description. A key that is renamed
# or removed makes mapping_schema() fail, so a stale description cannot ship.
_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "MappingFile": {
        "version": "Format version of this file; always 1.",
        "rules": "Mapping rules, in order: the first rule whose topic filter matches a message "
        "wins (see continue).",
    },
    "RuleSpec": {
        "name": "Unique rule name: the rule label of metrics and dead letters.",
        "topic": "MQTT topic filter: literal levels, + (any level), {name} (any level, "
        "captured), {name:REGEX}, and # or {name#} as the last level.",
        "device_id": "Device id template: literal text, {capture}, and for json rules "
        "{$field.path}; filters such as {site|upper}, {tag|segment:.:-1}, {tag|re:^L(\\d+):1}.",
        "payload": "json (default) | number | boolean | text.",
        "metrics": "json rules: metric name → field path, or → {path: ..., transform keys}.",
        "collect": "json rules: every numeric field under a path.",
        "readings": "json rules: a list of readings, each with its own name, value and time.",
        "each": "json rules: map every element of the list or object at this path on its own; "
        "or {path: ..., where: {field: value}} to keep only matching elements.",
        "metric": "Plain payloads: the metric name template, usually from a capture.",
        "transform": "Plain payloads: value transforms (map, scale/offset or linear or expr, "
        "round, range).",
        "number_format": _NUMBER_FORMAT,
        "timestamp": "Where the measurement time comes from; without it, the receive time.",
        "on_error": "drop_metric (default): keep the message's other metrics; "
        "reject_message: dead-letter the whole message.",
        "ignore": "true: drop matching messages on purpose (counted, not dead-lettered); "
        "takes only name and topic.",
        "continue": "true: after this rule maps a message, the next matching rule maps it too.",
    },
    "EachSpec": {
        "path": "Where the list or object of elements is.",
        "where": "Field → value: only elements matching all conditions are mapped.",
    },
    "TimestampSpec": {
        "field": "json rules: the payload field path holding the time.",
        "capture": "The topic capture holding the time.",
        "format": "auto (default) | iso8601 | epoch_s | epoch_ms | epoch_us | epoch_ns; "
        "read exactly, finer than a microsecond truncated.",
        "pattern": "A strptime pattern for other strings, e.g. '%d.%m.%Y %H:%M:%S'.",
        "timezone": "Zone for zone-less times, e.g. Europe/Berlin (else they are refused).",
        "max_future_s": "Refuse times further ahead of the receive time (default 1 day).",
        "max_past_s": "Refuse times further behind the receive time (default: no limit).",
        "on_invalid": "reject (default: dead-lettered as bad_timestamp) or receive_time.",
    },
    "TransformSpec": _TRANSFORM,
    "MetricSpec": {
        "path": "Field path in the payload; dots walk into objects.",
        "number_format": "This metric's own number_format (replaces the rule's).",
        **_TRANSFORM,
    },
    "LinearSpec": {
        "from": "[a, b]: two raw values of the signal, e.g. [4, 20] (mA); a != b.",
        "to": "[c, d]: the engineering values they stand for, e.g. [0, 10] (bar).",
    },
    "NumberFormatSpec": {
        "decimal": "The decimal mark: '.' (default) or ','.",
        "thousands": "The thousands separator, if numbers have one: '.', ',', ' ', a no-break "
        "space, \"'\" or '_'; groups of exactly three digits.",
        "unit": "A unit (or a list of units) accepted after the number, with or without a "
        "space, e.g. '°C'; any other trailing text is not_numeric.",
        "hex": "true: also read hexadecimal integers such as 0x1F.",
        "binary": "true: also read binary integers such as 0b1010.",
    },
    "CollectSpec": {
        "path": "Where to collect from ('' or '.': the whole payload).",
        "include": "Globs over the dotted names below path; only matching fields are kept.",
        "exclude": "Globs over the dotted names below path; matching fields are skipped.",
        "rename": "Dotted name → metric name (literal text: no templates, no braces).",
        "prefix": "Prepended to every metric name; a template over the topic's captures, "
        "e.g. '{measurement}_'.",
        "separator": "Joins the keys of a nested field in its metric name (default '.').",
        **_TRANSFORM,
    },
    "ReadingsSpec": {
        "path": "Where the list of readings is ('' or '.': the payload itself).",
        "name": "Field of a reading holding its metric name (or give metric).",
        "metric": "Metric name template over the reading's fields, e.g. '{$id|segment:.:-1}' "
        "(instead of name).",
        "device": "Device id template over the reading's fields, e.g. "
        "'{$id|segment:.:0:-1}': one message may then carry several devices.",
        "value": "Field of a reading holding its value.",
        "time": "Field of a reading holding its time (else the receive time).",
        "time_format": "auto (default) | iso8601 | epoch_s | epoch_ms | epoch_us | epoch_ns; "
        "read exactly, finer than a microsecond truncated.",
        "where": "Field → value: only readings matching all conditions are kept.",
        "rename": "Reading name → metric name (literal text: no templates, no braces).",
        "prefix": "Prepended to every metric name (literal text: no templates, no braces).",
        **_TRANSFORM,
    },
}


def mapping_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``topic-mappings.yaml``, with key descriptions.

    Raises:
        KeyError: a described key no longer exists in the models (a bug: update the table).
    """
    schema = MappingFile.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})
    for model, keys in _DESCRIPTIONS.items():
        properties = (schema if model == "MappingFile" else defs[model])["properties"]
        for key, text in keys.items():
            properties[key]["description"] = text
    schema.pop("title", None)
    schema.pop("description", None)
    return {
        "$schema": DIALECT,
        "title": TITLE,
        "description": "How MQTT topics and payloads become Metriqo telemetry. Structure only; "
        "run 'metriqo-bridge check' for the meaning checks.",
        **schema,
    }


def schema_bytes() -> bytes:
    """:func:`mapping_schema` as the bytes written by ``schema`` (indented, final newline)."""
    return orjson.dumps(mapping_schema(), option=orjson.OPT_INDENT_2) + b"\n"
