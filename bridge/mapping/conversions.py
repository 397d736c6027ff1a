"""One conversion step of a metric's value into engineering units: ``linear`` (a datasheet's
two points, e.g. 4-20 mA → 0-10 bar) or ``expr`` (an arithmetic expression over ``x``).

Built once when the mapping file is loaded; :class:`~bridge.mapping.transforms.Transform` runs
it in place of ``scale``/``offset`` (a metric has one conversion step). Pure code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.errors import PayloadError
from bridge.mapping.expressions import EVAL_ERRORS, Compiled, compile_expression


@dataclass(frozen=True, slots=True, eq=False)
class Conversion:
    """A compiled conversion: ``function`` maps the raw value to the engineering value.

    ``text`` is the step as ``explain`` prints it; ``inverse`` (linear maps only) maps an
    engineering value back, for the simulators that must produce raw values in a range.
    """

    kind: str  # "linear" | "expr"
    text: str
    function: Compiled
    inverse: Compiled | None = None

    def run(self, name: str, value: float) -> float:
        """The converted value; PayloadError ``conversion_failed`` if it cannot be computed
        (a division by zero, the square root of a negative number, an overflow)."""
        try:
            return self.function(value)
        except EVAL_ERRORS as exc:
            raise PayloadError(
                "conversion_failed", f"{name}: {self.text} fails for x = {value!r}: {exc}"
            ) from None


def linear(source: Sequence[float], target: Sequence[float]) -> Conversion:
    """``y = to0 + (x - from0) * (to1 - to0) / (from1 - from0)``; the endpoints map exactly.

    Values outside ``source`` convert too (a 4-20 mA loop reads below 4 mA on a fault):
    ``range`` is what rejects or clamps them. ValueError for an unusable pair of spans.
    """
    forward = _interpolate(source, target)
    try:
        inverse: Compiled | None = _interpolate(target, source)
    except ValueError:  # a constant target cannot be inverted; it converts all the same
        inverse = None
    text = f"linear {pair_text(source)} → {pair_text(target)}"
    return Conversion("linear", text, forward, inverse)


def expression(text: str) -> Conversion:
    """``expr``: ExpressionError (a ValueError) with a message if the text is refused."""
    return Conversion("expr", f"expr {' '.join(text.split())}", compile_expression(text))


def _interpolate(source: Sequence[float], target: Sequence[float]) -> Compiled:
    (f0, f1), (t0, t1) = source, target
    if f0 == f1:
        raise ValueError("'from' needs two different values: [low, high] of the raw signal")
    span, out = f1 - f0, t1 - t0
    if not (math.isfinite(span) and math.isfinite(out)):
        raise ValueError("the spans are too wide to compute with")

    def convert(x: float) -> float:
        # A fraction of the source span, then the same fraction of the target span; t == 1
        # returns the end point itself, so both ends of the datasheet map exactly.
        t = (x - f0) / span
        return t1 if t == 1.0 else t0 + t * out

    return convert


def pair_text(values: Sequence[float | None]) -> str:
    """``[4, 20]``: whole numbers without a fraction, the rest in full."""
    return "[" + ", ".join("none" if v is None else _number(v) for v in values) + "]"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)
