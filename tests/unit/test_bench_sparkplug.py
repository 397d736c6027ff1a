"""Unit tests of ``bench sparkplug``: its workload decodes to what it encoded, a wrong decode
is reported, and the report has each stage. It reports times; nothing here asserts one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.cli.main import main
from bridge.lab.bench.sparkplug_mode import check, wire_walk, workload
from bridge.sparkplug import sparkplug_b_pb2 as pb


def test_the_workload_is_aliases_only_ddata_that_decodes_to_its_numbers() -> None:
    types, payloads, expected = workload(20, 30)
    assert len(types) == 20
    assert len(payloads) == len(expected) == 30
    first = pb.Payload.FromString(payloads[0])
    assert all(not m.HasField("name") and not m.HasField("datatype") for m in first.metrics)
    assert check(types, payloads, expected) == []


def test_a_wrong_decode_is_a_problem() -> None:
    types, payloads, expected = workload(5, 3)
    wrong = [list(e) for e in expected]
    wrong[1][0] += 1.0
    assert [p.split(":")[0] for p in check(types, payloads, wrong)] == ["message 1"]
    signless = dict.fromkeys(types, 10)  # every alias read as Double: Int32 mismatches
    assert check(signless, payloads, expected) != []


def test_the_wire_walk_steps_over_every_field() -> None:
    _, payloads, _ = workload(7, 1)
    message = pb.Payload.FromString(payloads[0])
    top = len(message.ListFields()) - 1 + len(message.metrics)  # each metric is one field
    fields = top + sum(len(m.ListFields()) for m in message.metrics)
    assert wire_walk(payloads[0]) == fields


def test_bench_sparkplug_reports_each_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    code = main(["bench", "sparkplug", "--iterations", "40", "--rounds", "1", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "OK: every message decoded to its numbers" in printed
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["metrics_per_message"] == 20
    assert report["messages"] == 40
    for stage in ("parse_us", "decode_us", "decode_and_numbers_us", "python_wire_walk_us"):
        assert report[stage] > 0
    assert [t["name"] for t in report["targets"]] == [
        "decode + numbers, 20-metric DDATA: µs per message"
    ]
