"""Turn a decoded Sparkplug B metric into numbers: ``numeric_values(metric)``.

The bridge delivers numbers, so every datatype has one documented fate
(docs/reference/sparkplug.md keeps the table; the tests check each row):

- Int8 .. Int64, UInt8 .. UInt64: the integer, read by datatype from whichever of ``int_value``
  or ``long_value`` carries it: the low 8/16/32/64 bits, sign-extended for the signed types
  (so a negative Int32 packed as two's complement into the 32-bit field, or an Int8 packed
  into 8 or 32 bits, reads back negative, and a UInt64 above 2**63 stays positive). As floats,
  integers above 2**53 keep 53 significant bits.
- Float: the shortest decimal that is the same 32-bit float (21.1 reads 21.1, not
  21.100000381469727). Double: as is. NaN and infinities are skipped (``non_finite``).
- Boolean: 1.0 or 0.0.
- DateTime: milliseconds since the epoch, as a number.
- String, Text, UUID: through ``value_map`` when the caller gives one (an unknown text is
  skipped as ``unmapped_text``), else skipped as ``text``.
- Bytes, File: skipped (``bytes``).
- DataSet: one value per cell, suffix ``/<column>[<row>]`` (rows from 0), each cell by its
  column's datatype; cells that have no number are skipped with their own suffix and reason.
- Template: one value per member metric, suffix ``/<member>`` (nested templates recurse,
  ``/<member>/<inner>``), to ``max_depth`` levels (deeper members: ``too_deep``). A template
  *definition* (``is_definition``, sent in NBIRTH under ``_types_/``) holds defaults, not
  readings: skipped as ``template_definition``. Parameters and properties are metadata, not
  readings, and are not turned into values.
- Arrays (3.0, packed little-endian into ``bytes_value``): one value per element, suffix
  ``[<i>]``; BooleanArray (count, then bits, most significant first) gives 1.0/0.0;
  DateTimeArray ms numbers; StringArray elements go through ``value_map`` like String. Bytes that
  do not fit the element size are skipped (``bad_array``).
- ``is_null``: skipped (``null``); no value at all: ``no_value``; a vendor extension value:
  ``extension``; an integer without a known datatype (DATA by alias before its BIRTH is
  known): ``no_datatype``; a datatype the value's field cannot carry: ``type_mismatch``;
  a datatype number the specification does not define: ``unknown_datatype``.

Nothing is dropped silently: every value that does not become a number is in
:attr:`Numbers.skipped` with its suffix and one of the reasons above, for the caller to count.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import NamedTuple

from bridge.sparkplug.datatypes import (
    ARRAY_FORMATS,
    INTEGER_WIDTHS,
    TEXT_TYPES,
    DataType,
)
from bridge.sparkplug.decode import DataSet, SparkplugMetric, Template, WireValue

SKIP_REASONS = (
    "null",
    "no_value",
    "text",
    "unmapped_text",
    "bytes",
    "non_finite",
    "no_datatype",
    "type_mismatch",
    "unknown_datatype",
    "extension",
    "template_definition",
    "too_deep",
    "bad_array",
)
"""Every reason :func:`numeric_values` gives for a value it does not turn into a number."""

MAX_DEPTH = 8  # Template nesting: far beyond real UDTs, and bounds the work per message

# A field that carries its own kind: the datatype it implies when the metric names none.
_IMPLIED = {
    "float_value": DataType.FLOAT,
    "double_value": DataType.DOUBLE,
    "boolean_value": DataType.BOOLEAN,
    "string_value": DataType.STRING,
    "bytes_value": DataType.BYTES,
    "dataset_value": DataType.DATASET,
    "template_value": DataType.TEMPLATE,
}
_KNOWN = frozenset(int(t) for t in DataType)
# Datatypes a float field may carry (a float field under an integer datatype is read as is).
_FLOAT_TYPES = _KNOWN - TEXT_TYPES - {DataType.BOOLEAN}
# Integer datatypes as (mask of their width, their sign bit or 0 when unsigned).
_WIDTHS: dict[int | None, tuple[int, int]] = {
    kind: ((1 << bits) - 1, (1 << (bits - 1)) if signed else 0)
    for kind, (bits, signed) in INTEGER_WIDTHS.items()
}
_F32 = struct.Struct("<f").pack
_FLOAT32_DIGITS = (".6g", ".7g", ".8g", ".9g")  # 9 significant digits always round-trip
_SCALAR_FIELDS = frozenset(
    {"int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value"}
)


class Numbers(NamedTuple):
    """What a metric gives: ``values`` as (suffix, number) and ``skipped`` as (suffix, reason).
    The suffix is ``""`` for the metric itself, ``/col[row]``, ``/member`` or ``[i]`` for the
    parts of a DataSet, Template or array. A NamedTuple, like the decoded metric: one is built
    per metric of every DATA message."""

    values: tuple[tuple[str, float], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()


def numeric_values(
    metric: SparkplugMetric,
    datatype: int | None = None,
    *,
    value_map: Mapping[str, float] | None = None,
    max_depth: int = MAX_DEPTH,
) -> Numbers:
    """The numbers in ``metric``. ``datatype`` overrides the metric's own (pass the one its
    BIRTH declared for a DATA metric sent by alias without one)."""
    value = metric.value
    if not metric.is_null and value.field in _SCALAR_FIELDS:  # most metrics: no walk needed
        kind = metric.datatype if datatype is None else datatype
        result = scalar_number(value, kind, value_map)
        if isinstance(result, str):
            return Numbers((), (("", result),))
        return Numbers((("", result),), ())
    out = _Collector(value_map, max_depth)
    out.metric("", metric, datatype, 0)
    return Numbers(tuple(out.values), tuple(out.skipped))


def scalar_number(
    value: WireValue, datatype: int | None, value_map: Mapping[str, float] | None = None
) -> float | str:
    """One scalar (a metric's, a DataSet cell's) as a number, or the reason it is none."""
    field, raw = value
    # The fields in the order DATA messages use them most: this runs for every metric.
    if field in {"float_value", "double_value"}:
        if datatype is not None and datatype not in _FLOAT_TYPES:
            return "type_mismatch" if datatype in _KNOWN else "unknown_datatype"
        if type(raw) is not float:
            return "type_mismatch"
        if not math.isfinite(raw):
            return "non_finite"
        return _shortest_float32(raw) if field == "float_value" else raw
    if field in {"int_value", "long_value"}:
        return _integer(raw, datatype)
    if field == "boolean_value":
        if datatype is not None and datatype != DataType.BOOLEAN:
            return "type_mismatch" if datatype in _KNOWN else "unknown_datatype"
        return 1.0 if raw else 0.0
    if field == "string_value":
        if datatype is not None and datatype not in TEXT_TYPES:
            return "type_mismatch" if datatype in _KNOWN else "unknown_datatype"
        if type(raw) is not str:
            return "type_mismatch"
        return _text(raw, value_map)
    if field is None:
        return "no_value"
    if field == "extension_value":
        return "extension"
    return "type_mismatch"


def _integer(raw: object, datatype: int | None) -> float | str:
    if type(raw) is not int:
        return "type_mismatch"
    width = _WIDTHS.get(datatype)
    if width is not None:
        mask, sign = width
        value = raw & mask
        if value & sign:  # sign is 0 for the unsigned types
            value -= mask + 1
        return float(value)
    if datatype is None:
        return "no_datatype"  # signed or not? only the BIRTH can say
    if datatype == DataType.DATETIME:
        return float(raw)
    return "type_mismatch" if datatype in _KNOWN else "unknown_datatype"


def _text(raw: str, value_map: Mapping[str, float] | None) -> float | str:
    if value_map is None:
        return "text"
    number = value_map.get(raw)
    return "unmapped_text" if number is None else float(number)


def _shortest_float32(value: float) -> float:
    """A Float travels as 32 bits: the shortest decimal that is the same 32-bit float is what
    the sender wrote (21.1, not 21.100000381469727)."""
    bits = _F32(value)
    for digits in _FLOAT32_DIGITS:
        candidate = float(format(value, digits))
        if _F32(candidate) == bits:
            return candidate
    return value


class _Collector:
    """Walks one metric (and its DataSet, Template members or array) into numbers."""

    def __init__(self, value_map: Mapping[str, float] | None, max_depth: int) -> None:
        self.value_map = value_map
        self.max_depth = max_depth
        self.values: list[tuple[str, float]] = []
        self.skipped: list[tuple[str, str]] = []

    def add(self, suffix: str, result: float | str) -> None:
        if isinstance(result, str):
            self.skipped.append((suffix, result))
        else:
            self.values.append((suffix, result))

    def metric(
        self, suffix: str, metric: SparkplugMetric, datatype: int | None, depth: int
    ) -> None:
        if metric.is_null:
            self.skipped.append((suffix, "null"))
            return
        value = metric.value
        kind = metric.datatype if datatype is None else datatype
        if kind is None and value.field is not None:
            kind = _IMPLIED.get(value.field)
        if isinstance(value.raw, DataSet) and kind in (DataType.DATASET, None):
            self.dataset(suffix, value.raw)
        elif isinstance(value.raw, Template) and kind in (DataType.TEMPLATE, None):
            self.template(suffix, value.raw, depth)
        elif value.field == "bytes_value" and isinstance(value.raw, bytes):
            self.blob(suffix, value.raw, kind)
        elif value.field in ("dataset_value", "template_value", "bytes_value"):
            self.skipped.append((suffix, "type_mismatch"))
        else:
            self.add(suffix, scalar_number(value, kind, self.value_map))

    def dataset(self, suffix: str, data: DataSet) -> None:
        for r, row in enumerate(data.rows):
            for c, cell in enumerate(row):
                column = data.columns[c] if c < len(data.columns) else str(c)
                kind = data.types[c] if c < len(data.types) else None
                self.add(f"{suffix}/{column}[{r}]", scalar_number(cell, kind, self.value_map))

    def template(self, suffix: str, template: Template, depth: int) -> None:
        if template.is_definition:
            self.skipped.append((suffix, "template_definition"))
            return
        if depth >= self.max_depth:
            self.skipped.append((suffix, "too_deep"))
            return
        for i, member in enumerate(template.metrics):
            name = member.name if member.name is not None else str(i)
            self.metric(f"{suffix}/{name}", member, None, depth + 1)

    def blob(self, suffix: str, data: bytes, kind: int | None) -> None:
        if kind is None or kind in (DataType.BYTES, DataType.FILE):
            self.skipped.append((suffix, "bytes"))
        elif kind in ARRAY_FORMATS:
            self.array(suffix, data, ARRAY_FORMATS[kind], kind == DataType.FLOAT_ARRAY)
        elif kind == DataType.BOOLEAN_ARRAY:
            self.booleans(suffix, data)
        elif kind == DataType.STRING_ARRAY:
            self.strings(suffix, data)
        elif kind not in _KNOWN:
            self.skipped.append((suffix, "unknown_datatype"))
        else:
            self.skipped.append((suffix, "type_mismatch"))

    def array(self, suffix: str, data: bytes, fmt: str, float32: bool) -> None:
        size = struct.calcsize(fmt)
        if len(data) % size:
            self.skipped.append((suffix, "bad_array"))
            return
        for i, (item,) in enumerate(struct.iter_unpack(f"<{fmt}", data)):
            number = float(item)
            if not math.isfinite(number):
                self.skipped.append((f"{suffix}[{i}]", "non_finite"))
            else:
                self.values.append(
                    (f"{suffix}[{i}]", _shortest_float32(number) if float32 else number)
                )

    def booleans(self, suffix: str, data: bytes) -> None:
        if len(data) < 4:
            self.skipped.append((suffix, "bad_array"))
            return
        count = int.from_bytes(data[:4], "little")
        bits = data[4:]
        if count > len(bits) * 8:
            self.skipped.append((suffix, "bad_array"))
            return
        for i in range(count):
            bit = (bits[i // 8] >> (7 - i % 8)) & 1
            self.values.append((f"{suffix}[{i}]", float(bit)))

    def strings(self, suffix: str, data: bytes) -> None:
        if data and not data.endswith(b"\x00"):
            self.skipped.append((suffix, "bad_array"))
            return
        for i, item in enumerate(data.split(b"\x00")[:-1]):
            try:
                text = item.decode("utf-8")
            except UnicodeDecodeError:
                self.skipped.append((f"{suffix}[{i}]", "bad_array"))
                continue
            self.add(f"{suffix}[{i}]", _text(text, self.value_map))
