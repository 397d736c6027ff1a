"""Numbers as people print them: a decimal comma, thousands separators, a trailing unit,
hexadecimal and binary integers. Opt-in per rule or metric (``number_format``); without it a
number is read exactly as before. Pure code; compiled once per rule.

Never guessing is the point: a format names its decimal mark and its thousands separator, and
a text that does not fit it exactly is ``not_numeric``, not read some other way. Under
``{decimal: ",", thousands: "."}`` ``1.234`` is 1234 and ``1,234.5`` is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bridge.errors import PayloadError

DECIMAL_MARKS = (".", ",")
# A space, a no-break space and a narrow no-break space (what locales print), an apostrophe
# (Swiss), an underscore, and the two decimal marks.
THOUSANDS_SEPARATORS = (".", ",", " ", "\u00a0", "\u202f", "'", "_")
_SPACES = " \t\u00a0\u202f"
_HEX = re.compile(r"[+-]?0[xX][0-9A-Fa-f]+")
_BINARY = re.compile(r"[+-]?0[bB][01]+")


@dataclass(frozen=True, slots=True)
class NumberFormat:
    """How one rule or metric writes its numbers."""

    decimal: str = "."
    thousands: str | None = None
    units: tuple[str, ...] = ()  # longest first, so "kWh" is tried before "Wh"
    hexadecimal: bool = False
    binary: bool = False
    pattern: re.Pattern[str] = re.compile("")

    @staticmethod
    def build(
        *,
        decimal: str = ".",
        thousands: str | None = None,
        units: tuple[str, ...] = (),
        hexadecimal: bool = False,
        binary: bool = False,
    ) -> NumberFormat:
        """A format; ValueError if the decimal mark and the thousands separator coincide."""
        if decimal not in DECIMAL_MARKS:
            raise ValueError(f"decimal must be one of {DECIMAL_MARKS}")
        if thousands is not None and thousands not in THOUSANDS_SEPARATORS:
            raise ValueError(f"thousands must be one of {THOUSANDS_SEPARATORS}")
        if thousands == decimal:
            raise ValueError(
                f"decimal and thousands are both {decimal!r}: 1{decimal}234 is ambiguous"
            )
        for unit in units:
            if not unit.strip() or unit != unit.strip():
                raise ValueError(f"unit {unit!r} is empty or has surrounding spaces")
        d = re.escape(decimal)
        whole = "[0-9]+"
        if thousands is not None:
            # Groups of exactly three digits: "1.2345" is not a number under thousands ".".
            whole = rf"(?:[0-9]{{1,3}}(?:{re.escape(thousands)}[0-9]{{3}})+|[0-9]+)"
        pattern = re.compile(rf"[+-]?(?:{whole}(?:{d}[0-9]*)?|{d}[0-9]+)(?:[eE][+-]?[0-9]+)?")
        return NumberFormat(
            decimal=decimal,
            thousands=thousands,
            units=tuple(sorted(units, key=len, reverse=True)),
            hexadecimal=hexadecimal,
            binary=binary,
            pattern=pattern,
        )

    def describe(self) -> str:
        """The format in words, for a dead letter's detail."""
        parts = [f"decimal {self.decimal!r}"]
        if self.thousands is not None:
            parts.append(f"thousands {self.thousands!r}")
        if self.units:
            parts.append("unit " + "/".join(repr(u) for u in self.units))
        parts += [name for name, on in (("hex", self.hexadecimal), ("binary", self.binary)) if on]
        return ", ".join(parts)

    def parse(self, name: str, text: str) -> float:
        """The number ``text`` holds in this format.

        Raises:
            PayloadError: ``not_numeric`` if the text does not fit the format exactly.
        """
        s = text.strip(_SPACES)
        for unit in self.units:
            if s.endswith(unit):
                s = s[: -len(unit)].rstrip(_SPACES)  # "21.4 °C" and "21.4°C" alike
                break
        if self.hexadecimal and _HEX.fullmatch(s):
            return float(int(s, 16))
        if self.binary and _BINARY.fullmatch(s):
            return float(int(s, 2))
        if s and self.pattern.fullmatch(s):
            if self.thousands is not None:
                s = s.replace(self.thousands, "")
            return float(s.replace(self.decimal, "."))
        raise PayloadError(
            "not_numeric", f"{name}: {text[:40]!r} is not a number in the format {self.describe()}"
        )
