"""``explain``'s conversion lines: the numeric steps (``linear``, ``expr``, ``scale``/``offset``,
``round``, ``range``) a matched rule takes each metric through, the raw value the payload holds
and what the steps make of it. Pure: runs the rule's own transforms on the value."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from bridge.errors import PayloadError
from bridge.mapping.mapper import Rule
from bridge.mapping.transforms import Transform


@dataclass(frozen=True, slots=True)
class ConversionStep:
    """The numeric steps a matched rule takes a metric through (``linear``, ``expr``,
    ``scale``/``offset``, ``round``, ``range``), with the raw value where one is read."""

    rule: str
    metric: str  # the metric name (or template), or "collect" / "readings"
    raw: str | None  # the value in the payload, as written; None if it cannot be shown
    steps: str
    outcome: str = ""  # "= 37" or "→ out_of_range": the steps run on the raw value


def conversions(rule: Rule, payload: bytes) -> list[ConversionStep]:
    """The numeric steps of each of the rule's metrics, with the raw value each reads and
    what the steps make of it."""
    if rule.payload != "json":
        transform = rule.transforms[0] if rule.transforms else None
        if transform is None or not (steps := transform.steps()):
            return []
        text = payload[:40].decode("utf-8", "replace").strip()
        name = rule.metric.text if rule.metric is not None else ""
        plain = transform.number is None and rule.payload == "number"
        raw = _float(text) if plain else None
        return [ConversionStep(rule.name, name, text, steps, _outcome(transform, name, raw))]
    try:
        doc: object = orjson.loads(payload)
    except orjson.JSONDecodeError:
        doc = None
    found = []
    for (name, path), transform in zip(rule.metrics, rule.transforms, strict=False):
        if steps := transform.steps():
            value = path.get(doc) if rule.each is None and isinstance(doc, dict) else None
            shown = _raw(value)
            outcome = _outcome(transform, name, value) if shown is not None else ""
            found.append(ConversionStep(rule.name, name, shown, steps, outcome))
    for label, part in (("collect", rule.collect), ("readings", rule.readings)):
        if part is not None and (steps := part.transform.steps()):
            found.append(ConversionStep(rule.name, label, None, steps))
    return found


def _outcome(transform: Transform, name: str, raw: object) -> str:
    """`` = 5`` or `` → out_of_range``: the transform run on the raw value, as the mapper
    runs it (nothing for a value explain cannot read on its own)."""
    if raw is None:
        return ""
    try:
        return f"= {number_text(transform.apply(name, raw))}"
    except PayloadError as exc:
        return f"→ {exc.reason}"


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # not a number: the failure line says why
        return None


def _raw(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return number_text(float(value))
    return repr(value)[:40] if isinstance(value, str) else None


def number_text(value: float) -> str:
    """Whole numbers as integers (counters: "10422", not "10422.0"); the rest in full."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
