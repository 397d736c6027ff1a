"""Rules whose metrics are fixed names read from top-level fields with no conversion, digits
or range (the most common rule) skip the general metric loop: a finite JSON number is taken as
it is, with no call per metric; anything else goes through the metric's transform exactly as
in :func:`bridge.mapping.mapper._json_metrics`. About 5 us less per message of the four-metric
rule of the peer harness (12.0 -> 6.9 us for the whole mapping)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.errors import PayloadError
from bridge.mapping.readings import MISSING as _MISSING
from bridge.mapping.transforms import IDENTITY, Transform

if TYPE_CHECKING:
    from bridge.mapping.mapper import Rule

# A metric read straight from a top-level field: (name, field, field as written, transform).
PlainMetric = tuple[str, str, str, Transform]


def plain_metrics(rule: Rule) -> tuple[PlainMetric, ...] | None:
    """The rule's metrics if every one is a fixed name read from a top-level field with no
    conversion, digits or range (the most common rule); None otherwise."""
    if rule.payload != "json" or not rule.metrics or any(rule.metric_names):
        return None
    transforms = rule.transforms or (IDENTITY,) * len(rule.metrics)
    if len(transforms) != len(rule.metrics):  # a plain payload's one transform, say
        return None
    out = []
    for (name, path), t in zip(rule.metrics, transforms, strict=True):
        if len(path.segments) != 1 or t.converts or t.digits is not None:
            return None
        if t.low is not None or t.high is not None:
            return None
        out.append((name, path.segments[0], path.text, t))
    return tuple(out)


def plain_json_metrics(
    plain: tuple[PlainMetric, ...], doc: dict[str, object], failures: list[PayloadError]
) -> dict[str, float]:
    """:func:`_json_metrics` for :func:`plain_metrics` rules: a finite JSON number is taken as
    it is, with no call per metric; anything else goes through its transform as there."""
    metrics: dict[str, float] = {}
    for name, key, text, transform in plain:
        value = doc.get(key, _MISSING)
        kind = type(value)
        if kind is float:
            if value - value == 0.0:  # type: ignore[operator]  # finite: inf - inf is nan
                metrics[name] = value  # type: ignore[assignment]
                continue
        elif kind is int and -(2**63) <= value < 2**64:  # type: ignore[operator]
            metrics[name] = float(value)  # type: ignore[arg-type]
            continue
        take_value(metrics, failures, name, value, text, transform)
    return metrics


def take_value(  # noqa: PLR0917  # one metric of the loop of either path
    metrics: dict[str, float],
    failures: list[PayloadError],
    name: str,
    value: object,
    text: str,
    transform: Transform,
) -> None:
    """Put metric ``name``'s transformed ``value`` (read from field ``text``) into
    ``metrics``, or what is wrong with it into ``failures``."""
    if value is _MISSING:
        failures.append(PayloadError("missing_field", f"{name}: no field {text!r}"))
        return
    try:
        metrics[name] = transform.apply(name, value)
    except PayloadError as exc:
        failures.append(exc)
