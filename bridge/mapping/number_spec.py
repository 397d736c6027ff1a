"""``number_format`` in the mapping file: its keys, and compiling it onto a rule's transforms
(its own module: the loader is near the module size limit)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from bridge.mapping.numbers import NumberFormat
from bridge.mapping.transforms import Transform

if TYPE_CHECKING:  # spec imports this module
    from bridge.mapping.spec import RuleSpec


class NumberFormatSpec(BaseModel):
    """How numbers written as text look: ``{decimal: ",", thousands: ".", unit: "°C"}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    decimal: Literal[".", ","] = "."
    thousands: Literal[".", ",", " ", "\u00a0", "\u202f", "'", "_"] | None = None
    unit: str | list[str] | None = Field(None, min_length=1)
    hex: bool = False
    binary: bool = False


def with_number_formats(
    spec: RuleSpec, transforms: tuple[Transform, ...], fail: Callable[..., None]
) -> tuple[Transform, ...]:
    """``transforms`` with each metric's number format: its own, else the rule's. A plain
    number rule's single transform takes the rule's; boolean and text rules take none."""
    rule_format = _compile(spec.number_format, ("number_format",), fail)
    if spec.payload in ("boolean", "text"):
        if spec.number_format is not None:
            fail("number_format", "number_format is for payload: number and json metrics")
        return transforms
    if spec.payload == "number":
        return tuple(replace(t, number=rule_format) for t in transforms)
    if spec.number_format is not None and not spec.metrics:
        fail(
            "number_format",
            "number_format applies to 'metrics' (collect and readings take JSON numbers)",
        )
    out = []
    for (name, entry), transform in zip((spec.metrics or {}).items(), transforms, strict=False):
        own = getattr(entry, "number_format", None)
        fmt = _compile(own, ("metrics", name, "number_format"), fail) if own else rule_format
        out.append(replace(transform, number=fmt))
    return tuple(out)


def _compile(
    spec: NumberFormatSpec | None, key: tuple[str, ...], fail: Callable[..., None]
) -> NumberFormat | None:
    if spec is None:
        return None
    units = (spec.unit,) if isinstance(spec.unit, str) else tuple(spec.unit or ())
    try:
        return NumberFormat.build(
            decimal=spec.decimal,
            thousands=spec.thousands,
            units=units,
            hexadecimal=spec.hex,
            binary=spec.binary,
        )
    except ValueError as exc:
        fail(key, str(exc))
        return None
