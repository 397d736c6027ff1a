"""Sparkplug B decoding (bridge.sparkplug): the fate of each datatype, the 3.0 arrays against
the specification's examples, malformed payloads and topics, and properties (hypothesis): our
encoder's payloads decode to what was encoded, and no byte string raises anything but our
``bad_sparkplug`` error."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import PayloadError
from bridge.sparkplug import sparkplug_b_pb2 as pb
from bridge.sparkplug.datatypes import DataType, type_name
from bridge.sparkplug.decode import (
    Property,
    Raw,
    SparkplugMetric,
    SparkplugPayload,
    WireValue,
    decode_payload,
)
from bridge.sparkplug.encode import (
    DataSetValue,
    EdgeNode,
    Metric,
    TemplateValue,
    encode_payload,
    pack_array,
)
from bridge.sparkplug.topic import SparkplugTopic, StateTopic, is_sparkplug_topic, parse_topic
from bridge.sparkplug.values import (
    MAX_DEPTH,
    SKIP_REASONS,
    Numbers,
    numeric_values,
    scalar_number,
)

PROPS = settings(derandomize=True, database=None, deadline=None, max_examples=300)
T0 = 1_795_681_920_000


def one(
    metric: Metric,
    datatype: int | None = None,
    *,
    value_map: dict[str, float] | None = None,
    max_depth: int = MAX_DEPTH,
) -> Numbers:
    """Encode one metric, decode it, and read its numbers."""
    [decoded] = decode_payload(encode_payload([metric], timestamp_ms=T0)).metrics
    return numeric_values(decoded, datatype, value_map=value_map, max_depth=max_depth)


def decode_or_error(data: bytes) -> SparkplugPayload | PayloadError:
    try:
        return decode_payload(data)
    except PayloadError as exc:
        return exc


def wire(field: str | None, raw: Raw, datatype: int | None = None) -> SparkplugMetric:
    """A metric as decoded, with the wire value given."""
    value = WireValue(field, raw)
    return SparkplugMetric(None, None, None, datatype, False, False, False, value)


# -- the fate of each datatype --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "value", "expected"),
    [
        (DataType.INT8, -1, -1.0),
        (DataType.INT8, -128, -128.0),
        (DataType.INT16, -300, -300.0),
        (DataType.INT32, -(2**31), -(2.0**31)),
        (DataType.INT64, -(2**63), -(2.0**63)),
        (DataType.UINT8, 255, 255.0),
        (DataType.UINT16, 65535, 65535.0),
        (DataType.UINT32, 2**32 - 1, 2.0**32 - 1),
        (DataType.UINT64, 2**64 - 1, float(2**64 - 1)),
        (DataType.FLOAT, 21.1, 21.1),
        (DataType.FLOAT, 3.4e38, 3.4e38),
        (DataType.DOUBLE, 0.1, 0.1),
        (DataType.BOOLEAN, True, 1.0),
        (DataType.BOOLEAN, False, 0.0),
        (DataType.DATETIME, T0, float(T0)),
    ],
)
def test_numbers_read_back_by_datatype(datatype: DataType, value: float, expected: float) -> None:
    assert one(Metric("m", datatype, value)) == Numbers(values=(("", expected),))


def test_signed_integers_packed_into_8_or_32_bits_both_read_negative() -> None:
    """Some encoders pack Int8 -5 as 0xFB, others as the 32-bit 0xFFFFFFFB: both are -5."""
    for raw in (0xFB, 0xFFFF_FFFB):
        assert scalar_number(WireValue("int_value", raw), DataType.INT8) == -5.0
    assert scalar_number(WireValue("long_value", 0xFFFF_FFFF_FFFF_FFFB), DataType.INT64) == -5.0
    assert scalar_number(WireValue("long_value", 0xFFFF_FFFF), DataType.UINT32) == 2.0**32 - 1
    assert scalar_number(WireValue("int_value", 0xFFFF_FFFF), DataType.UINT32) == 2.0**32 - 1


@pytest.mark.parametrize(
    ("metric", "reason"),
    [
        (Metric("s", DataType.STRING, "RUN"), "text"),
        (Metric("t", DataType.TEXT, "x"), "text"),
        (Metric("u", DataType.UUID, "0b0c"), "text"),
        (Metric("b", DataType.BYTES, b"\x00"), "bytes"),
        (Metric("f", DataType.FILE, b"\x00"), "bytes"),
        (Metric("n", DataType.DOUBLE, None), "null"),
        (Metric("nan", DataType.DOUBLE, math.nan), "non_finite"),
        (Metric("inf", DataType.FLOAT, math.inf), "non_finite"),
        (
            Metric("def", DataType.TEMPLATE, TemplateValue([], is_definition=True)),
            "template_definition",
        ),
    ],
)
def test_values_without_a_number_are_skipped_with_a_reason(metric: Metric, reason: str) -> None:
    assert one(metric) == Numbers(skipped=(("", reason),))
    assert reason in SKIP_REASONS


def test_text_goes_through_a_value_map() -> None:
    states = {"RUN": 1.0, "STOP": 0.0}
    assert one(Metric("s", DataType.STRING, "RUN"), value_map=states).values == (("", 1.0),)
    assert one(Metric("s", DataType.STRING, "IDLE"), value_map=states).skipped == (
        ("", "unmapped_text"),
    )


def test_a_data_metric_without_datatype_needs_the_births() -> None:
    """An integer sent by alias without a datatype cannot be read (signed or not?) until the
    caller passes the BIRTH's datatype; a float or boolean field says what it is."""
    alias_only = Metric(None, DataType.INT16, -2, alias=4, send_datatype=False)
    assert one(alias_only).skipped == (("", "no_datatype"),)
    assert one(alias_only, DataType.INT16).values == (("", -2.0),)
    assert one(Metric(None, DataType.DOUBLE, 2.5, alias=5, send_datatype=False)).values == (
        ("", 2.5),
    )


def test_mismatched_and_unknown_datatypes_are_skipped() -> None:
    assert numeric_values(wire("string_value", "x", DataType.INT32)).skipped == (
        ("", "type_mismatch"),
    )
    assert numeric_values(wire("int_value", 1, 99)).skipped == (("", "unknown_datatype"),)
    assert numeric_values(wire("bytes_value", b"x", 99)).skipped == (("", "unknown_datatype"),)
    assert numeric_values(wire(None, None, DataType.INT32)).skipped == (("", "no_value"),)
    assert numeric_values(wire("extension_value", None, DataType.INT32)).skipped == (
        ("", "extension"),
    )
    assert type_name(DataType.UINT64) == "UInt64"
    assert type_name(99) == "#99"


def test_extension_values_and_nested_property_sets_decode() -> None:
    """What our encoder does not build (vendor extensions, property sets in properties) is
    still decoded: the extension as present but uninterpreted, the sets as nested properties."""
    message = pb.Payload()
    metric = message.metrics.add()
    metric.name = "vendor"
    metric.datatype = DataType.INT32
    metric.extension_value.SetInParent()
    metric.properties.keys.append("limits")
    inner = metric.properties.values.add()
    inner.type = DataType.PROPERTYSET
    inner.propertyset_value.keys.append("high")
    inner.propertyset_value.values.add(type=DataType.DOUBLE, double_value=90.5)
    [decoded] = decode_payload(message.SerializeToString()).metrics
    assert decoded.value == WireValue("extension_value", None)
    assert numeric_values(decoded).skipped == (("", "extension"),)
    [limits] = decoded.properties
    assert limits.key == "limits"
    assert limits.value.field == "propertyset_value"
    assert isinstance(limits.value.raw, tuple)
    [high] = limits.value.raw
    assert high == Property("high", DataType.DOUBLE, False, WireValue("double_value", 90.5))


def test_a_dataset_gives_one_value_per_cell() -> None:
    table = DataSetValue(["n", "v"], [DataType.INT8, DataType.FLOAT], [[-1, 0.5], [2, math.inf]])
    got = one(Metric("t", DataType.DATASET, table))
    assert got.values == (("/n[0]", -1.0), ("/v[0]", 0.5), ("/n[1]", 2.0))
    assert got.skipped == (("/v[1]", "non_finite"),)


def test_templates_nest_to_a_bounded_depth() -> None:
    inner: Metric = Metric("x", DataType.INT32, -3)
    for level in range(10):
        inner = Metric(f"l{level}", DataType.TEMPLATE, TemplateValue([inner]))
    got = one(inner)
    assert got.values == ()
    assert got.skipped == (("/l8/l7/l6/l5/l4/l3/l2/l1", "too_deep"),)
    deep = one(inner, max_depth=20)
    assert deep.values == (("/l8/l7/l6/l5/l4/l3/l2/l1/l0/x", -3.0),)


# -- arrays (3.0): the specification's examples --------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "values", "packed"),
    [
        (DataType.INT8_ARRAY, [-23, 123], "e97b"),
        (DataType.INT16_ARRAY, [-30000, 30000], "d08a3075"),
        (DataType.INT32_ARRAY, [123456789, 987654321], "15cd5b07b168de3a"),
        (DataType.UINT64_ARRAY, [52, 16444743074749521625], "3400000000000000d99e02d1b27637e4"),
        (DataType.DOUBLE_ARRAY, [12.354213, 1022.9123213], None),
        (DataType.FLOAT_ARRAY, [1.23, 89.341], None),
        (DataType.DATETIME_ARRAY, [T0, T0 + 1], None),
    ],
)
def test_numeric_arrays_flatten_to_indexed_values(
    datatype: DataType, values: list[float], packed: str | None
) -> None:
    data = pack_array(datatype, values)
    if packed is not None:
        assert data.hex() == packed
    got = one(Metric("a", datatype, values))
    assert got.values == tuple((f"[{i}]", float(v)) for i, v in enumerate(values))


def test_boolean_array_is_the_specifications_example() -> None:
    bits = [False, False, True, True, False, True, False, False, True, True, False, True]
    assert pack_array(DataType.BOOLEAN_ARRAY, bits).hex() == "0c00000034d0"
    got = one(Metric("a", DataType.BOOLEAN_ARRAY, bits))
    assert got.values == tuple((f"[{i}]", float(b)) for i, b in enumerate(bits))


def test_string_arrays_go_through_the_value_map() -> None:
    assert pack_array(DataType.STRING_ARRAY, ["ABC", "hello"]) == b"ABC\x00hello\x00"
    got = one(Metric("a", DataType.STRING_ARRAY, ["ABC", "hello"]), value_map={"ABC": 7.0})
    assert got == Numbers(values=(("[0]", 7.0),), skipped=(("[1]", "unmapped_text"),))


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        (DataType.INT32_ARRAY, b"\x00\x01\x02"),
        (DataType.BOOLEAN_ARRAY, b"\x09\x00\x00\x00\xff"),
        (DataType.BOOLEAN_ARRAY, b"\x01"),
        (DataType.STRING_ARRAY, b"no terminator"),
    ],
)
def test_arrays_that_do_not_fit_their_type_are_skipped(datatype: DataType, data: bytes) -> None:
    assert numeric_values(wire("bytes_value", data, datatype)).skipped == (("", "bad_array"),)


# -- malformed payloads and topics ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"\xff", b"\x12\x05\x0a\x03ab", b"\x0a", b"\x22\x02\xc3\x28", b"\x08" + b"\xff" * 11],
)
def test_malformed_payloads_raise_bad_sparkplug(data: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        decode_payload(data)
    assert info.value.reason == "bad_sparkplug"


def test_an_empty_payload_is_an_empty_message() -> None:
    payload = decode_payload(b"")
    assert (payload.metrics, payload.seq, payload.timestamp_ms) == ((), None, None)


@pytest.mark.parametrize(
    ("topic", "parsed"),
    [
        ("spBv1.0/G/DDATA/E/D", SparkplugTopic("G", "DDATA", "E", "D")),
        ("spBv1.0/Plant 1/NBIRTH/edge-7", SparkplugTopic("Plant 1", "NBIRTH", "edge-7")),
        ("spBv1.0/G/NDEATH/E", SparkplugTopic("G", "NDEATH", "E")),
        ("spBv1.0/G/DCMD/E/D", SparkplugTopic("G", "DCMD", "E", "D")),
        ("spBv1.0/STATE/scada-1", StateTopic("scada-1")),
        ("STATE/scada-1", StateTopic("scada-1", legacy=True)),
    ],
)
def test_topics_parse(topic: str, parsed: SparkplugTopic | StateTopic) -> None:
    assert parse_topic(topic) == parsed
    assert parsed.text() == topic
    assert is_sparkplug_topic(topic)


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("spAv1.0/G/DDATA/E/D", "namespace"),
        ("spBv1.0/G/DDATA/E", "needs a device id"),
        ("spBv1.0/G/NDATA/E/D", "has no device id"),
        ("spBv1.0/G/DATA/E", "unknown message type 'DATA'"),
        ("spBv1.0//NDATA/E", "group id is empty"),
        ("spBv1.0/G/NDATA/", "edge node id is empty"),
        ("spBv1.0/G/DDATA/E/+", "wildcard"),
        ("spBv1.0/G", "expected spBv1.0/<group>"),
        ("spBv1.0/STATE", "expected spBv1.0/STATE/<host id>"),
        ("spBv1.0/STATE/h/x", "expected spBv1.0/STATE/<host id>"),
        ("STATE/", "host id is empty"),
    ],
)
def test_malformed_topics_say_what_is_wrong(topic: str, why: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_topic(topic)
    assert info.value.reason == "bad_sparkplug"
    assert why in info.value.detail


def test_the_edge_node_counts_seq_and_keeps_aliases_across_devices() -> None:
    node = EdgeNode("G", "E", bd_seq=255)
    node.new_session()
    assert node.bd_seq == 0
    topics = [node.nbirth([Metric("a", DataType.INT32, 1)], T0)[0]]
    topics.append(node.dbirth("D1", [Metric("a", DataType.INT32, 2)], T0)[0])
    topics.append(node.ddata("D1", {"a": 3}, T0)[0])
    assert topics == ["spBv1.0/G/NBIRTH/E", "spBv1.0/G/DBIRTH/E/D1", "spBv1.0/G/DDATA/E/D1"]
    assert node.aliases == {(None, "a"): (1, DataType.INT32), ("D1", "a"): (2, DataType.INT32)}
    assert node.seq == 2
    for _ in range(300):
        node.ndata({"a": 0}, T0)
    assert node.seq == (2 + 300) % 256
    death = decode_payload(node.ndeath()[1])
    assert death.seq is None
    assert [(m.name, m.value.raw) for m in death.metrics] == [("bdSeq", 0)]


# -- properties -----------------------------------------------------------------------------------

_INT_RANGES = {
    DataType.INT8: (-(2**7), 2**7 - 1),
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT8: (0, 2**8 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.UINT64: (0, 2**64 - 1),
    DataType.DATETIME: (0, 2**63 - 1),
}


@st.composite
def metrics(draw: st.DrawFn) -> tuple[Metric, float | None]:
    """A metric and the number it must read back as (None: null)."""
    name = draw(st.text(min_size=1, max_size=20))
    alias = draw(st.none() | st.integers(0, 2**64 - 1))
    kind = draw(st.sampled_from([*_INT_RANGES, DataType.DOUBLE, DataType.FLOAT, DataType.BOOLEAN]))
    value: int | float | bool | None
    if draw(st.integers(0, 9)) == 0:
        value, expected = None, None
    elif kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        value = draw(st.integers(low, high))
        expected = float(value)
    elif kind == DataType.DOUBLE:
        value = draw(st.floats(allow_nan=False, allow_infinity=False))
        expected = value
    elif kind == DataType.FLOAT:
        value = draw(st.floats(width=32, allow_nan=False, allow_infinity=False))
        expected = value
    else:
        value = draw(st.booleans())
        expected = float(value)
    ts = draw(st.none() | st.integers(0, 2**64 - 1))
    return Metric(name, kind, value, alias=alias, timestamp_ms=ts), expected


@PROPS
@given(st.lists(metrics(), max_size=30), st.none() | st.integers(0, 255))
def test_our_encoder_round_trips_through_our_decoder(
    cases: list[tuple[Metric, float | None]], seq: int | None
) -> None:
    payload = decode_payload(encode_payload([m for m, _ in cases], timestamp_ms=T0, seq=seq))
    assert payload.seq == seq
    assert len(payload.metrics) == len(cases)
    for (sent, expected), got in zip(cases, payload.metrics, strict=True):
        assert (got.name, got.alias, got.timestamp_ms) == (sent.name, sent.alias, sent.timestamp_ms)
        assert got.datatype == sent.datatype
        numbers = numeric_values(got)
        if expected is None:
            assert numbers == Numbers(skipped=(("", "null"),))
        else:
            [(suffix, number)] = numbers.values
            assert suffix == ""
            if sent.datatype == DataType.FLOAT:  # the shortest decimal of the same 32 bits
                assert struct.pack("<f", number) == struct.pack("<f", expected)
            else:
                assert number == expected


@PROPS
@given(st.binary(max_size=400))
def test_random_bytes_decode_or_raise_bad_sparkplug(data: bytes) -> None:
    """Whatever arrives, decoding and converting raise nothing but our error."""
    payload = decode_or_error(data)
    if isinstance(payload, PayloadError):
        assert payload.reason == "bad_sparkplug"
        return
    for metric in payload.metrics:
        found = numeric_values(metric, value_map={"a": 1.0})
        assert all(reason in SKIP_REASONS for _, reason in found.skipped)
        assert all(math.isfinite(v) for _, v in found.values)


@PROPS
@given(st.lists(metrics(), min_size=1, max_size=5), st.data())
def test_mutated_payloads_decode_or_raise_bad_sparkplug(
    cases: list[tuple[Metric, float | None]], data: st.DataObject
) -> None:
    """Valid payloads with a byte flipped, cut or inserted (closer to the decoder's edges than
    random bytes)."""
    good = bytearray(encode_payload([m for m, _ in cases], timestamp_ms=T0, seq=1))
    at = data.draw(st.integers(0, len(good) - 1))
    how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if how == "flip":
        good[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del good[at:]
    else:
        good[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    payload = decode_or_error(bytes(good))
    if isinstance(payload, PayloadError):
        assert payload.reason == "bad_sparkplug"
        return
    for metric in payload.metrics:
        assert all(r in SKIP_REASONS for _, r in numeric_values(metric).skipped)


_ARRAY_RANGES = {
    DataType.INT8_ARRAY: (-(2**7), 2**7 - 1),
    DataType.INT16_ARRAY: (-(2**15), 2**15 - 1),
    DataType.INT32_ARRAY: (-(2**31), 2**31 - 1),
    DataType.INT64_ARRAY: (-(2**63), 2**63 - 1),
    DataType.UINT8_ARRAY: (0, 2**8 - 1),
    DataType.UINT16_ARRAY: (0, 2**16 - 1),
    DataType.UINT32_ARRAY: (0, 2**32 - 1),
    DataType.UINT64_ARRAY: (0, 2**64 - 1),
    DataType.DATETIME_ARRAY: (0, 2**63 - 1),
}


@PROPS
@given(st.sampled_from(sorted(_ARRAY_RANGES)), st.data())
def test_integer_arrays_round_trip(kind: DataType, data: st.DataObject) -> None:
    low, high = _ARRAY_RANGES[kind]
    items = data.draw(st.lists(st.integers(low, high), max_size=40))
    got = one(Metric("a", kind, items))
    assert got == Numbers(tuple((f"[{i}]", float(v)) for i, v in enumerate(items)), ())


@PROPS
@given(st.lists(st.booleans(), max_size=70))
def test_boolean_arrays_round_trip(items: list[bool]) -> None:
    got = one(Metric("a", DataType.BOOLEAN_ARRAY, items))
    assert got == Numbers(tuple((f"[{i}]", float(v)) for i, v in enumerate(items)), ())


@PROPS
@given(
    st.lists(
        st.sampled_from([DataType.INT16, DataType.UINT32, DataType.DOUBLE]), min_size=1, max_size=4
    ),
    st.data(),
)
def test_datasets_round_trip_cell_by_cell(types: list[DataType], data: st.DataObject) -> None:
    values = {
        DataType.INT16: st.integers(-(2**15), 2**15 - 1),
        DataType.UINT32: st.integers(0, 2**32 - 1),
        DataType.DOUBLE: st.floats(allow_nan=False, allow_infinity=False),
    }
    rows = data.draw(st.lists(st.tuples(*(values[t] for t in types)), max_size=6))
    columns = [f"c{i}" for i in range(len(types))]
    got = one(Metric("t", DataType.DATASET, DataSetValue(columns, types, rows)))
    expected = tuple(
        (f"/{columns[c]}[{r}]", float(cell))
        for r, row in enumerate(rows)
        for c, cell in enumerate(row)
    )
    assert got == Numbers(expected, ())
