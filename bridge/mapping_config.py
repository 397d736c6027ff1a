"""Loading, validating and compiling ``topic-mappings.yaml`` into runtime rules.

pydantic checks the structure (unknown keys are errors); the compile step checks meaning (a
template naming a capture its topic does not have, a JSON rule without metrics). Both report
``file:line: key.path: message`` and all errors are collected before failing, so a user fixes a
file in one pass.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.errors import ConfigError, ConfigErrors
from bridge.mapping import FieldPath, Rule, Template
from bridge.timestamps import TimestampFormat
from bridge.topics import parse_filter
from bridge.yamlfile import KeyPath, LineIndex, load_yaml_file, load_yaml_text

_TEMPLATE_PART = re.compile(r"\{([^{}]*)\}|([^{}]+)|(\{|\})")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TimestampSpec(_Strict):
    """Where a rule finds the measurement time in the payload."""

    field: str = Field(min_length=1)
    format: TimestampFormat = "auto"


class RuleSpec(_Strict):
    """One mapping rule as written in the file."""

    name: str = Field(pattern=_NAME)
    topic: str = Field(min_length=1)
    device_id: str = Field(min_length=1)
    payload: Literal["json", "number"] = "json"
    metrics: dict[str, str] | None = None
    metric: str | None = None
    timestamp: TimestampSpec | None = None
    on_error: Literal["drop_metric", "reject_message"] = "drop_metric"


class MappingFile(_Strict):
    """The whole ``topic-mappings.yaml``."""

    version: Literal[1]
    rules: list[RuleSpec] = Field(min_length=1)


def load_mappings(path: Path) -> list[Rule]:
    """Load, validate and compile a mapping file; raise ConfigError(s) naming file and line."""
    data, index = load_yaml_file(path)
    return compile_mappings(data, index)


def load_mappings_text(text: str, name: str = "<text>") -> list[Rule]:
    """Same as :func:`load_mappings` for YAML held in memory (tests, ``check`` of stdin)."""
    data, index = load_yaml_text(text, name)
    return compile_mappings(data, index)


def compile_mappings(data: object, index: LineIndex) -> list[Rule]:
    """Validate parsed YAML and compile it into runtime rules."""
    if data is None:
        raise index.error((), "file is empty; expected 'version: 1' and 'rules:'")
    try:
        spec = MappingFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors([_pydantic_error(err, index) for err in exc.errors()]) from None
    errors: list[ConfigError] = []
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, rule_spec in enumerate(spec.rules):
        at: KeyPath = ("rules", i)
        if rule_spec.name in seen:
            errors.append(
                index.error(
                    (*at, "name"), f"duplicate rule name (also rule {seen[rule_spec.name]})"
                )
            )
        seen.setdefault(rule_spec.name, i)
        rule = _compile_rule(rule_spec, at, index, errors)
        if rule is not None:
            rules.append(rule)
    if errors:
        raise ConfigErrors(errors)
    return rules


def _pydantic_error(err: object, index: LineIndex) -> ConfigError:
    assert isinstance(err, dict)
    loc: KeyPath = tuple(p for p in err["loc"] if isinstance(p, str | int))
    message = str(err["msg"])
    if err["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see the README for the keys a rule takes)"
    return index.error(loc, message)


def _compile_rule(
    spec: RuleSpec, at: KeyPath, index: LineIndex, errors: list[ConfigError]
) -> Rule | None:
    before = len(errors)
    try:
        topic = parse_filter(spec.topic)
    except ValueError as exc:
        errors.append(index.error((*at, "topic"), str(exc)))
        return None
    captures = set(topic.capture_names)
    device_id = _template(spec.device_id, captures, (*at, "device_id"), index, errors)
    metric_paths: tuple[tuple[str, FieldPath], ...] = ()
    metric_name: Template | None = None
    if spec.payload == "json":
        if spec.metric is not None:
            errors.append(
                index.error((*at, "metric"), "'metric' is for payload: number; use 'metrics'")
            )
        if not spec.metrics:
            errors.append(
                index.error((*at, "metrics"), "a json rule needs 'metrics: {name: field.path}'")
            )
        else:
            metric_paths = tuple(
                (name, _field_path(path, (*at, "metrics", name), index, errors))
                for name, path in spec.metrics.items()
            )
            for name in spec.metrics:
                if not name.strip():
                    errors.append(index.error((*at, "metrics", name), "metric name is empty"))
    else:
        if spec.metrics is not None:
            errors.append(
                index.error((*at, "metrics"), "'metrics' is for payload: json; use 'metric'")
            )
        if spec.metric is None:
            errors.append(
                index.error((*at, "metric"), "a number rule needs 'metric: <name or {capture}>'")
            )
        else:
            metric_name = _template(spec.metric, captures, (*at, "metric"), index, errors)
        if spec.timestamp is not None:
            errors.append(
                index.error(
                    (*at, "timestamp"), "a plain number payload has no field to read a time from"
                )
            )
    ts_path: FieldPath | None = None
    ts_format: TimestampFormat = "auto"
    if spec.timestamp is not None and spec.payload == "json":
        ts_path = _field_path(spec.timestamp.field, (*at, "timestamp", "field"), index, errors)
        ts_format = spec.timestamp.format
    if len(errors) > before:
        return None
    return Rule(
        name=spec.name,
        topic=topic,
        device_id=device_id,
        payload=spec.payload,
        metrics=metric_paths,
        metric=metric_name,
        ts_field=ts_path,
        ts_format=ts_format,
        reject_on_error=spec.on_error == "reject_message",
    )


def _template(
    text: str, captures: set[str], at: KeyPath, index: LineIndex, errors: list[ConfigError]
) -> Template:
    parts: list[tuple[bool, str]] = []
    for m in _TEMPLATE_PART.finditer(text):
        name, literal, stray = m.groups()
        if stray is not None:
            errors.append(index.error(at, f"unbalanced {stray!r} in template {text!r}"))
        elif name is not None:
            if name not in captures:
                known = ", ".join(sorted(captures)) or "none"
                errors.append(
                    index.error(at, f"template uses {{{name}}} but the topic captures: {known}")
                )
            parts.append((True, name))
        else:
            parts.append((False, literal))
    return Template(text=text, parts=tuple(parts))


def _field_path(text: str, at: KeyPath, index: LineIndex, errors: list[ConfigError]) -> FieldPath:
    segments = tuple(text.split("."))
    if any(not s for s in segments):
        errors.append(index.error(at, f"field path {text!r} has an empty segment"))
    return FieldPath(text=text, segments=segments)
