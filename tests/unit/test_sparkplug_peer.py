"""Our Sparkplug B decoder against another implementation: Eclipse Tahu's JavaScript codec
(npm ``sparkplug-payload``, :mod:`tests.support.sparkplug_peer`) encodes a table of payloads —
every datatype it supports, aliases only, historical, null, DataSet, Template, negative
integers, UInt64's maximum — and our decoder must read back the values it was given. The other
way round, Tahu decodes what our encoder builds.

Tahu's JavaScript codec has no array datatypes (3.0): those are checked against the
specification's own examples in test_sparkplug_decode.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.decode import SparkplugMetric, SparkplugPayload, decode_payload
from bridge.sparkplug.encode import DataSetValue, EdgeNode, Metric, TemplateValue, encode_payload
from bridge.sparkplug.values import numeric_values
from tests.support.sparkplug_peer import as_int, blob, long_, tahu_decode, tahu_encode

T0 = 1_795_681_920_000  # ms
U64_MAX = 2**64 - 1
I64_MIN = -(2**63)

# (Tahu metric, the numbers we must read: {suffix: value}, the reasons we must skip: {suffix: why})
SCALARS: list[tuple[dict[str, Any], dict[str, float], dict[str, str]]] = [
    ({"name": "i8", "type": "Int8", "value": -128}, {"": -128.0}, {}),
    ({"name": "i8p", "type": "Int8", "value": 127}, {"": 127.0}, {}),
    ({"name": "i16", "type": "Int16", "value": -32768}, {"": -32768.0}, {}),
    ({"name": "i32", "type": "Int32", "value": -2147483648}, {"": -2147483648.0}, {}),
    ({"name": "i32m1", "type": "Int32", "value": -1}, {"": -1.0}, {}),
    (
        {"name": "i64", "type": "Int64", "value": long_(I64_MIN, unsigned=False)},
        {"": -(2.0**63)},
        {},
    ),
    ({"name": "i64n", "type": "Int64", "value": -5}, {"": -5.0}, {}),
    ({"name": "u8", "type": "UInt8", "value": 255}, {"": 255.0}, {}),
    ({"name": "u16", "type": "UInt16", "value": 65535}, {"": 65535.0}, {}),
    ({"name": "u32", "type": "UInt32", "value": 4294967295}, {"": 4294967295.0}, {}),
    ({"name": "u64", "type": "UInt64", "value": long_(U64_MAX)}, {"": float(U64_MAX)}, {}),
    ({"name": "u64h", "type": "UInt64", "value": long_(2**63)}, {"": 2.0**63}, {}),
    ({"name": "f", "type": "Float", "value": 21.1}, {"": 21.1}, {}),
    ({"name": "fneg", "type": "Float", "value": -0.003}, {"": -0.003}, {}),
    ({"name": "d", "type": "Double", "value": 1022.9123213}, {"": 1022.9123213}, {}),
    ({"name": "b1", "type": "Boolean", "value": True}, {"": 1.0}, {}),
    ({"name": "b0", "type": "Boolean", "value": False}, {"": 0.0}, {}),
    ({"name": "dt", "type": "DateTime", "value": T0}, {"": float(T0)}, {}),
    ({"name": "s", "type": "String", "value": "RUNNING"}, {}, {"": "text"}),
    ({"name": "t", "type": "Text", "value": "a long text"}, {}, {"": "text"}),
    (
        {"name": "uuid", "type": "UUID", "value": "2b1c3d4e-0000-4000-8000-000000000001"},
        {},
        {"": "text"},
    ),
    ({"name": "bytes", "type": "Bytes", "value": blob(b"\x00\x01\xff")}, {}, {"": "bytes"}),
    ({"name": "file", "type": "File", "value": blob(b"PK\x03\x04")}, {}, {"": "bytes"}),
    ({"name": "null", "type": "Double", "value": None}, {}, {"": "null"}),
]

DATASET = {
    "name": "batch",
    "type": "DataSet",
    "value": {
        "numOfColumns": 4,
        "columns": ["step", "temp", "ok", "note"],
        "types": ["UInt32", "Double", "Boolean", "String"],
        "rows": [[1, 20.5, True, "start"], [2, 21.75, False, "hold"]],
    },
}
DATASET_NUMBERS = {
    "/step[0]": 1.0,
    "/temp[0]": 20.5,
    "/ok[0]": 1.0,
    "/step[1]": 2.0,
    "/temp[1]": 21.75,
    "/ok[1]": 0.0,
}
TEMPLATE = {
    "name": "Motor 1",
    "type": "Template",
    "value": {
        "templateRef": "Motor",
        "isDefinition": False,
        "version": "1.0",
        "metrics": [
            {"name": "rpm", "type": "Int32", "value": -1500},
            {"name": "amps", "type": "Float", "value": 12.5},
            {"name": "state", "type": "String", "value": "ON"},
            {
                "name": "bearing",
                "type": "Template",
                "value": {
                    "templateRef": "Bearing",
                    "isDefinition": False,
                    "metrics": [{"name": "temp", "type": "Double", "value": 61.25}],
                },
            },
        ],
        "parameters": [{"name": "serial", "type": "String", "value": "M-1"}],
    },
}


def _numbers(
    metric: SparkplugMetric, datatype: int | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    found = numeric_values(metric, datatype, value_map=None)
    return dict(found.values), dict(found.skipped)


def _decode_one(payload: dict[str, Any]) -> SparkplugPayload:
    [data] = tahu_encode([payload])
    return decode_payload(data)


def test_every_scalar_datatype_tahu_encodes_reads_back() -> None:
    """One payload with a metric per row of the table: our numbers and skip reasons are the
    values Tahu was given (negative integers, UInt64 max, Float's 32 bits included)."""
    metrics = [dict(m, alias=i + 1, timestamp=T0 + i) for i, (m, _, _) in enumerate(SCALARS)]
    decoded = _decode_one({"timestamp": T0, "seq": 7, "uuid": "u-1", "metrics": metrics})
    assert (decoded.timestamp_ms, decoded.seq, decoded.uuid) == (T0, 7, "u-1")
    assert [m.name for m in decoded.metrics] == [m["name"] for m, _, _ in SCALARS]
    for i, (metric, numbers, skipped) in enumerate(SCALARS):
        got = decoded.metrics[i]
        assert (got.alias, got.timestamp_ms) == (i + 1, T0 + i), metric
        assert got.datatype == DataType[metric["type"].upper()], metric
        assert got.is_null == (metric["value"] is None)
        assert _numbers(got) == (numbers, skipped), metric


def test_aliases_only_data_reads_with_the_births_datatypes() -> None:
    """A DDATA whose metrics carry aliases and no names: read with the datatypes their BIRTH
    declared (a negative Int16 needs its datatype to read back negative)."""
    birth = _decode_one(
        {
            "timestamp": T0,
            "seq": 1,
            "metrics": [
                {"name": "Line/temp", "alias": 10, "type": "Int16", "value": 0},
                {"name": "Line/count", "alias": long_(2**40), "type": "UInt64", "value": 0},
            ],
        }
    )
    types = {m.alias: m.datatype for m in birth.metrics}
    assert types == {10: DataType.INT16, 2**40: DataType.UINT64}
    data = _decode_one(
        {
            "timestamp": T0 + 1000,
            "seq": 2,
            "metrics": [
                {"alias": 10, "type": "Int16", "value": -273},
                {"alias": long_(2**40), "type": "UInt64", "value": long_(U64_MAX - 1)},
            ],
        }
    )
    assert [m.name for m in data.metrics] == [None, None]
    values = [numeric_values(m, types[m.alias]).values for m in data.metrics]
    assert values == [(("", -273.0),), (("", float(U64_MAX - 1)),)]


def test_historical_and_transient_flags_and_metric_times() -> None:
    decoded = _decode_one(
        {
            "timestamp": T0,
            "metrics": [
                {
                    "name": "h",
                    "type": "Double",
                    "value": 1.5,
                    "isHistorical": True,
                    "timestamp": T0 - 60_000,
                },
                {"name": "tr", "type": "Double", "value": 2.5, "isTransient": True},
            ],
        }
    )
    h, tr = decoded.metrics
    assert (h.is_historical, h.is_transient, h.timestamp_ms) == (True, False, T0 - 60_000)
    assert (tr.is_historical, tr.is_transient, tr.timestamp_ms) == (False, True, None)


def test_a_dataset_flattens_to_column_and_row_cells() -> None:
    [metric] = _decode_one({"timestamp": T0, "metrics": [DATASET]}).metrics
    assert _numbers(metric) == (DATASET_NUMBERS, {"/note[0]": "text", "/note[1]": "text"})
    mapped = numeric_values(metric, value_map={"start": 1.0, "hold": 2.0})
    assert dict(mapped.values) == {**DATASET_NUMBERS, "/note[0]": 1.0, "/note[1]": 2.0}


def test_a_template_flattens_to_its_members_recursively() -> None:
    [metric] = _decode_one({"timestamp": T0, "metrics": [TEMPLATE]}).metrics
    numbers, skipped = _numbers(metric)
    assert numbers == {"/rpm": -1500.0, "/amps": 12.5, "/bearing/temp": 61.25}
    assert skipped == {"/state": "text"}
    assert numeric_values(metric, max_depth=1).skipped == (
        ("/state", "text"),
        ("/bearing", "too_deep"),
    )


def test_properties_survive_as_metadata() -> None:
    [metric] = _decode_one(
        {
            "timestamp": T0,
            "metrics": [
                {
                    "name": "temp",
                    "type": "Float",
                    "value": 20.0,
                    "properties": {
                        "engUnit": {"type": "String", "value": "degC"},
                        "Quality": {"type": "Int32", "value": 192},
                    },
                }
            ],
        }
    ).metrics
    props = {p.key: (p.datatype, p.value.raw) for p in metric.properties}
    assert props == {"engUnit": (DataType.STRING, "degC"), "Quality": (DataType.INT32, 192)}


def test_tahu_reads_what_our_edge_node_encodes() -> None:
    """The other direction: Tahu decodes our NBIRTH and an aliases-only NDATA to the same names,
    aliases, types and values (so the demo's edge node speaks standard Sparkplug)."""
    node = EdgeNode("Plant", "edge-1", bd_seq=3)
    born = [
        Metric("temp", DataType.FLOAT, 21.5),
        Metric("count", DataType.UINT64, U64_MAX),
        Metric("delta", DataType.INT32, -7),
        Metric("level", DataType.UINT32, 4_000_000_000),
        Metric("on", DataType.BOOLEAN, True),
        Metric("mode", DataType.STRING, "AUTO"),
        Metric("when", DataType.DATETIME, T0),
        Metric("gone", DataType.DOUBLE, None),
    ]
    _, birth = node.nbirth(born, T0)
    _, data = node.ndata({"temp": 22.25, "delta": -8}, T0 + 1000)
    tb, td = tahu_decode([birth, data])
    assert as_int(tb["seq"]) == 0
    assert as_int(tb["timestamp"]) == T0
    by_name = {m["name"]: m for m in tb["metrics"]}
    assert as_int(by_name["bdSeq"]["value"]) == 3
    assert by_name["Node Control/Rebirth"]["value"] is False
    assert by_name["temp"]["value"] == 21.5
    assert by_name["temp"]["type"] == "Float"
    assert as_int(by_name["count"]["value"]) == U64_MAX
    assert by_name["delta"]["value"] == -7
    assert by_name["level"]["value"] == 4_000_000_000
    assert by_name["on"]["value"] is True
    assert by_name["mode"]["value"] == "AUTO"
    assert as_int(by_name["when"]["value"]) == T0
    assert by_name["gone"]["value"] is None
    aliases = {name: as_int(m["alias"]) for name, m in by_name.items() if "alias" in m}
    assert aliases == {
        "temp": 1,
        "count": 2,
        "delta": 3,
        "level": 4,
        "on": 5,
        "mode": 6,
        "when": 7,
        "gone": 8,
    }
    assert as_int(td["seq"]) == 1
    assert "name" not in td["metrics"][0]
    assert [as_int(m["alias"]) for m in td["metrics"]] == [1, 3]


def test_tahu_reads_our_dataset_and_template() -> None:
    payload = encode_payload(
        [
            Metric(
                "motor",
                DataType.TEMPLATE,
                TemplateValue([Metric("rpm", DataType.INT16, -20)], template_ref="Motor"),
            ),
            Metric(
                "table",
                DataType.DATASET,
                DataSetValue(["a", "b"], [DataType.DOUBLE, DataType.STRING], [[1.5, "x"]]),
            ),
        ],
        timestamp_ms=T0,
    )
    [decoded] = tahu_decode([payload])
    motor, table = decoded["metrics"]
    assert motor["value"]["templateRef"] == "Motor"
    assert motor["value"]["metrics"][0]["value"] == -20
    assert table["value"]["columns"] == ["a", "b"]
    assert table["value"]["rows"] == [[1.5, "x"]]


@pytest.mark.parametrize("kind", ["NBIRTH", "NDEATH"])
def test_our_ndeath_and_nbirth_carry_the_same_bdseq_for_tahu(kind: str) -> None:
    node = EdgeNode("G", "E", bd_seq=41)
    _, payload = node.nbirth([], T0) if kind == "NBIRTH" else node.ndeath()
    [decoded] = tahu_decode([payload])
    [bd] = [m for m in decoded["metrics"] if m["name"] == "bdSeq"]
    assert as_int(bd["value"]) == 41
    assert bd["type"] == "Int64"
    assert ("seq" in decoded) == (kind == "NBIRTH")
