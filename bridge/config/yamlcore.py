"""Plain YAML scalars read by the YAML 1.2 core schema, and what YAML 1.1 made of them.

YAML 1.1 (PyYAML's schema) read ``ON``, ``off``, ``yes`` and ``No`` as booleans, so the
natural relay mapping ``map: {ON: 1, OFF: 0}`` failed and ``payload: ON`` in a test became
``true``. The 1.2 core schema knows only ``true``/``false`` (any case style) as booleans; the
rest is text. The resolution lives here, not in a PyYAML resolver subclass plus the safe
constructor, because one dictionary lookup and one regular expression per scalar is also
faster than building a node for the constructor (a mapping file of 20,000 rules has about
300,000 scalars).

Where 1.2 reads a scalar differently from 1.1 in a way that could change a setting silently,
the result is the same as before or an error:

- ``1_000``, ``0b101``: numbers, as before (ruamel.yaml reads them so under 1.2 as well);
- ``0755``: refused: 1.1 read it as octal 493, 1.2 as decimal 755 (write ``0o755`` or ``755``);
- ``yes``/``on``, ``1:30`` (1.1 sexagesimal 90), ``2024-05-01`` (1.1 a date): text now;
  :func:`yaml11_note` says what 1.1 made of it, for the error of a field that wanted a number
  or a boolean.
"""

from __future__ import annotations

import re
from typing import Any

_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INF_NAN = {
    ".inf": float("inf"),
    ".Inf": float("inf"),
    ".INF": float("inf"),
    "+.inf": float("inf"),
    "+.Inf": float("inf"),
    "+.INF": float("inf"),
    "-.inf": float("-inf"),
    "-.Inf": float("-inf"),
    "-.INF": float("-inf"),
    ".nan": float("nan"),
    ".NaN": float("nan"),
    ".NAN": float("nan"),
}
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")
_RADIX = re.compile(r"[-+]?0(?:o[0-7_]+|x[0-9a-fA-F_]+|b[01_]+)")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?")
_NUMBER_START = frozenset("0123456789+-.")

# What YAML 1.1 (PyYAML) read as something other than text, that 1.2 reads as text.
_BOOL11 = re.compile(r"yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF")
_SEXAGESIMAL11 = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")
_DATE11 = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt ].*)?")


class AmbiguousScalar(ValueError):
    """A plain scalar that YAML 1.1 and 1.2 read as different numbers."""

    without_value = (
        "a number with a leading zero: YAML 1.1 read it as octal, YAML 1.2 as decimal; write "
        "0o… for octal, the number without the leading zero for decimal, or quote it for text"
    )


def plain_scalar(text: str) -> Any:
    """The value of an untagged plain scalar under the YAML 1.2 core schema (with ``_`` digit
    separators and ``0b`` binary kept from 1.1); raise AmbiguousScalar for ``0755``."""
    if text in _NULL:
        return None
    if text[0] not in _NUMBER_START:
        return _BOOL.get(text, text)
    if _INT.fullmatch(text):
        return int(text.replace("_", ""))
    if _RADIX.fullmatch(text):
        return int(text.replace("_", ""), 0)
    if _LEADING_ZERO.fullmatch(text):
        digits = text.lstrip("+-").replace("_", "")
        raise AmbiguousScalar(
            f"the number {text} has a leading zero: YAML 1.1 read it as octal "
            f"({int(digits, 8) if set(digits) <= set('01234567') else 'not a number'}), "
            f"YAML 1.2 as decimal {int(digits)}; write 0o{digits.lstrip('0') or '0'} for octal, "
            f"{int(digits)} for decimal, or '{text}' in quotes for text"
        )
    if _FLOAT.fullmatch(text) and any(c.isdigit() for c in text):
        return float(text.replace("_", ""))
    if text in _INF_NAN:
        return _INF_NAN[text]
    return text


def yaml11_note(text: str) -> str | None:
    """What YAML 1.1 made of a plain scalar that 1.2 reads as text (None: the same)."""
    if not text or (text[0] not in _NUMBER_START and len(text) > 3):
        return None  # the common case, decided without a regular expression
    if _BOOL11.fullmatch(text):
        was = "true" if text.lower() in ("yes", "on") else "false"
        return f"'{text}' is text since YAML 1.2 (YAML 1.1 read it as {was}): write {was}"
    if _SEXAGESIMAL11.fullmatch(text):
        return (
            f"'{text}' is text since YAML 1.2 (YAML 1.1 read it as a base-60 number): "
            "write the number itself"
        )
    if _DATE11.fullmatch(text):
        return f"'{text}' is text since YAML 1.2 (YAML 1.1 read it as a date)"
    return None
