"""Build Sparkplug B payloads: the tests' encoder, and the demo's edge node later.

``encode_payload`` turns :class:`Metric` descriptions into bytes with the official protobuf
runtime, storing each value where the Eclipse Tahu reference implementations put its datatype:
Int8, Int16, Int32, UInt8, UInt16 in the 32-bit ``int_value`` (negative ones as two's
complement), UInt32, Int64, UInt64 and DateTime in the 64-bit ``long_value``, arrays packed
little-endian into ``bytes_value``. :class:`EdgeNode` keeps
what one edge node keeps (its bdSeq, the 0..255 ``seq``, the aliases it gave out) and builds
its NBIRTH, DBIRTH, NDATA, DDATA, DDEATH and NDEATH messages. Pure: no I/O, and the caller
passes every timestamp.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeAlias

from bridge.sparkplug import sparkplug_b_pb2 as pb
from bridge.sparkplug.datatypes import ARRAY_FORMATS, TEXT_TYPES, DataType
from bridge.sparkplug.topic import NAMESPACE

BD_SEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
_INT32_TYPES = frozenset(
    {
        DataType.INT8,
        DataType.INT16,
        DataType.INT32,
        DataType.UINT8,
        DataType.UINT16,
    }
)
# UInt32 goes in the 64-bit field as Tahu does it (its decoders read it only from there).
_INT64_TYPES = frozenset({DataType.UINT32, DataType.INT64, DataType.UINT64, DataType.DATETIME})


@dataclass(frozen=True, slots=True)
class DataSetValue:
    """A DataSet to encode: column names, their datatypes, rows of Python values."""

    columns: Sequence[str]
    types: Sequence[int]
    rows: Sequence[Sequence[object]]


@dataclass(frozen=True, slots=True)
class TemplateValue:
    """A Template to encode: member metrics, and (for an instance) the definition's name."""

    metrics: Sequence[Metric]
    template_ref: str | None = None
    version: str | None = None
    is_definition: bool = False


Value: TypeAlias = (
    "int | float | bool | str | bytes | Sequence[object] | DataSetValue | TemplateValue | None"
)


@dataclass(frozen=True, slots=True)
class Metric:
    """A metric to encode. ``value=None`` sends ``is_null``; ``name=None`` sends the alias
    alone; ``send_datatype=False`` leaves the datatype out (as DATA messages may)."""

    name: str | None
    datatype: int
    value: Value = None
    alias: int | None = None
    timestamp_ms: int | None = None
    is_historical: bool = False
    is_transient: bool = False
    send_datatype: bool = True


def encode_payload(
    metrics: Iterable[Metric],
    *,
    timestamp_ms: int | None = None,
    seq: int | None = None,
    uuid: str | None = None,
    body: bytes | None = None,
) -> bytes:
    """The protobuf bytes of a Sparkplug B payload."""
    message = pb.Payload()
    if timestamp_ms is not None:
        message.timestamp = timestamp_ms
    if seq is not None:
        message.seq = seq
    if uuid is not None:
        message.uuid = uuid
    if body is not None:
        message.body = body
    for metric in metrics:
        _fill_metric(message.metrics.add(), metric)
    return message.SerializeToString()


def _fill_metric(out: pb.Payload.Metric, metric: Metric) -> None:
    if metric.name is not None:
        out.name = metric.name
    if metric.alias is not None:
        out.alias = metric.alias
    if metric.timestamp_ms is not None:
        out.timestamp = metric.timestamp_ms
    if metric.send_datatype:
        out.datatype = metric.datatype
    if metric.is_historical:
        out.is_historical = True
    if metric.is_transient:
        out.is_transient = True
    if metric.value is None:
        out.is_null = True
        return
    kind, value = metric.datatype, metric.value
    if kind == DataType.DATASET and isinstance(value, DataSetValue):
        _fill_dataset(out.dataset_value, value)
    elif kind == DataType.TEMPLATE and isinstance(value, TemplateValue):
        _fill_template(out.template_value, value)
    elif kind in ARRAY_FORMATS or kind in (DataType.BOOLEAN_ARRAY, DataType.STRING_ARRAY):
        out.bytes_value = pack_array(kind, value)
    else:
        _set_scalar(out, kind, value)


def _set_scalar(
    out: pb.Payload.Metric | pb.Payload.DataSet.DataSetValue, kind: int, value: object
) -> None:
    """Store a scalar in the field its datatype uses (a Metric's or a DataSet cell's)."""
    name, stored = _scalar_field(kind, value)
    setattr(out, name, stored)


def _scalar_field(kind: int, value: object) -> tuple[str, object]:
    if kind in _INT32_TYPES and isinstance(value, int):
        return "int_value", value & 0xFFFF_FFFF
    if kind in _INT64_TYPES and isinstance(value, int):
        return "long_value", value & 0xFFFF_FFFF_FFFF_FFFF
    if kind == DataType.FLOAT and isinstance(value, int | float):
        return "float_value", float(value)
    if kind == DataType.DOUBLE and isinstance(value, int | float):
        return "double_value", float(value)
    if kind == DataType.BOOLEAN and isinstance(value, bool):
        return "boolean_value", value
    if kind in TEXT_TYPES and isinstance(value, str):
        return "string_value", value
    if kind in (DataType.BYTES, DataType.FILE) and isinstance(value, bytes):
        return "bytes_value", value
    raise ValueError(f"cannot encode {value!r} as datatype {kind}")


def pack_array(kind: int, value: object) -> bytes:
    """An array metric's ``bytes_value`` (Sparkplug 3.0: packed little-endian)."""
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise ValueError(f"an array datatype needs a sequence, not {value!r}")
    if kind == DataType.BOOLEAN_ARRAY:
        bits = bytearray((len(value) + 7) // 8)
        for i, item in enumerate(value):
            if item:
                bits[i // 8] |= 0x80 >> (i % 8)
        return len(value).to_bytes(4, "little") + bytes(bits)
    if kind == DataType.STRING_ARRAY:
        return b"".join(str(item).encode("utf-8") + b"\x00" for item in value)
    return struct.pack(f"<{len(value)}{ARRAY_FORMATS[kind]}", *value)


def _fill_dataset(out: pb.Payload.DataSet, data: DataSetValue) -> None:
    out.num_of_columns = len(data.columns)
    out.columns.extend(data.columns)
    out.types.extend(data.types)
    for row in data.rows:
        elements = out.rows.add().elements
        for kind, cell in zip(data.types, row, strict=True):
            _set_scalar(elements.add(), kind, cell)


def _fill_template(out: pb.Payload.Template, template: TemplateValue) -> None:
    if template.template_ref is not None:
        out.template_ref = template.template_ref
    if template.version is not None:
        out.version = template.version
    out.is_definition = template.is_definition
    for member in template.metrics:
        _fill_metric(out.metrics.add(), member)


@dataclass(slots=True)
class EdgeNode:
    """One Sparkplug edge node's side of the protocol, for tests and the demo.

    ``bd_seq`` identifies the MQTT session (NBIRTH and the NDEATH Will carry it; a new session
    takes the next one); ``seq`` counts the messages of the session from 0 at NBIRTH, modulo
    256. Aliases are numbered from 1 across the node and its devices, so they never collide.
    Each method returns ``(topic, payload bytes)``.
    """

    group: str
    node: str
    bd_seq: int = 0
    seq: int = 0
    aliases: dict[tuple[str | None, str], tuple[int, int]] = field(default_factory=dict)

    def new_session(self) -> None:
        """A reconnect: the next bdSeq; aliases are given out again by the next BIRTHs."""
        self.bd_seq = (self.bd_seq + 1) % 256
        self.aliases.clear()

    def nbirth(self, metrics: Iterable[Metric], timestamp_ms: int) -> tuple[str, bytes]:
        self.seq = 0
        control = [
            Metric(BD_SEQ, DataType.INT64, self.bd_seq),
            Metric(REBIRTH, DataType.BOOLEAN, False),
        ]
        born = control + [self._alias(None, m) for m in metrics]
        body = encode_payload(born, timestamp_ms=timestamp_ms, seq=0)
        return self._topic("NBIRTH"), body

    def dbirth(
        self, device: str, metrics: Iterable[Metric], timestamp_ms: int
    ) -> tuple[str, bytes]:
        born = [self._alias(device, m) for m in metrics]
        return self._topic("DBIRTH", device), self._next(born, timestamp_ms)

    def ndata(
        self, values: Mapping[str, Value], timestamp_ms: int, *, aliases_only: bool = True
    ) -> tuple[str, bytes]:
        metrics = self._data(None, values, aliases_only)
        return self._topic("NDATA"), self._next(metrics, timestamp_ms)

    def ddata(
        self,
        device: str,
        values: Mapping[str, Value],
        timestamp_ms: int,
        *,
        aliases_only: bool = True,
    ) -> tuple[str, bytes]:
        metrics = self._data(device, values, aliases_only)
        return self._topic("DDATA", device), self._next(metrics, timestamp_ms)

    def ddeath(self, device: str, timestamp_ms: int) -> tuple[str, bytes]:
        return self._topic("DDEATH", device), self._next([], timestamp_ms)

    def ndeath(self) -> tuple[str, bytes]:
        """The NDEATH (registered as the MQTT Will before connecting): bdSeq only, no seq."""
        return self._topic("NDEATH"), encode_payload([Metric(BD_SEQ, DataType.INT64, self.bd_seq)])

    def _topic(self, kind: str, device: str | None = None) -> str:
        parts = [NAMESPACE, self.group, kind, self.node]
        return "/".join([*parts, device] if device is not None else parts)

    def _next(self, metrics: Iterable[Metric], timestamp_ms: int) -> bytes:
        self.seq = (self.seq + 1) % 256
        return encode_payload(metrics, timestamp_ms=timestamp_ms, seq=self.seq)

    def _alias(self, device: str | None, metric: Metric) -> Metric:
        if metric.name is None:
            raise ValueError("a BIRTH names every metric")
        key = (device, metric.name)
        alias = metric.alias
        if alias is None:
            known = self.aliases.get(key)
            alias = known[0] if known else 1 + max((a for a, _ in self.aliases.values()), default=0)
        self.aliases[key] = (alias, metric.datatype)
        return replace(metric, alias=alias)

    def _data(
        self, device: str | None, values: Mapping[str, Value], aliases_only: bool
    ) -> list[Metric]:
        out = []
        for name, value in values.items():
            alias, datatype = self.aliases[(device, name)]
            out.append(
                Metric(
                    None if aliases_only else name,
                    datatype,
                    value,
                    alias=alias,
                    send_datatype=not aliases_only,
                )
            )
        return out
