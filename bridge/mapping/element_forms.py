"""Compiling the element forms of a json rule: ``readings`` (a list of readings, each with its own
name, value, time and, by templates over its fields, its own device and metric name) and ``each``
(every element of a list or object mapped on its own, with ``where`` conditions).

Kept apart from :mod:`bridge.mapping.loader`'s rule compiler, which it works through: both forms
name their elements' fields as ``{$field}`` in templates and keep elements by ``where``.
"""

from __future__ import annotations

from typing import Protocol
from zoneinfo import ZoneInfo

from bridge.mapping.mapper import FieldPath, TimestampRule
from bridge.mapping.readings import ReadingsRule, Where
from bridge.mapping.spec import RuleSpec, TransformSpec
from bridge.mapping.templates import Template
from bridge.mapping.transforms import Transform


class Compiling(Protocol):
    """What the element forms use of the rule compiler (``loader._Compiler``)."""

    spec: RuleSpec
    captures: set[str]

    def fail(self, key: str | tuple[str, ...], message: str) -> None: ...

    def template(
        self, text: str, key: str | tuple[str, ...], *, payload_fields: bool
    ) -> Template: ...

    def fixed_text(
        self, parts: list[str], key: str | tuple[str, ...], *, device: bool = False
    ) -> None: ...

    def prefix_and_names(
        self,
        prefix: str,
        rename: dict[str, str] | None,
        key: str,
        literals: list[str] | None = None,
    ) -> None: ...

    def segments(self, text: str, key: tuple[str, ...]) -> tuple[str, ...]: ...

    def field_path(self, text: str, key: tuple[str, ...]) -> FieldPath: ...

    def zone(self, name: str | None, key: tuple[str, ...]) -> ZoneInfo | None: ...

    def transform(self, t: TransformSpec, key: tuple[str, ...]) -> Transform: ...


def devices_per_reading(spec: RuleSpec) -> bool:
    """True when ``readings.device`` names the device of every point of the rule, so that the
    rule needs no ``device_id`` (``metrics`` and ``collect`` have no reading to name theirs)."""
    return (
        spec.readings is not None
        and spec.readings.device is not None
        and not spec.metrics
        and spec.collect is None
    )


def compile_each(c: Compiling, json_payload: bool) -> tuple[FieldPath | None, Where]:
    """``each: path`` or ``each: {path: ..., where: {...}}``: where the elements are, and the
    conditions an element must meet to be mapped."""
    each = c.spec.each
    if each is None:
        return None, ()
    if not json_payload:
        c.fail("each", "'each' is for payload: json")
        return None, ()
    c.captures.add("@key")
    if isinstance(each, str):
        return c.field_path(each, ("each",)), ()
    return c.field_path(each.path, ("each", "path")), compile_where(c, each.where, ("each",))


def compile_where(
    c: Compiling, where: dict[str, str | bool | int | float] | None, at: tuple[str, ...]
) -> Where:
    """``where: {field.path: value}`` as (path segments, value) pairs."""
    return tuple((c.segments(k, (*at, "where", k)), v) for k, v in (where or {}).items())


def compile_readings(c: Compiling) -> tuple[ReadingsRule | None, TimestampRule | None]:
    """The ``readings`` rule and how its elements' times are read."""
    r = c.spec.readings
    if r is None:
        return None, None
    at = ("readings",)
    c.prefix_and_names(r.prefix, r.rename, "readings")
    tz = c.zone(r.timezone, (*at, "timezone"))
    if (r.name is None) == (r.metric is None):
        c.fail(
            at,
            "give one of 'name' (the field of a reading holding its metric name) or "
            "'metric' (a template over the reading's fields, e.g. '{$id|segment:.:-1}')",
        )
    metric = device = None
    if r.metric is not None:
        metric = c.template(r.metric, (*at, "metric"), payload_fields=True)
        c.fixed_text([r.prefix, *metric.literals], (*at, "metric"))
    if r.device is not None:
        device = c.template(r.device, (*at, "device"), payload_fields=True)
        c.fixed_text(device.literals, (*at, "device"), device=True)
    rule = ReadingsRule(
        path=c.segments(r.path, (*at, "path")),
        name=c.segments(r.name, (*at, "name")) if r.name else (),
        value=c.segments(r.value, (*at, "value")),
        time=c.segments(r.time, (*at, "time")) if r.time else None,
        where=compile_where(c, r.where, at),
        rename=dict(r.rename or {}),
        prefix=r.prefix,
        transform=c.transform(r, at),
        metric=metric,
        device=device,
    )
    return rule, TimestampRule(fmt=r.time_format, pattern=r.pattern, tz=tz)
