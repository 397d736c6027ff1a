"""Per-element device and metric names: ``readings.device`` / ``readings.metric`` templates over a
reading's own fields (one tag-list message, several devices), ``each: {path, where}``, the
per-element failures and the ``check`` errors of the new keys; properties of the compiled rules
(hypothesis)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cli.main import main
from bridge.errors import ConfigError
from bridge.mapping.explain import explain, format_explanation
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapped, Mapper
from bridge.mapping.timestamps import format_timestamp
from tests.support import REPO

PROPS = settings(derandomize=True, database=None, deadline=None, max_examples=200)
NOW_US = 1_700_000_001_000_000
T_MS = 1_700_000_000_100

KEPWARE = """version: 1
rules:
  - name: kep
    topic: iotgateway
    readings:
      path: values
      device: "{$id|segment:.:0:-1}"
      metric: "{$id|segment:.:-1}"
      value: v
      time: t
      time_format: epoch_ms
      where: {q: true}
"""

# The Kepware IoT Gateway message: two devices, one reading of bad quality.
MESSAGE = orjson.dumps(
    {
        "timestamp": 1700000000123,
        "values": [
            {"id": "Line1.Press01.Temperature", "v": 81.5, "q": True, "t": T_MS},
            {"id": "Line1.Press01.Pressure", "v": 3.2, "q": True, "t": T_MS},
            {"id": "Line1.Press02.Temperature", "v": 79.1, "q": False, "t": T_MS},
            {"id": "Line1.Press02.Pressure", "v": 3.0, "q": True, "t": T_MS + 5},
        ],
    }
)


def mapper(text: str) -> Mapper:
    return Mapper(load_mappings_text(text, "m.yaml"))


def rules(body: str) -> Mapper:
    return mapper("version: 1\nrules:\n" + body)


def points(out: Mapped) -> list[tuple[str, int, dict[str, float]]]:
    return [(r.device_id, r.ts_us, r.metrics) for r in out.records]


def config_error(body: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_mappings_text("version: 1\nrules:\n" + body, "file.yaml")
    return str(info.value)


def test_one_message_becomes_points_of_several_devices() -> None:
    """Device: the tag id up to its last dot; metric: its last segment; one record per device
    and time; the bad-quality reading is left out and counted, not failed."""
    out = mapper(KEPWARE).map("iotgateway", MESSAGE, NOW_US)
    assert out.failures == []
    assert out.skipped_readings == 1
    assert points(out) == [
        ("Line1.Press01", T_MS * 1000, {"Temperature": 81.5, "Pressure": 3.2}),
        ("Line1.Press02", (T_MS + 5) * 1000, {"Pressure": 3.0}),
    ]


def test_prefix_and_rename_apply_to_the_rendered_metric_name() -> None:
    """rename's keys are rendered names; prefix goes before every name, as with 'name'."""
    m = rules(
        "  - name: gw\n    topic: gw\n"
        "    readings: {device: '{$id|segment:.:0}', metric: '{$id|segment:.:-1|lower}', value: v,"
        " prefix: 'p_', rename: {temp: temp_c}}\n"
    )
    out = m.map("gw", b'[{"id": "A.Temp", "v": 1}, {"id": "B.Flow", "v": 2}]', NOW_US)
    assert points(out) == [("A", NOW_US, {"p_temp_c": 1.0}), ("B", NOW_US, {"p_flow": 2.0})]


def test_metrics_keep_the_rule_device_beside_readings_of_their_own_devices() -> None:
    """With device_id and readings.device, 'metrics' points go to device_id and readings to
    theirs; device_id's {$field} still reads the whole payload."""
    m = rules(
        "  - name: gw\n    topic: gw/{g}\n    device_id: '{g}-{$site}'\n"
        "    metrics: {uptime: up}\n"
        "    readings: {path: r, device: '{g}-{$dev}', metric: '{$m}', value: v}\n"
    )
    payload = b'{"site": "s1", "up": 9, "r": [{"dev": "a", "m": "t", "v": 1}]}'
    assert points(m.map("gw/x", payload, NOW_US)) == [
        ("x-s1", NOW_US, {"uptime": 9.0}),
        ("x-a", NOW_US, {"t": 1.0}),
    ]


def test_the_readings_name_form_still_takes_the_rule_device() -> None:
    """readings.metric alone (no readings.device): every reading is the rule device's."""
    m = rules(
        "  - name: gw\n    topic: gw\n    device_id: gw1\n"
        "    readings: {metric: '{$id|segment:/:-1}', value: v}\n"
    )
    out = m.map("gw", b'[{"id": "a/b/t1", "v": 1}, {"id": "a/c/t2", "v": 2}]', NOW_US)
    assert points(out) == [("gw1", NOW_US, {"t1": 1.0, "t2": 2.0})]


def test_a_reading_whose_device_cannot_be_built_fails_alone() -> None:
    """A tag id without a dot: that reading is missing_field naming its index; the others are
    delivered. With reject_message nothing of the message is."""
    payload = orjson.dumps(
        {
            "values": [
                {"id": "L.P.T", "v": 1, "q": True, "t": T_MS},
                {"id": "Heartbeat", "v": 1, "q": True},
            ]
        }
    )
    out = mapper(KEPWARE).map("iotgateway", payload, NOW_US)
    assert points(out) == [("L.P", T_MS * 1000, {"T": 1.0})]
    assert [f.reason for f in out.failures] == ["missing_field"]
    assert out.failures[0].detail.startswith("reading 1: ")
    assert "'Heartbeat'" in out.failures[0].detail
    strict = mapper(KEPWARE.replace("    readings:", "    on_error: reject_message\n    readings:"))
    rejected = strict.map("iotgateway", payload, NOW_US)
    assert rejected.records == []
    assert [f.reason for f in rejected.failures] == ["missing_field"]


def test_bad_rendered_names_are_per_reading_failures_with_their_index() -> None:
    """An empty metric name, an empty device and a device with a control character each fail
    their reading only, with its index in the detail."""
    m = rules(
        "  - name: gw\n    topic: gw\n"
        "    readings: {device: '{$d}', metric: '{$id|segment:.:-1}', value: v}\n"
    )
    payload = orjson.dumps(
        [
            {"d": "ok", "id": "a.t", "v": 1},
            {"d": "ok", "id": "a.", "v": 2},  # last segment empty
            {"d": "", "id": "a.t", "v": 3},
            {"d": "bad\nid", "id": "a.u", "v": 4},
        ]
    )
    out = m.map("gw", payload, NOW_US)
    assert points(out) == [("ok", NOW_US, {"t": 1.0})]
    got = [(f.reason, f.detail.split(":")[0]) for f in out.failures]
    assert got == [
        ("bad_metric_name", "reading 1"),
        ("bad_device_id", "reading 2"),
        ("bad_device_id", "reading 3"),
    ]


def test_same_metric_of_two_devices_is_kept_and_a_true_duplicate_is_reported() -> None:
    """Grouping is by device and time: Temperature of two presses at one time are two points;
    the same press twice at one time keeps the first and reports the second."""
    payload = orjson.dumps(
        {
            "values": [
                {"id": "L.P1.Temp", "v": 1, "q": True, "t": T_MS},
                {"id": "L.P2.Temp", "v": 2, "q": True, "t": T_MS},
                {"id": "L.P1.Temp", "v": 3, "q": True, "t": T_MS},
            ]
        }
    )
    out = mapper(KEPWARE).map("iotgateway", payload, NOW_US)
    assert points(out) == [
        ("L.P1", T_MS * 1000, {"Temp": 1.0}),
        ("L.P2", T_MS * 1000, {"Temp": 2.0}),
    ]
    assert [(f.reason, f.detail) for f in out.failures] == [
        ("duplicate_reading", "reading 2 (Temp): twice at one time")
    ]


EACH = """  - name: hub
    topic: hub/{hub}
    device_id: '{hub}-{$id|segment:.:0:-1}'
    each: {path: values, where: {q: true}}
    metrics: {'{$id|segment:.:-1}': v}
"""


def test_each_where_leaves_elements_out_and_counts_them() -> None:
    """each's where keeps matching elements only (booleans strict: q = 1 is not true); the
    others are counted as skipped, not failed; device and metric come from the element."""
    payload = orjson.dumps(
        {
            "values": [
                {"id": "L.P1.Temp", "v": 1, "q": True},
                {"id": "L.P2.Temp", "v": 2, "q": False},
                {"id": "L.P3.Temp", "v": 3, "q": 1},
                {"id": "L.P4.Flow", "v": 4, "q": True},
            ]
        }
    )
    out = rules(EACH).map("hub/h", payload, NOW_US)
    assert out.failures == []
    assert out.skipped_readings == 2
    assert points(out) == [("h-L.P1", NOW_US, {"Temp": 1.0}), ("h-L.P4", NOW_US, {"Flow": 4.0})]


def test_each_where_leaving_out_every_element_is_not_a_failure() -> None:
    """All elements left out on purpose: no points, no failure (not no_metrics)."""
    out = rules(EACH).map("hub/h", b'{"values": [{"id": "a.b", "v": 1, "q": false}]}', NOW_US)
    assert (out.records, out.failures, out.skipped_readings) == ([], [], 1)


def test_each_failures_name_their_element_and_reject_message_rejects_all() -> None:
    """A failing element's detail names it (path[key]); the others map, unless on_error:
    reject_message, which keeps every element of the message out."""
    body = (
        "  - name: hub\n    topic: hub\n    device_id: '{@key}'\n"
        "    each: devices\n    metrics: {t: temp}\n"
    )
    payload = b'{"devices": {"a": {"temp": 1}, "b": {"hum": 2}, "c": {"temp": 3}}}'
    out = rules(body).map("hub", payload, NOW_US)
    assert [r.device_id for r in out.records] == ["a", "c"]
    assert [(f.reason, f.detail) for f in out.failures] == [
        ("missing_field", "devices[b]: t: no field 'temp'")
    ]
    strict = rules(body + "    on_error: reject_message\n").map("hub", payload, NOW_US)
    assert (strict.records, [f.reason for f in strict.failures]) == ([], ["missing_field"])


def test_each_written_as_a_path_still_works() -> None:
    """each: path (the old form) maps every element, with {@key}."""
    m = rules(
        "  - name: hub\n    topic: hub\n    device_id: '{@key}'\n    each: d\n    metrics: {t: t}\n"
    )
    out = m.map("hub", b'{"d": [{"t": 1}, {"t": 2}]}', NOW_US)
    assert points(out) == [("0", NOW_US, {"t": 1.0}), ("1", NOW_US, {"t": 2.0})]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "    readings: {path: v, device: '{$id|segmnt:.:0}', metric: '{$id}', value: v}\n",
            "file.yaml:5: rules[0].readings.device: unknown template filter 'segmnt:.:0'; "
            "did you mean 'segment'?",
        ),
        (
            "    readings: {path: v, device: '{$id', metric: '{$id}', value: v}\n",
            "file.yaml:5: rules[0].readings.device: unbalanced '{'",
        ),
        (
            "    readings: {path: v, device: '{$a}', metric: '{id}', value: v}\n",
            "file.yaml:5: rules[0].readings.metric: template uses {id} but the topic captures: "
            "none; a field is written {$id}",
        ),
        (
            "    readings: {path: v, devcie: '{$a}', metric: '{$id}', value: v}\n",
            "file.yaml:5: rules[0].readings.devcie: unknown key; did you mean 'device'?",
        ),
        (
            "    readings: {path: v, device: '{$a}', metic: '{$id}', value: v}\n",
            "file.yaml:5: rules[0].readings.metic: unknown key; did you mean 'metric'?",
        ),
        (
            "    readings: {path: v, device: '{$a}', name: id, metric: '{$id}', value: v}\n",
            "file.yaml:5: rules[0].readings: give one of 'name'",
        ),
        (
            "    readings: {path: v, device: '{$a}', value: v}\n",
            "file.yaml:5: rules[0].readings: give one of 'name'",
        ),
        (
            "    readings: {path: v, device: '{$a}', metric: '{$id}', value: v}\n"
            "    metrics: {up: up}\n",
            "rules[0].device_id: 'readings.device' names the readings' devices only",
        ),
        (
            "    device_id: x\n    each: {path: v, wher: {q: true}}\n    metrics: {t: t}\n",
            "file.yaml:6: rules[0].each.wher: unknown key; did you mean 'where'?",
        ),
        (
            "    device_id: x\n    each: {path: 'v.', where: {q: true}}\n    metrics: {t: t}\n",
            "file.yaml:6: rules[0].each.path: field path 'v.' has an empty segment",
        ),
    ],
)
def test_check_reports_the_new_keys_with_file_and_line(body: str, expected: str) -> None:
    """Unknown filters, stray braces, capture-vs-field mix-ups and misspelled keys are errors of
    the file with its line and a suggestion."""
    assert expected in config_error("  - name: gw\n    topic: gw\n" + body)


def test_check_exits_78_on_a_misspelled_readings_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`metriqo-bridge check` on the file: exit 78, file:line: key: message."""
    path = tmp_path / "m.yaml"
    path.write_text(KEPWARE.replace("device:", "devise:"), encoding="utf-8")
    assert main(["check", str(path)]) == 78
    assert f"{path}:7: rules[0].readings.devise: unknown key; did you mean 'device'?" in (
        capsys.readouterr().err
    )


def test_explain_shows_each_device_of_the_message() -> None:
    """explain prints one block per device and time, with the reading-level names, and the
    reading left out by where."""
    text = format_explanation(explain(mapper(KEPWARE), "iotgateway", MESSAGE, NOW_US))
    assert "device  Line1.Press01\n" in text
    assert "points  Temperature = 81.5\n        Pressure = 3.2\n" in text
    assert "device  Line1.Press02\n" in text
    assert f"time    {format_timestamp((T_MS + 5) * 1000)}" in text
    assert "skipped 1 reading(s) left out by 'where'" in text
    assert "result  3 points, nothing dead-lettered" in text


# -- properties -------------------------------------------------------------------------------

_SEGMENT = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
    min_size=1,
    max_size=8,
)
_TAG = st.lists(_SEGMENT, min_size=2, max_size=5).map(".".join)
_READING = st.tuples(_TAG, st.integers(-1000, 1000), st.integers(0, 3), st.booleans())


@PROPS
@given(st.lists(_READING, max_size=30))
def test_every_kept_reading_is_one_point_of_the_device_before_its_last_dot(
    readings: list[tuple[str, int, int, bool]],
) -> None:
    """For any tags A.B.C: the device is everything before the last dot, the metric the last
    segment; every good-quality reading is a point exactly once (the first of a duplicate wins,
    the rest are reported), bad-quality ones are counted as skipped."""
    doc = {"values": [{"id": tag, "v": v, "q": q, "t": T_MS + dt} for tag, v, dt, q in readings]}
    out = mapper(KEPWARE).map("iotgateway", orjson.dumps(doc), NOW_US)
    want: dict[tuple[str, int, str], float] = {}
    duplicates = 0
    for tag, v, dt, q in readings:
        if not q:
            continue
        device, _, metric = tag.rpartition(".")
        key = (device, (T_MS + dt) * 1000, metric)
        if key in want:
            duplicates += 1
        else:
            want[key] = float(v)
    got: dict[tuple[str, int, str], float] = {}
    for r in out.records:
        for name, value in r.metrics.items():
            assert (r.device_id, r.ts_us, name) not in got
            got[(r.device_id, r.ts_us, name)] = value
    assert got == want
    empty = ["no_metrics"] if not readings else []  # an empty list: nothing to map at all
    assert [f.reason for f in out.failures] == ["duplicate_reading"] * duplicates + empty
    assert out.skipped_readings == sum(1 for *_, q in readings if not q)
    # One record per (device, time): the API receives one object each.
    keys = [(r.device_id, r.ts_us) for r in out.records]
    assert len(keys) == len(set(keys))


@PROPS
@given(st.lists(st.tuples(_TAG, st.booleans()), max_size=20))
def test_each_where_maps_exactly_the_matching_elements(elements: list[tuple[str, bool]]) -> None:
    """each with where: every matching element is mapped once, under its own device; every
    other one is counted as skipped; nothing fails."""
    doc = {"values": [{"id": tag, "v": i, "q": q} for i, (tag, q) in enumerate(elements)]}
    out = rules(EACH).map("hub/h", orjson.dumps(doc), NOW_US)
    assert out.skipped_readings == sum(1 for _, q in elements if not q)
    kept = [
        (f"h-{tag.rpartition('.')[0]}", tag.rpartition(".")[2], float(i))
        for i, (tag, q) in enumerate(elements)
        if q
    ]
    got = [(r.device_id, name, v) for r in out.records for name, v in r.metrics.items()]
    assert got == kept
    if elements and not kept:
        assert out.failures == []


def test_the_guides_kepware_example_passes_its_tests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The per-reading example of docs/guide/mapping-file.md passes check --strict and test."""
    page = (REPO / "docs" / "guide" / "mapping-file.md").read_text(encoding="utf-8")
    blocks = [b.split("```")[0] for b in page.split("```yaml\n")[1:]]
    (block,) = [b for b in blocks if "name: kepware-tags" in b]
    path = tmp_path / "tags.yaml"
    path.write_text(block, encoding="utf-8")
    assert main(["check", "--strict", str(path)]) == 0
    assert main(["test", str(path)]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out
