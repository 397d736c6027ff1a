"""Value transforms of the mapping language: value maps, one conversion step (scale and offset, a
linear map or an expression), rounding, and a valid range with a chosen action. Pure code;
compiled once per metric."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bridge.errors import PayloadError
from bridge.mapping.conversions import Conversion, pair_text
from bridge.mapping.numbers import NumberFormat

_TRUE = frozenset({"true", "on", "yes", "1"})
_FALSE = frozenset({"false", "off", "no", "0"})


@dataclass(frozen=True, slots=True)
class Transform:
    """Turns a raw payload value into the number sent to the API.

    Order: value map (for text and booleans) → finite check → one conversion step
    (``value * scale + offset``, or ``convert``: a linear map or an expression) → finite check →
    rounding → range check on the result (reject the point, or clamp it into the range).
    """

    scale: float = 1.0
    offset: float = 0.0
    digits: int | None = None
    low: float | None = None
    high: float | None = None
    clamp: bool = False
    value_map: dict[str, float] = field(default_factory=dict)
    folded_map: dict[str, float] = field(default_factory=dict)
    number: NumberFormat | None = None  # reads numbers written as text (number_format)
    convert: Conversion | None = None  # linear or expr; replaces scale and offset
    # Whether there is a conversion step at all, worked out once: the hot path of a metric
    # without one tests this one flag (it used to compare scale and offset).
    converts: bool = field(init=False, default=False, compare=False)

    def __post_init__(self) -> None:
        step = self.convert is not None or self.scale != 1.0 or self.offset != 0.0
        object.__setattr__(self, "converts", step)

    @staticmethod
    def build(
        *,
        scale: float | None = None,
        offset: float | None = None,
        digits: int | None = None,
        valid_range: list[float] | None = None,
        clamp: bool = False,
        value_map: dict[str, float] | None = None,
        convert: Conversion | None = None,
    ) -> Transform:
        """A transform from the mapping file's keys (all optional)."""
        vmap = dict(value_map or {})
        low, high = (valid_range[0], valid_range[1]) if valid_range else (None, None)
        return Transform(
            scale=1.0 if scale is None else scale,
            offset=0.0 if offset is None else offset,
            digits=digits,
            low=low,
            high=high,
            clamp=clamp,
            value_map=vmap,
            folded_map={k.casefold(): v for k, v in vmap.items()},
            convert=convert,
        )

    def apply(self, name: str, raw: object) -> float:
        """The transformed value of metric ``name``; PayloadError with a reason if unusable."""
        if isinstance(raw, bool):
            if not self.value_map:
                raise PayloadError("boolean_value", f"{name}: boolean, not a number")
            raw = "true" if raw else "false"
        if isinstance(raw, str):
            value = self.lookup(name, raw) if self.number is None else self._text(name, raw)
        elif isinstance(raw, int | float):
            value = float(raw)
        else:
            raise PayloadError("not_numeric", f"{name}: {type(raw).__name__}, not a number")
        if not math.isfinite(value):
            raise PayloadError("non_finite", f"{name}: value is not finite")
        if self.converts:
            if self.convert is not None:
                value = self.convert.run(name, value)
                if not math.isfinite(value):
                    raise PayloadError("non_finite", f"{name}: {self.convert.text} gives {value}")
            else:
                value = value * self.scale + self.offset
                if not math.isfinite(value):  # checked before the range, or clamp hides it
                    raise PayloadError("non_finite", f"{name}: value overflows after scale/offset")
        if self.digits is not None:
            value = round(value, self.digits)
        if self.low is not None and value < self.low:
            if not self.clamp:
                raise PayloadError("out_of_range", f"{name}: {value} < {self.low}")
            value = self.low
        if self.high is not None and value > self.high:
            if not self.clamp:
                raise PayloadError("out_of_range", f"{name}: {value} > {self.high}")
            value = self.high
        return value

    def steps(self) -> str:
        """The numeric steps in order, as ``explain`` shows them ('' when there are none)."""
        parts = []
        if self.convert is not None:
            parts.append(self.convert.text)
        elif self.converts:
            parts.append(f"scale {self.scale!r}, offset {self.offset!r}")
        if self.digits is not None:
            parts.append(f"round {self.digits}")
        if self.low is not None or self.high is not None:
            action = "clamp" if self.clamp else "reject"
            parts.append(f"range {pair_text((self.low, self.high))} ({action} outside)")
        return ", then ".join(parts)

    def _text(self, name: str, text: str) -> float:
        """A value map entry if there is one, else the number the text holds in the format."""
        assert self.number is not None
        found = self.value_map.get(text)
        if found is None:
            found = self.folded_map.get(text.strip().casefold())
        return self.number.parse(name, text) if found is None else found

    def lookup(self, name: str, text: str) -> float:
        """Map a text value through the value map (exact, then case-insensitive)."""
        found = self.value_map.get(text)
        if found is None:
            found = self.folded_map.get(text.strip().casefold())
        if found is None:
            if self.value_map:
                raise PayloadError(
                    "unmapped_value", f"{name}: {text[:40]!r} is not in the value map"
                )
            raise PayloadError("not_numeric", f"{name}: str, not a number")
        return found


IDENTITY = Transform()


def parse_boolean(text: bytes) -> float:
    """``true/false``, ``on/off``, ``yes/no``, ``1/0`` (any case) → 1.0 / 0.0."""
    word = text.strip().decode("ascii", "replace").casefold()
    if word in _TRUE:
        return 1.0
    if word in _FALSE:
        return 0.0
    raise PayloadError("not_boolean", f"payload {text[:40]!r} is not a boolean")
