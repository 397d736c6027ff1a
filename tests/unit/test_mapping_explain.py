"""Unit tests of message explanations (``explain``): the rule that maps a message and the rules
tried before it, captures, points, failures, ``continue`` chains and ``ignore`` rules, the request
bodies a message becomes, and the command's exit codes, JSON and payload sources. Rule-order
warnings: ``test_mapping_rule_order.py``."""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from bridge.cli.main import main
from bridge.mapping.explain import (
    Point,
    explain,
    explanation_json,
    format_explanation,
    request_bodies,
)
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.models import Record
from tests.support.rule_files import CHAIN_YAML, GOOD_YAML

RECV_US = int(datetime(2026, 11, 26, 8, 32, 1, tzinfo=UTC).timestamp()) * 1_000_000


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    """The mapper for GOOD_YAML."""
    return Mapper(load_mappings_text(GOOD_YAML, "good.yaml"))


def test_explain_a_matching_json_message(mapper: Mapper) -> None:
    """A good JSON message: rule, captures, device, payload timestamp and every point."""
    payload = b'{"temp": 21.7, "rh": 40.5, "power": {"kw": 3.2}, "ts": "2026-11-26T08:32:00.125Z"}'
    ex = explain(mapper, "plant/berlin/line1/env", payload, RECV_US)
    assert (ex.rule, ex.tried) == ("line-environment", ())
    assert [(a.index, a.captures) for a in ex.applied] == [
        (0, (("site", "berlin"), ("line", "line1")))
    ]
    ts_us = RECV_US - 875_000
    assert ex.points == (
        Point("berlin-line1-env", ts_us, "temperature_c", 21.7),
        Point("berlin-line1-env", ts_us, "humidity_pct", 40.5),
        Point("berlin-line1-env", ts_us, "power_kw", 3.2),
    )
    assert ex.ok
    assert not ex.dead_lettered
    assert format_explanation(ex) == (
        "topic   plant/berlin/line1/env\n"
        "rule    line-environment (rule 1 of 3)   captures: site=berlin line=line1\n"
        "device  berlin-line1-env\n"
        "time    2026-11-26T08:32:00.125Z (from payload field 'ts')\n"
        "points  temperature_c = 21.7\n"
        "        humidity_pct = 40.5\n"
        "        power_kw = 3.2\n"
        "body    [\n"
        "          {\n"
        '            "device_id": "berlin-line1-env",\n'
        '            "timestamp": "2026-11-26T08:32:00.125Z",\n'
        '            "metrics": {\n'
        '              "temperature_c": 21.7,\n'
        '              "humidity_pct": 40.5,\n'
        '              "power_kw": 3.2\n'
        "            }\n"
        "          }\n"
        "        ]\n"
        "result  3 points, nothing dead-lettered"
    )
    assert explanation_json(ex)["body"] == [
        {
            "device_id": "berlin-line1-env",
            "timestamp": "2026-11-26T08:32:00.125Z",
            "metrics": {"temperature_c": 21.7, "humidity_pct": 40.5, "power_kw": 3.2},
        }
    ]


def test_explain_a_plain_number_lists_the_rules_tried_first(mapper: Mapper) -> None:
    """A plain number takes the receive time, and the earlier rules say why they missed."""
    ex = explain(mapper, "tele/meter-07/voltage", b"229.8", RECV_US)
    assert ex.rule == "plain-sensors"
    assert [(m.rule, m.reason) for m in ex.tried] == [
        ("line-environment", "topic has 3 levels, filter 4"),
        ("machine-state", "topic has 3 levels, filter 4"),
    ]
    assert ex.points == (Point("meter-07", RECV_US, "voltage", 229.8),)
    text = format_explanation(ex)
    assert "time    2026-11-26T08:32:01Z (receive time)" in text
    assert "points  voltage = 229.8" in text


def test_explain_a_bad_field_is_partially_mapped(mapper: Mapper) -> None:
    """A string where a number belongs drops that metric and dead-letters the message."""
    payload = b'{"temp": "warm", "rh": 40.5, "power": {"kw": 3}, "ts": 1795681920}'
    ex = explain(mapper, "plant/berlin/line1/env", payload, RECV_US)
    assert ex.partial
    assert not ex.ok
    assert [(p.metric, p.value) for p in ex.points] == [("humidity_pct", 40.5), ("power_kw", 3.0)]
    assert ex.failures == (("not_numeric", "temperature_c: str, not a number"),)
    text = format_explanation(ex)
    assert "failed  not_numeric: temperature_c: str, not a number" in text
    assert "        power_kw = 3\n" in text
    assert text.endswith("2 points delivered, 1 failure: dead-lettered as partially mapped")
    assert explanation_json(ex)["partial"] is True


def test_explain_an_unmatched_topic(mapper: Mapper) -> None:
    """A topic no rule matches lists every rule with its reason and is not subscribed."""
    ex = explain(mapper, "plant/berlin/press-4/status", b"{}", RECV_US)
    assert (ex.rule, ex.applied) == (None, ())
    assert [m.reason for m in ex.tried] == [
        "level 4 'status' ≠ 'env'",
        "level 4 'status' ≠ 'state'",
        "topic has 4 levels, filter 3",
    ]
    assert ex.failures == (("unmatched", "no rule matches the topic"),)
    doc = explanation_json(ex)
    assert (doc["rule"], doc["subscribed"], doc["dead_lettered"]) == (None, False, True)
    assert "no rule matches" in format_explanation(ex).splitlines()[-1]


def test_explain_follows_continue_and_reports_ignore() -> None:
    """explain lists every rule a 'continue: true' chain applies, and an ignored message is ok."""
    chain = Mapper(load_mappings_text(CHAIN_YAML))
    ex = explain(chain, "plant/b/line1/env", b'{"temp": 1}', RECV_US)
    assert [a.rule for a in ex.applied] == ["raw", "env"]
    assert {p.device_id for p in ex.points} == {"raw-b", "b-line1"}
    text = format_explanation(ex)
    assert "also    env (rule 3 of 5)   captures: site=b line=line1" in text
    assert text.count("device  ") == 2
    assert [o["device_id"] for o in ex.body] == ["raw-b", "b-line1"]
    assert text.count("body    ") == 1
    missed = explain(chain, "plant/b/lineX/env", b'{"temp": 1}', RECV_US)
    assert missed.tried[1].reason == r"level 3 'lineX' does not match /line\d+/"
    ignored = explain(chain, "plant/b/debug/x", b"", RECV_US)
    assert (ignored.ignored, ignored.ok, ignored.points, ignored.failures) == (True, True, (), ())
    assert (ignored.body, explanation_json(ignored)["requests"]) == ([], 0)
    assert "body" not in format_explanation(ignored)
    assert format_explanation(ignored).endswith(
        "ignored: counted, neither delivered nor dead-lettered"
    )


def test_explain_cli_exit_codes_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """explain exits 0 for a clean mapping, 1 when dead-lettered, 78 for a broken file."""
    path = tmp_path / "good.yaml"
    path.write_text(GOOD_YAML)
    good = ["explain", "tele/meter-07/voltage", "229.8", "--mapping-file", str(path)]
    assert main(good) == 0
    assert "1 point, nothing dead-lettered" in capsys.readouterr().out
    assert main([*good, "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert [(p["metric"], p["value"]) for p in doc["points"]] == [("voltage", 229.8)]
    assert doc["points"][0]["timestamp_source"] == "receive_time"
    assert doc["rule"] == "plain-sensors"
    assert main(["explain", "tele/meter-07/voltage", "hot", "--mapping-file", str(path)]) == 1
    assert "not_numeric" in capsys.readouterr().out
    assert main(["explain", "nowhere", "1", "--mapping-file", str(path)]) == 1
    capsys.readouterr()
    assert (
        main(["explain", "tele/a/b", "1", "--mapping-file", str(tmp_path / "missing.yaml")]) == 78
    )
    assert "file not found" in capsys.readouterr().err


def test_explain_reads_the_payload_from_a_file_or_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--payload-file and '-' (stdin) supply the payload bytes."""
    path = tmp_path / "good.yaml"
    path.write_text(GOOD_YAML)
    body = tmp_path / "payload.json"
    body.write_bytes(b'{"spindle": {"rpm": 1480}}')
    topic = "plant/berlin/press-4/state"
    assert main(["explain", topic, "--payload-file", str(body), "--mapping-file", str(path)]) == 0
    assert "spindle_rpm = 1480" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"-3.5")))
    assert main(["explain", "tele/m/volt", "-", "--mapping-file", str(path)]) == 0
    assert "volt = -3.5" in capsys.readouterr().out


def _points(request: Sequence[dict[str, object]]) -> int:
    """Data points in a request body."""
    return sum(len(m) for o in request if isinstance(m := o["metrics"], dict))


def test_request_bodies_merge_one_device_and_time_and_split_at_100_points() -> None:
    """Bodies come from the batcher: same device+time merged, at most 100 points a request."""
    t0, t1 = RECV_US, RECV_US + 1_000
    records = [
        Record("a", t0, {"x": 1.0}, RECV_US),
        Record("a", t0, {"y": 2.0}, RECV_US),  # merges into the first object
        Record("a", t0, {"x": 3.0}, RECV_US),  # same metric again: an object of its own
        Record("b", t0, {"x": 4.0}, RECV_US),
        Record("a", t1, {f"m{i}": float(i) for i in range(97)}, RECV_US),
    ]
    requests = request_bodies(records)
    assert [[(o["device_id"], _points((o,))) for o in r] for r in requests] == [
        [("a", 2), ("a", 1), ("b", 1)],
        [("a", 97)],
    ]
    assert requests[0][0] == {
        "device_id": "a",
        "timestamp": "2026-11-26T08:32:01Z",
        "metrics": {"x": 1.0, "y": 2.0},
    }
    assert request_bodies([]) == ()


def test_explain_shows_each_request_of_a_large_message() -> None:
    """A message of more than 100 points shows one labelled body block per request."""
    yaml_text = """
version: 1
rules:
  - name: gateway
    topic: gw
    device_id: gw
    readings: {name: id, value: v, time: t, time_format: epoch_s}
"""
    readings = [{"id": f"m{i}", "v": i, "t": 1795681920 + i // 100} for i in range(150)]
    ex = explain(Mapper(load_mappings_text(yaml_text)), "gw", orjson.dumps(readings), RECV_US)
    assert ex.ok
    assert [_points(r) for r in ex.requests] == [100, 50]
    text = format_explanation(ex)
    assert "body    request 1 of 2, 100 points:\n        [\n" in text
    assert "        request 2 of 2, 50 points:\n" in text
    doc = explanation_json(ex)
    assert (len(doc["body"]), doc["requests"]) == (2, 2)


def test_explain_takes_topic_and_payload_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--topic/--payload work like the positionals, alone or mixed; conflicts exit 2."""
    path = tmp_path / "good.yaml"
    path.write_text(GOOD_YAML)
    file = ["--mapping-file", str(path), "--json"]
    for argv in (
        ["--topic", "tele/m/volt", "--payload", "229.8"],
        ["--topic", "tele/m/volt", "229.8"],
        ["tele/m/volt", "--payload", "229.8"],
        ["tele/m/volt", "229.8"],
    ):
        assert main(["explain", *argv, *file]) == 0, argv
        doc = orjson.loads(capsys.readouterr().out)
        assert doc["body"][0]["metrics"] == {"volt": 229.8}, argv
        assert doc["body"][0]["device_id"] == "m"
    for argv in (
        [],
        ["--topic", "tele/m/volt", "tele/m/volt", "1"],
        ["tele/m/volt", "1", "--payload", "2"],
        ["--topic", "tele/m/volt", "--payload", "1", "--payload-file", str(path)],
    ):
        assert main(["explain", *argv, *file]) == 2, argv
        assert capsys.readouterr().err.startswith("metriqo-bridge: give "), argv
