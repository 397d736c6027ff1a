"""The mapping language beyond the first forms: captures with patterns and tails, template
filters and payload fields, boolean/text payloads, transforms, timestamps, ignore/continue."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bridge.errors import ConfigError
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapped, Mapper
from bridge.mapping.timestamps import format_timestamp

NOW_US = int(datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp() * 1_000_000)


def mapper(rules_yaml: str) -> Mapper:
    return Mapper(load_mappings_text("version: 1\nrules:\n" + rules_yaml, "file.yaml"))


def one(m: Mapped) -> tuple[str, str, dict[str, float]]:
    assert not m.failures, m.failures
    assert len(m.records) == 1
    r = m.records[0]
    return r.device_id, format_timestamp(r.ts_us), r.metrics


def reasons(m: Mapped) -> list[str]:
    return [f.reason for f in m.failures]


def config_error(rules_yaml: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_mappings_text("version: 1\nrules:\n" + rules_yaml, "file.yaml")
    return str(info.value)


def test_regex_level_restricts_and_captures() -> None:
    """A {name:regex} level matches only levels the pattern fully matches."""
    m = mapper(
        "  - {name: r, topic: 'hall/{id:dev-\\d+}/temp', device_id: '{id}', payload: number,"
        " metric: temp}\n"
    )
    assert one(m.map("hall/dev-42/temp", b"21", NOW_US))[0] == "dev-42"
    assert reasons(m.map("hall/dev-4x/temp", b"21", NOW_US)) == ["unmatched"]
    assert m.subscriptions == ["hall/+/temp"]


def test_tail_capture_takes_the_rest_of_the_topic() -> None:
    """A {name#} tail captures every remaining level, slashes included."""
    m = mapper(
        "  - {name: r, topic: 'zigbee/{rest#}', device_id: '{rest|replace:/:-}', payload: number,"
        " metric: v}\n"
    )
    assert one(m.map("zigbee/hall/3/lamp", b"1", NOW_US))[0] == "hall-3-lamp"
    assert m.subscriptions == ["zigbee/#"]


def test_template_filters_and_payload_fields() -> None:
    """device_id can use filters and payload fields: {site|upper}-{$meta.serial|slug}."""
    m = mapper(
        "  - name: r\n    topic: 'plant/{site}/env'\n"
        "    device_id: '{site|upper}-{$meta.serial|slug}'\n    metrics: {t: t}\n"
    )
    got = one(m.map("plant/ber/env", b'{"t": 1, "meta": {"serial": "AB 12/X"}}', NOW_US))
    assert got[0] == "BER-ab-12-x"


def test_unknown_template_filter_is_a_config_error() -> None:
    """A misspelt filter is refused at load time with file, line and key."""
    err = config_error(
        "  - name: r\n    topic: 'a/{x}'\n    device_id: '{x|lowr}'\n    metrics: {t: t}\n"
    )
    assert "file.yaml:5: rules[0].device_id: unknown template filter 'lowr'" in err


@pytest.mark.parametrize(
    ("payload", "value"),
    [(b"ON", 1.0), (b"off", 0.0), (b"true", 1.0), (b"False", 0.0), (b"1", 1.0), (b" no ", 0.0)],
)
def test_boolean_payloads(payload: bytes, value: float) -> None:
    """true/false, ON/OFF, yes/no and 1/0 become 1 and 0."""
    m = mapper(
        "  - {name: r, topic: 'relay/{d}', device_id: '{d}', payload: boolean, metric: relay}\n"
    )
    assert one(m.map("relay/r1", payload, NOW_US))[2] == {"relay": value}


def test_boolean_payload_rejects_other_text() -> None:
    """Anything else is not_boolean."""
    m = mapper(
        "  - {name: r, topic: 'relay/{d}', device_id: '{d}', payload: boolean, metric: relay}\n"
    )
    assert reasons(m.map("relay/r1", b"maybe", NOW_US)) == ["not_boolean"]


def test_text_payload_through_a_value_map() -> None:
    """A text payload maps through its value map (case-insensitively); unknown text is counted."""
    m = mapper(
        "  - name: r\n    topic: 'm/{d}/state'\n    device_id: '{d}'\n    payload: text\n"
        "    metric: running\n    transform: {map: {RUNNING: 1, STOPPED: 0}}\n"
    )
    assert one(m.map("m/p1/state", b"running", NOW_US))[2] == {"running": 1.0}
    assert one(m.map("m/p1/state", b"STOPPED", NOW_US))[2] == {"running": 0.0}
    assert reasons(m.map("m/p1/state", b"JAMMED", NOW_US)) == ["unmapped_value"]


def test_text_rule_without_map_is_a_config_error() -> None:
    """payload: text needs a value map."""
    err = config_error(
        "  - {name: r, topic: 'a/{d}', device_id: '{d}', payload: text, metric: s}\n"
    )
    assert "rules[0].transform: a text rule needs" in err


def test_scale_offset_round_and_range() -> None:
    """scale/offset/round apply in that order; out of range is rejected or clamped."""
    m = mapper(
        "  - name: r\n    topic: 'p/{d}'\n    device_id: '{d}'\n    metrics:\n"
        "      bar: {path: mbar, scale: 0.001, round: 2, range: [0, 16]}\n"
        "      f: {path: c, scale: 1.8, offset: 32}\n"
        "      pct: {path: pct, range: [0, 100], out_of_range: clamp}\n"
        "      state: {path: st, map: {RUN: 1, STOP: 0}}\n"
    )
    got = one(m.map("p/d1", b'{"mbar": 1234.5, "c": 20, "pct": 101.5, "st": "RUN"}', NOW_US))
    assert got[2] == {"bar": 1.23, "f": 68.0, "pct": 100.0, "state": 1.0}
    out = m.map("p/d1", b'{"mbar": 17000, "c": 20, "pct": -3, "st": "STOP"}', NOW_US)
    assert reasons(out) == ["out_of_range"]
    assert out.records[0].metrics == {"f": 68.0, "pct": 0.0, "state": 0.0}


def test_boolean_json_field_through_a_map() -> None:
    """A JSON true/false is usable when the metric maps it; otherwise it stays boolean_value."""
    m = mapper(
        "  - name: r\n    topic: 'p/{d}'\n    device_id: '{d}'\n    metrics:\n"
        "      alarm: {path: a, map: {'true': 1, 'false': 0}}\n      raw: a\n"
    )
    out = m.map("p/d1", b'{"a": true}', NOW_US)
    assert out.records[0].metrics == {"alarm": 1.0}
    assert reasons(out) == ["boolean_value"]


def test_zone_less_iso_with_a_rule_time_zone() -> None:
    """timestamp.timezone reads zone-less ISO times as plant-local time."""
    m = mapper(
        "  - name: r\n    topic: 'p/{d}'\n    device_id: '{d}'\n    metrics: {t: t}\n"
        "    timestamp: {field: ts, timezone: Europe/Berlin}\n"
    )
    got = one(m.map("p/d1", b'{"t": 1, "ts": "2026-11-26T09:30:00"}', NOW_US))
    assert got[1] == "2026-11-26T08:30:00Z"


def test_strptime_pattern() -> None:
    """timestamp.pattern reads strings such as 26.11.2026 09:30:00."""
    m = mapper(
        "  - name: r\n    topic: 'p/{d}'\n    device_id: '{d}'\n    metrics: {t: t}\n"
        "    timestamp: {field: ts, pattern: '%d.%m.%Y %H:%M:%S', timezone: UTC}\n"
    )
    assert one(m.map("p/d1", b'{"t": 1, "ts": "26.11.2026 09:30:00"}', NOW_US))[1] == (
        "2026-11-26T09:30:00Z"
    )
    assert reasons(m.map("p/d1", b'{"t": 1, "ts": "2026-11-26"}', NOW_US)) == ["bad_timestamp"]


def test_timestamp_from_a_topic_level() -> None:
    """timestamp.capture reads the time from a topic level."""
    m = mapper(
        "  - {name: r, topic: 'log/{d}/{ts}', device_id: '{d}', payload: number, metric: v,"
        " timestamp: {capture: ts, format: epoch_s}}\n"
    )
    assert one(m.map("log/d1/1795683600", b"5", NOW_US))[1] == "2026-11-26T09:00:00Z"


def test_timestamp_guard_rejects_or_replaces() -> None:
    """Too far in the past: rejected by default, or replaced by the receive time if asked."""
    base = "  - name: {n}\n    topic: '{n}/{{d}}'\n    device_id: '{{d}}'\n    metrics: {{t: t}}\n"
    ts = "    timestamp: {{field: ts, max_past_s: 3600{extra}}}\n"
    m = mapper(
        base.format(n="strict")
        + ts.format(extra="")
        + base.format(n="lenient")
        + ts.format(extra=", on_invalid: receive_time")
    )
    old = b'{"t": 1, "ts": "2026-11-26T09:00:00Z"}'
    assert reasons(m.map("strict/d", old, NOW_US)) == ["bad_timestamp"]
    out = m.map("lenient/d", old, NOW_US)
    assert one(out)[1] == format_timestamp(NOW_US)
    assert out.replaced_timestamps == 1


def test_ignore_rule_drops_on_purpose() -> None:
    """An ignore rule matches first and the message is neither mapped nor a failure."""
    m = mapper(
        "  - {name: skip-debug, topic: 'plant/+/debug', ignore: true}\n"
        "  - {name: all, topic: 'plant/{d}/{m}', device_id: '{d}', payload: number,"
        " metric: '{m}'}\n"
    )
    out = m.map("plant/a/debug", b"garbage", NOW_US)
    assert out.ignored
    assert out.rule == "skip-debug"
    assert not out.failures
    assert not out.records
    assert one(m.map("plant/a/temp", b"3", NOW_US))[2] == {"temp": 3.0}


def test_continue_applies_later_rules_too() -> None:
    """continue: true lets the next matching rule map the same message as well."""
    m = mapper(
        "  - {name: a, topic: 'p/{d}', device_id: '{d}', metrics: {t: t}, continue: true}\n"
        "  - {name: b, topic: 'p/+', device_id: 'fleet', metrics: {n: t}}\n"
    )
    out = m.map("p/d1", b'{"t": 4}', NOW_US)
    assert [(r.device_id, r.metrics) for r in out.records] == [
        ("d1", {"t": 4.0}),
        ("fleet", {"n": 4.0}),
    ]


def test_ignore_rule_takes_no_mapping_keys() -> None:
    """An ignore rule with mapping keys is a config error naming the key."""
    err = config_error("  - {name: x, topic: a/b, ignore: true, device_id: d}\n")
    assert "rules[0].device_id: an ignore rule takes only name and topic" in err


GATEWAY = (
    b'[{"id": "Line1.Press.Temp", "v": 71.2, "t": 1795683600123, "q": true},'
    b' {"id": "Line1.Press.Bar", "v": 5.5, "t": 1795683600123, "q": true},'
    b' {"id": "Line1.Press.Temp", "v": 99.9, "t": 1795683601123, "q": false},'
    b' {"id": "Line1.Press.Temp", "v": 71.4, "t": 1795683601123, "q": true}]'
)


def test_readings_list_with_condition_groups_by_time() -> None:
    """Each kept element becomes a point with its own name and time; bad-quality ones are left
    out and counted; points of one time share a record."""
    m = mapper(
        "  - name: gw\n    topic: 'gw/{g}'\n    device_id: '{g}'\n"
        "    readings: {name: id, value: v, time: t, time_format: epoch_ms, where: {q: true},"
        " rename: {Line1.Press.Bar: press_bar}}\n"
    )
    out = m.map("gw/g1", GATEWAY, NOW_US)
    assert not out.failures
    assert out.skipped_readings == 1
    got = [(format_timestamp(r.ts_us), r.metrics) for r in out.records]
    assert got == [
        ("2026-11-26T09:00:00.123Z", {"Line1.Press.Temp": 71.2, "press_bar": 5.5}),
        ("2026-11-26T09:00:01.123Z", {"Line1.Press.Temp": 71.4}),
    ]


def test_readings_where_does_not_confuse_true_with_one() -> None:
    """A condition q: true does not keep a reading whose q is the number 1."""
    m = mapper(
        "  - name: gw\n    topic: 'gw/{g}'\n    device_id: '{g}'\n"
        "    readings: {name: id, value: v, where: {q: true}}\n"
    )
    out = m.map("gw/g1", b'[{"id": "a", "v": 1, "q": 1}, {"id": "b", "v": 2, "q": true}]', NOW_US)
    assert [r.metrics for r in out.records] == [{"b": 2.0}]


def test_readings_at_a_path_and_bad_elements_are_reported() -> None:
    """A list under a path; an element without a value or with a string value is a failure."""
    m = mapper(
        "  - name: gw\n    topic: 'gw/{g}'\n    device_id: '{g}'\n"
        "    readings: {path: data.values, name: n, value: v}\n"
    )
    out = m.map(
        "gw/g1",
        b'{"data": {"values": [{"n": "a", "v": 1}, {"n": "b"}, {"n": "c", "v": "x"}]}}',
        NOW_US,
    )
    assert [r.metrics for r in out.records] == [{"a": 1.0}]
    assert reasons(out) == ["missing_field", "not_numeric"]
    assert reasons(m.map("gw/g1", b'{"data": {}}', NOW_US)) == ["not_a_list"]


def test_all_readings_filtered_is_not_a_failure() -> None:
    """A message whose readings are all left out by 'where' is acknowledged, not dead-lettered."""
    m = mapper(
        "  - name: gw\n    topic: 'gw/{g}'\n    device_id: '{g}'\n"
        "    readings: {name: id, value: v, where: {q: true}}\n"
    )
    out = m.map("gw/g1", b'[{"id": "a", "v": 1, "q": false}]', NOW_US)
    assert not out.failures
    assert not out.records
    assert out.skipped_readings == 1


def test_collect_every_numeric_field_with_globs_rename_and_prefix() -> None:
    """collect takes every numeric field under a path, filtered by include/exclude globs."""
    m = mapper(
        "  - name: env\n    topic: 'env/{d}'\n    device_id: '{d}'\n"
        "    collect: {path: sensors, include: ['temp*', 'air.*'], exclude: ['*_raw'],"
        " rename: {air.rh: humidity}, prefix: 'env_'}\n"
    )
    payload = (
        b'{"sensors": {"temp1": 20.5, "temp2": 21, "temp1_raw": 2048, "label": "hall",'
        b' "air": {"rh": 40, "co2": 612, "ok": true}, "other": 5}}'
    )
    assert one(m.map("env/d1", payload, NOW_US))[2] == {
        "env_temp1": 20.5,
        "env_temp2": 21.0,
        "env_humidity": 40.0,
        "env_air.co2": 612.0,
    }


def test_collect_combines_with_explicit_metrics() -> None:
    """Explicit metrics and collected ones land in the same record."""
    m = mapper(
        "  - name: env\n    topic: 'env/{d}'\n    device_id: '{d}'\n    metrics: {up: uptime}\n"
        "    collect: {path: s}\n"
    )
    assert one(m.map("env/d1", b'{"uptime": 7, "s": {"a": 1}}', NOW_US))[2] == {"up": 7.0, "a": 1.0}


def test_json_rule_needs_some_metric_source() -> None:
    """A json rule without metrics, collect or readings is refused."""
    err = config_error("  - {name: r, topic: 'a/{d}', device_id: '{d}'}\n")
    assert "rules[0].metrics: a json rule needs" in err


def test_each_maps_several_devices_from_one_payload() -> None:
    """each: an object (or list) of devices; {@key} names each, paths are per element, and a
    time missing in the element comes from the whole message."""
    m = mapper(
        "  - name: gw\n    topic: 'gw/{g}'\n    device_id: '{g}-{@key}'\n    each: devices\n"
        "    metrics: {t: temp}\n    timestamp: {field: ts}\n"
    )
    payload = (
        b'{"ts": "2026-11-26T09:00:00Z", "devices": {"a": {"temp": 1},'
        b' "b": {"temp": 2, "ts": "2026-11-26T09:00:05Z"}}}'
    )
    out = m.map("gw/g1", payload, NOW_US)
    assert not out.failures
    assert [(r.device_id, format_timestamp(r.ts_us), r.metrics) for r in out.records] == [
        ("g1-a", "2026-11-26T09:00:00Z", {"t": 1.0}),
        ("g1-b", "2026-11-26T09:00:05Z", {"t": 2.0}),
    ]


def test_each_over_a_list_uses_element_fields_for_the_device() -> None:
    """Over a list, the device id can come from a field of each element."""
    m = mapper(
        "  - name: gw\n    topic: 'gw/{g}'\n    device_id: '{$id|lower}'\n    each: items\n"
        "    metrics: {v: v}\n"
    )
    out = m.map("gw/g1", b'{"items": [{"id": "A1", "v": 1}, {"id": "B2", "v": "x"}]}', NOW_US)
    assert [(r.device_id, r.metrics) for r in out.records] == [("a1", {"v": 1.0})]
    assert reasons(out) == ["not_numeric"]
    assert reasons(m.map("gw/g1", b'{"items": 5}', NOW_US)) == ["not_a_list"]


def test_keys_with_dots_are_quoted_or_escaped() -> None:
    """A key containing dots is reached with quotes or a backslash in a field path."""
    m = mapper(
        "  - name: r\n    topic: 'p/{d}'\n    device_id: '{$meta.\"fw.version\"}'\n"
        "    metrics:\n      a: 'values.\"temp.c\"'\n      b: \"values.'air rh'\"\n"
        "      c: 'values.p\\.bar'\n"
    )
    payload = b'{"meta": {"fw.version": "7"}, "values": {"temp.c": 1, "air rh": 2, "p.bar": 3}}'
    assert one(m.map("p/d1", payload, NOW_US)) == (
        "7",
        format_timestamp(NOW_US),
        {"a": 1.0, "b": 2.0, "c": 3.0},
    )


def test_bad_field_path_is_a_config_error() -> None:
    """An unterminated quote in a field path names the key."""
    err = config_error("  - {name: r, topic: 'p/{d}', device_id: '{d}', metrics: {a: 'x.\"y'}}\n")
    assert "rules[0].metrics.a: field path 'x.\"y' has an unterminated quote" in err


def test_metric_names_can_be_templates() -> None:
    """A metrics key may be a template over captures and payload fields, with filters."""
    m = mapper(
        "  - name: r\n    topic: 'p/{line}/{d}'\n    device_id: '{d}'\n    metrics:\n"
        "      '{line|lower}_{$unit}_temp': t\n      rh: h\n"
    )
    got = one(m.map("p/L1/d1", b'{"t": 20, "h": 40, "unit": "c"}', NOW_US))
    assert got[2] == {"l1_c_temp": 20.0, "rh": 40.0}
    out = m.map("p/L1/d1", b'{"t": 20, "h": 40}', NOW_US)  # no unit: that metric is reported
    assert out.records[0].metrics == {"rh": 40.0}
    assert reasons(out) == ["missing_field"]
