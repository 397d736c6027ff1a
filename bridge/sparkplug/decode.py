"""Decode a Sparkplug B payload into frozen values of our own: ``decode_payload(data)``.

The bytes are parsed by the official protobuf runtime (``sparkplug_b_pb2``, generated from
``sparkplug_b.proto``), then copied into the dataclasses below, so nothing outside this module
touches protobuf messages. Values are kept as the wire carries them (:class:`WireValue`: which
field of the ``value`` oneof is set, and its Python value, integers still unsigned); turning them
into numbers needs the metric's datatype, which a DATA message often leaves out and only its
BIRTH certificate gives: that is :func:`bridge.sparkplug.values.numeric_values`.

Malformed bytes raise :class:`~bridge.errors.PayloadError` with reason ``bad_sparkplug`` and
nothing else (a property test feeds random bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

from google.protobuf.message import DecodeError

from bridge.errors import PayloadError
from bridge.sparkplug import sparkplug_b_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Iterable

REASON = "bad_sparkplug"


@dataclass(frozen=True, slots=True)
class DataSet:
    """A table: column names, one datatype per column, rows of wire values."""

    columns: tuple[str, ...]
    types: tuple[int, ...]
    rows: tuple[tuple[WireValue, ...], ...]


@dataclass(frozen=True, slots=True)
class TemplateParameter:
    """A Template's parameter (configuration of a UDT instance, not a reading)."""

    name: str | None
    datatype: int | None
    value: WireValue


@dataclass(frozen=True, slots=True)
class Template:
    """A Template (UDT) definition or instance: its member metrics and parameters."""

    version: str | None
    template_ref: str | None
    is_definition: bool
    metrics: tuple[SparkplugMetric, ...]
    parameters: tuple[TemplateParameter, ...]


@dataclass(frozen=True, slots=True)
class Property:
    """One entry of a metric's PropertySet (engineering units, quality, ...): metadata."""

    key: str
    datatype: int | None
    is_null: bool
    value: WireValue


# What a WireValue holds: scalars as decoded, a DataSet or Template, property sets (a list of
# them), or None (no value, or a vendor extension).
Raw: TypeAlias = (
    "int | float | bool | str | bytes | DataSet | Template"
    " | tuple[Property, ...] | tuple[tuple[Property, ...], ...] | None"
)


class WireValue(NamedTuple):
    """The value as it travels: ``field`` is the member of the ``value`` oneof that is set
    (``int_value``, ``long_value``, ``float_value``, ``double_value``, ``boolean_value``,
    ``string_value``, ``bytes_value``, ``dataset_value``, ``template_value``,
    ``extension_value``; for properties also ``propertyset_value``, ``propertysets_value``),
    or ``None`` when none is. Integers are the unsigned field values: see :mod:`.values`.

    This and :class:`SparkplugMetric` are NamedTuples rather than frozen dataclasses: just as
    immutable and typed, and a quarter of the cost to build, which counts when every metric of
    every DATA message builds one (``metriqo-bridge bench sparkplug``)."""

    field: str | None
    raw: Raw = None


NO_VALUE = WireValue(None, None)


class SparkplugMetric(NamedTuple):
    """One metric. ``name`` is absent in DATA messages that use aliases only; ``datatype`` is
    required in BIRTHs and optional elsewhere; ``timestamp_ms`` is milliseconds since the
    epoch (UTC)."""

    name: str | None
    alias: int | None
    timestamp_ms: int | None
    datatype: int | None
    is_historical: bool
    is_transient: bool
    is_null: bool
    value: WireValue
    properties: tuple[Property, ...] = ()


@dataclass(frozen=True, slots=True)
class SparkplugPayload:
    """A decoded payload: its timestamp (ms since the epoch, UTC), ``seq`` (0..255 per edge
    node; absent in NDEATH), ``uuid``, ``body`` and metrics in the order sent."""

    timestamp_ms: int | None
    seq: int | None
    uuid: str | None
    body: bytes | None
    metrics: tuple[SparkplugMetric, ...]


def decode_payload(data: bytes) -> SparkplugPayload:
    """Parse a Sparkplug B payload; ``PayloadError("bad_sparkplug", ...)`` when it is not one.

    An empty payload is a valid, empty protobuf message (no metrics); whether that is
    acceptable is the caller's rule (an NDEATH is never empty: it carries bdSeq).
    """
    try:
        message = pb.Payload.FromString(data)
        return SparkplugPayload(
            timestamp_ms=message.timestamp if message.HasField("timestamp") else None,
            seq=message.seq if message.HasField("seq") else None,
            uuid=_str(message.uuid) if message.HasField("uuid") else None,
            body=message.body if message.HasField("body") else None,
            metrics=_metrics(message.metrics),
        )
    except DecodeError as exc:
        raise PayloadError("bad_sparkplug", f"not a Sparkplug B payload: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # proto2 strings that are not UTF-8 fail on access, not at parse time.
        detail = f"not a Sparkplug B payload: {type(exc).__name__}: {str(exc)[:120]}"
        raise PayloadError("bad_sparkplug", detail) from None


def _str(value: object) -> str:
    """A string field's value: upb hands a proto2 string that is not UTF-8 back as bytes."""
    if type(value) is not str:
        raise PayloadError("bad_sparkplug", "not a Sparkplug B payload: a string is not UTF-8")
    return value


def _plain(field: str, raw: int | float | bool | str | bytes) -> WireValue:
    return WireValue(field, _str(raw) if field == "string_value" else raw)


def _metrics(messages: Iterable[pb.Payload.Metric]) -> tuple[SparkplugMetric, ...]:
    return tuple(_metric(m) for m in messages)


# Metric field numbers (sparkplug_b.proto); the value oneof is 10..19, 10..14 being the
# integer, float and boolean fields.
_NAME = 1
_ALIAS = 2
_TIMESTAMP = 3
_DATATYPE = 4
_HISTORICAL = 5
_TRANSIENT = 6
_NULL = 7
_PROPERTIES = 9
_FIRST_VALUE = 10
_STRING_VALUE = 15


def _metric(m: pb.Payload.Metric) -> SparkplugMetric:
    # One ListFields() call yields exactly the fields present: several times cheaper than a
    # HasField() per optional field, on the path every metric of every DATA message takes.
    name = alias = timestamp = datatype = None
    historical = transient = null = False
    value = NO_VALUE
    properties: tuple[Property, ...] = ()
    for descriptor, item in m.ListFields():
        number = descriptor.number
        if number >= _FIRST_VALUE:
            # int, long, float, double, boolean (10..14) need no conversion: the common case.
            value = (
                WireValue(descriptor.name, item)
                if number < _STRING_VALUE
                else _metric_value(descriptor.name, item)
            )
        elif number == _ALIAS:
            alias = item
        elif number == _NAME:
            name = _str(item)
        elif number == _TIMESTAMP:
            timestamp = item
        elif number == _DATATYPE:
            datatype = item
        elif number == _HISTORICAL:
            historical = item
        elif number == _TRANSIENT:
            transient = item
        elif number == _NULL:
            null = item
        elif number == _PROPERTIES:
            properties = _properties(item)
    return SparkplugMetric(
        name, alias, timestamp, datatype, historical, transient, null, value, properties
    )


def _metric_value(field: str, item: object) -> WireValue:
    """A string, bytes, DataSet, Template or extension value (oneof fields 15..19)."""
    if isinstance(item, str | bytes):
        return _plain(field, item)
    if isinstance(item, pb.Payload.DataSet):
        return WireValue(field, _dataset(item))
    if isinstance(item, pb.Payload.Template):
        return WireValue(field, _template(item))
    return WireValue(field, None)  # a vendor extension: kept as "present", not interpreted


def _scalar(message: pb.Payload.DataSet.DataSetValue | pb.Payload.Template.Parameter) -> WireValue:
    """The oneof ``value`` of a DataSetValue or a Template Parameter (scalars only)."""
    field = message.WhichOneof("value")
    if field is None:
        return NO_VALUE
    if field == "extension_value":
        return WireValue(field, None)
    return _plain(field, getattr(message, field))


def _dataset(d: pb.Payload.DataSet) -> DataSet:
    return DataSet(
        columns=tuple(_str(c) for c in d.columns),
        types=tuple(d.types),
        rows=tuple(tuple(_scalar(v) for v in row.elements) for row in d.rows),
    )


def _template(t: pb.Payload.Template) -> Template:
    return Template(
        version=_str(t.version) if t.HasField("version") else None,
        template_ref=_str(t.template_ref) if t.HasField("template_ref") else None,
        is_definition=t.is_definition,
        metrics=_metrics(t.metrics),
        parameters=tuple(
            TemplateParameter(
                name=_str(p.name) if p.HasField("name") else None,
                datatype=p.type if p.HasField("type") else None,
                value=_scalar(p),
            )
            for p in t.parameters
        ),
    )


def _properties(s: pb.Payload.PropertySet) -> tuple[Property, ...]:
    out: list[Property] = []
    for key, v in zip(s.keys, s.values, strict=False):  # a key without a value is dropped
        field = v.WhichOneof("value")
        value: WireValue
        if field == "propertyset_value":
            value = WireValue(field, _properties(v.propertyset_value))
        elif field == "propertysets_value":
            sets = tuple(_properties(p) for p in v.propertysets_value.propertyset)
            value = WireValue(field, sets)
        elif field == "extension_value":
            value = WireValue(field, None)
        elif field is None:
            value = NO_VALUE
        else:
            value = _plain(field, getattr(v, field))
        out.append(Property(_str(key), v.type if v.HasField("type") else None, v.is_null, value))
    return tuple(out)
