"""The ``payload: sparkplug`` rule form: alias tables from BIRTHs, DATA by alias, names, globs,
timestamps and the counted skips, through the real loader and mapper and our encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config.yamlfile import load_yaml_text
from bridge.errors import ConfigErrors
from bridge.mapping.loader import compile_mappings, load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.mapping.overlap import rule_warnings
from bridge.mapping.selftest import run_mapping_tests
from bridge.mapping.spec import MappingFile
from bridge.sparkplug.aliases import AliasTables
from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.decode import decode_payload
from bridge.sparkplug.encode import EdgeNode, Metric, encode_payload

T0_MS = 1_795_680_000_000
RECEIVED_US = (T0_MS + 60_000) * 1000


def mapper(block: str = "", extra: str = "") -> Mapper:
    text = f"""version: 1
rules:
  - name: sp
    topic: "spBv1.0/#"
    payload: sparkplug
{extra}"""
    if block:
        text += f"    sparkplug: {block}\n"
    return Mapper(load_mappings_text(text, "m.yaml"))


def points(m: Mapper, topic: str, payload: bytes) -> dict[tuple[str, str], tuple[int, float]]:
    out = m.map(topic, payload, RECEIVED_US)
    assert out.failures == [], out.failures
    return {
        (r.device_id, name): (r.ts_us // 1000, v)
        for r in out.records
        for name, v in r.metrics.items()
    }


def test_birth_then_data_by_alias_only_becomes_named_points() -> None:
    """The NBIRTH and DBIRTH define the aliases; DATA that sends only aliases, without
    datatypes, is read with the BIRTH's datatype (a negative Int16 stays negative) and named by
    the BIRTH's names, folders joined with the default separator '.'."""
    m = mapper()
    node = EdgeNode("G", "E")
    born = points(m, *node.nbirth([Metric("Inside/Temp", DataType.FLOAT, 21.5)], T0_MS))
    assert born == {("G-E", "Inside.Temp"): (T0_MS, 21.5)}  # bdSeq, Node Control left out
    m.map(*node.dbirth("pump", [Metric("Count", DataType.INT16, 1)], T0_MS), RECEIVED_US)
    got = points(m, *node.ddata("pump", {"Count": -5}, T0_MS + 1000))
    assert got == {("G-E-pump", "Count"): (T0_MS + 1000, -5.0)}
    got = points(m, *node.ndata({"Inside/Temp": 22.25}, T0_MS + 2000))
    assert got == {("G-E", "Inside.Temp"): (T0_MS + 2000, 22.25)}


def test_data_with_an_unknown_alias_is_to_be_parked_whole() -> None:
    """Nothing of it now (not even its known aliases), no failure: the intake keeps it."""
    m = mapper()
    node = EdgeNode("G", "E")
    m.map(*node.nbirth([Metric("a", DataType.DOUBLE, 1.0)], T0_MS), RECEIVED_US)
    node.dbirth("d", [Metric("b", DataType.DOUBLE, 1.0)], T0_MS)  # the bridge never sees it
    out = m.map(*node.ndata({"a": 2.0}, T0_MS), RECEIVED_US)
    assert [r.metrics for r in out.records] == [{"a": 2.0}]
    topic, payload = node.ddata("d", {"b": 2.0}, T0_MS)
    out = m.map(topic, payload, RECEIVED_US)
    assert (out.park, out.records, out.failures) == (("G", "E"), [], [])


def test_a_rebirth_with_new_aliases_replaces_the_old_ones() -> None:
    """After a new session the node gives its aliases out again, in another order: DATA
    resolves against the new table, never the old one, and a device born before the NBIRTH is
    forgotten until it re-births."""
    m = mapper()
    first = EdgeNode("G", "E")
    m.map(
        *first.nbirth(
            [Metric("a", DataType.DOUBLE, 1.0), Metric("b", DataType.DOUBLE, 2.0)], T0_MS
        ),
        RECEIVED_US,
    )
    m.map(*first.dbirth("d", [Metric("c", DataType.DOUBLE, 3.0)], T0_MS), RECEIVED_US)
    second = EdgeNode("G", "E", bd_seq=1)
    m.map(
        *second.nbirth(
            [Metric("b", DataType.DOUBLE, 2.0), Metric("a", DataType.DOUBLE, 1.0)], T0_MS
        ),
        RECEIVED_US,
    )
    assert first.aliases[(None, "a")][0] == second.aliases[(None, "b")][0]  # swapped
    got = points(m, *second.ndata({"a": 10.0, "b": 20.0}, T0_MS + 1))
    assert got == {("G-E", "a"): (T0_MS + 1, 10.0), ("G-E", "b"): (T0_MS + 1, 20.0)}
    out = m.map(*first.ddata("d", {"c": 4.0}, T0_MS + 2), RECEIVED_US)
    assert (out.park, out.records) == (("G", "E"), [])  # until d re-births


def test_names_globs_rename_and_value_map() -> None:
    m = mapper(
        "{separator: _, include: ['Line/*', State], exclude: ['Line/Debug*'],"
        " rename: {'Line/Speed': speed_rpm}, map: {RUNNING: 1, STOPPED: 0}}"
    )
    node = EdgeNode("G", "E")
    out = m.map(
        *node.nbirth(
            [
                Metric("Line/Speed", DataType.INT32, 1480),
                Metric("Line/Temp", DataType.DOUBLE, 40.5),
                Metric("Line/Debug/Count", DataType.INT32, 3),
                Metric("Other", DataType.INT32, 3),
                Metric("State", DataType.STRING, "RUNNING"),
            ],
            T0_MS,
        ),
        RECEIVED_US,
    )
    assert out.failures == []
    [record] = out.records
    assert record.metrics == {"speed_rpm": 1480.0, "Line_Temp": 40.5, "State": 1.0}
    assert out.skipped_readings == 4  # bdSeq, Node Control/Rebirth, Line/Debug/Count, Other


def test_times_nulls_and_historical_values() -> None:
    """Each metric has its own time, else the payload's, else the receive time; a historical
    metric keeps its own; is_null and text without a map are counted by reason, not failures."""
    m = mapper()
    payload = encode_payload(
        [
            Metric("own", DataType.DOUBLE, 1.0, timestamp_ms=T0_MS - 5000),
            Metric(
                "old", DataType.DOUBLE, 2.0, timestamp_ms=T0_MS - 86_000_000, is_historical=True
            ),
            Metric("plain", DataType.DOUBLE, 3.0),
            Metric("nothing", DataType.DOUBLE, None),
            Metric("label", DataType.STRING, "x"),
        ],
        timestamp_ms=T0_MS,
        seq=0,
    )
    out = m.map("spBv1.0/G/NBIRTH/E", payload, RECEIVED_US)
    got = {n: r.ts_us // 1000 for r in out.records for n in r.metrics}
    assert got == {"own": T0_MS - 5000, "old": T0_MS - 86_000_000, "plain": T0_MS}
    assert out.skipped_values == {"null": 1, "text": 1}
    assert out.failures == []
    bare = encode_payload([Metric("v", DataType.DOUBLE, 1.0)], seq=0)
    [record] = m.map("spBv1.0/G/NBIRTH/E", bare, RECEIVED_US).records
    assert record.ts_us == RECEIVED_US


def test_death_and_commands_are_ignored_and_bad_payloads_fail() -> None:
    m = mapper()
    node = EdgeNode("G", "E")
    assert m.map(*node.ndeath(), RECEIVED_US).ignored
    assert m.map("spBv1.0/G/NCMD/E", b"", RECEIVED_US).ignored
    out = m.map("spBv1.0/G/NDATA/E", b"\xff\xff\xff", RECEIVED_US)
    assert [f.reason for f in out.failures] == ["bad_sparkplug"]
    out = m.map("spBv1.0/G/NDATA", b"", RECEIVED_US)
    assert [f.reason for f in out.failures] == ["bad_sparkplug"]


def test_device_id_templates() -> None:
    m = mapper(
        "{node_device_id: 'plant-{node}'}",
        extra="    device_id: '{node}.{device}'\n",
    )
    node = EdgeNode("G", "E")
    assert set(points(m, *node.nbirth([Metric("a", DataType.DOUBLE, 1.0)], T0_MS))) == {
        ("plant-E", "a")
    }
    assert set(points(m, *node.dbirth("d", [Metric("b", DataType.DOUBLE, 1.0)], T0_MS))) == {
        ("E.d", "b")
    }


@pytest.mark.parametrize(
    ("extra", "wanted"),
    [
        ("    metrics: {a: b}\n", "'metrics' is not for payload: sparkplug"),
        ("    sparkplug: {separatr: _}\n", "separatr"),
        ("    sparkplug: {node_device_id: '{node}-{device}'}\n", "have no device"),
        ("    device_id: '{grup}'\n", "did you mean"),
        ("    sparkplug: {separator: '/'}\n", "cannot hold one"),
    ],
)
def test_check_reports_wrong_keys_with_file_and_line(extra: str, wanted: str) -> None:
    text = f"""version: 1
rules:
  - name: sp
    topic: "spBv1.0/#"
    payload: sparkplug
{extra}"""
    with pytest.raises(ConfigErrors) as exc:
        load_mappings_text(text, "m.yaml")
    assert "m.yaml:" in str(exc.value)
    assert wanted in str(exc.value)


def test_a_sparkplug_block_on_another_payload_is_an_error() -> None:
    text = """version: 1
rules:
  - name: j
    topic: a/b
    device_id: x
    metrics: {v: v}
    sparkplug: {separator: _}
"""
    with pytest.raises(ConfigErrors, match="'sparkplug' is for payload: sparkplug"):
        load_mappings_text(text, "m.yaml")


# -- the alias tables, as a model -------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "Folder/d"])
DEVICES = st.sampled_from([None, "d1", "d2"])
BASE = {None: 0, "d1": 10, "d2": 20}  # aliases are unique across a node and its devices
BIRTH = st.tuples(DEVICES, st.dictionaries(NAMES, st.integers(1, 6), max_size=4))


def alias_only(alias: int) -> object:
    payload = encode_payload([Metric(None, DataType.DOUBLE, 1.0, alias=alias, send_datatype=False)])
    return decode_payload(payload).metrics[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(BIRTH, max_size=8))
def test_tables_resolve_what_the_last_births_defined_and_survive_a_reload(
    births: list[tuple[str | None, dict[str, int]]],
) -> None:
    """Model: an NBIRTH replaces the node (devices included), a DBIRTH its device; an alias
    resolves to the name the latest BIRTH of its device gave it, for that device only. The rows
    (what the spool stores) load back into tables that resolve the same."""
    tables = AliasTables()
    model: dict[str | None, dict[int, str]] = {}
    for device, names in births:
        given_out = {n: BASE[device] + a for n, a in names.items()}
        metrics = [Metric(n, DataType.DOUBLE, 1.0, alias=a) for n, a in given_out.items()]
        tables.birth("G", "E", device, decode_payload(encode_payload(metrics)).metrics)
        if device is None:
            model = {}
        model[device] = {a: n for n, a in given_out.items()}
    reloaded = AliasTables()
    reloaded.load(tables.rows())
    for device in BASE:
        for alias in range(1, 27):
            probe = alias_only(alias)
            want = model.get(device, {}).get(alias)
            for t in (tables, reloaded):
                got = t.resolve("G", "E", device, probe)  # type: ignore[arg-type]
                assert (got.name if got else None) == want


# -- the docs' examples ------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def _yaml_blocks(page: str) -> list[str]:
    text = (REPO / "docs" / "guide" / page).read_text(encoding="utf-8")
    return [b.split("```")[0] for b in text.split("```yaml\n")[1:]]


def test_the_cookbooks_sparkplug_recipe_passes_check_strict_and_its_tests() -> None:
    """BIRTH tests first, DATA by alias after them, with payload_hex: all pass."""
    (block,) = [b for b in _yaml_blocks("recipes.md") if "plant1-sparkplug" in b]
    data, index = load_yaml_text(block, "recipes.md")
    rules = compile_mappings(data, index)
    assert rule_warnings(rules) == []
    tests = MappingFile.model_validate(data).tests or []
    assert len(tests) == 4
    assert [o.problems for o in run_mapping_tests(rules, tests, index)] == [[]] * 4


def test_the_guides_example_compiles_and_maps_a_birth() -> None:
    (block,) = [b for b in _yaml_blocks("sparkplug.md") if "version: 1" in b]
    m = Mapper(load_mappings_text(block, "sparkplug.md"))
    node = EdgeNode("plant1", "press-7")
    born = [
        Metric("Line/Speed", DataType.INT32, 1480),
        Metric("Debug/x", DataType.INT32, 1),
        Metric("State", DataType.STRING, "RUNNING"),
    ]
    out = m.map(*node.nbirth(born, T0_MS), RECEIVED_US)
    assert out.failures == []
    assert [r.metrics for r in out.records] == [{"online": 1.0, "speed_rpm": 1480.0, "State": 1.0}]


def test_a_mapping_test_with_bad_hex_says_so() -> None:
    text = """version: 1
rules:
  - name: sp
    topic: "spBv1.0/#"
    payload: sparkplug
tests:
  - topic: spBv1.0/G/NDATA/E
    payload_hex: "zz"
  - topic: spBv1.0/G/NDATA/E
    payload: x
    payload_hex: "00"
"""
    data, index = load_yaml_text(text, "m.yaml")
    rules = compile_mappings(data, index)
    tests = MappingFile.model_validate(data).tests or []
    first, second = run_mapping_tests(rules, tests, index)
    assert "payload_hex" in first.problems[0]
    assert "exactly one of" in second.problems[0]


def test_a_time_before_2000_fails_its_metric_and_moves_an_online_point_to_receipt() -> None:
    """A node whose clock was never set (epoch 0.25 s): its values fail ``bad_timestamp`` as a
    JSON time before 2000 does (counted and dead-lettered, never stored in 1970); the BIRTH's
    online point, a state change, takes the receive time instead."""
    m = mapper("{online_metric: online}")
    node = EdgeNode("G", "E")
    out = m.map(*node.nbirth([Metric("a", DataType.DOUBLE, 1.0)], 250), RECEIVED_US)
    assert [f.reason for f in out.failures] == ["bad_timestamp"]
    assert [(r.ts_us, r.metrics) for r in out.records] == [(RECEIVED_US, {"online": 1.0})]
    out = m.map(*node.ndata({"a": 2.0}, T0_MS), RECEIVED_US)
    assert (out.failures, [r.metrics for r in out.records]) == ([], [{"a": 2.0}])
