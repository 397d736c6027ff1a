"""Unit tests of ``bench check``: the generated plant files and the report. It reports times;
nothing here asserts one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.cli.main import main
from bridge.lab.bench.check_mode import plant_rules_yaml
from bridge.mapping.loader import load_mappings_text


@pytest.mark.parametrize("n_rules", [1, 4, 5, 6, 37, 500])
def test_a_plant_file_has_exactly_the_rules_asked_for(n_rules: int) -> None:
    """Every generated file is valid and holds exactly the rules asked for, the general ones
    last once there is room for them."""
    rules = load_mappings_text(plant_rules_yaml(n_rules))
    assert len(rules) == n_rules
    if n_rules >= 6:
        assert rules[-1].topic.text == "#"


def test_a_long_plant_file_has_every_kind_of_rule() -> None:
    """2,000 rules hold ignore rules, regex levels, '#' tails and 'continue: true' rules."""
    rules = load_mappings_text(plant_rules_yaml(2000))
    assert any(r.ignore for r in rules)
    assert any(r.topic.patterns for r in rules)
    assert any(r.topic.tail for r in rules)
    assert any(r.keep_going for r in rules)


def test_bench_check_reports_each_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``bench check --rules`` checks each size as a process and reports its time, memory,
    warnings, phases and rule-order work, smallest first, with the two targets."""
    out = tmp_path / "report.json"
    assert main(["bench", "check", "--rules", "60,30", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "OK: every check ran" in printed
    report = json.loads(out.read_text())
    assert [t["rules"] for t in report["timings"]] == [30, 60]
    for timing in report["timings"]:
        assert timing["exit_code"] == 0
        assert timing["seconds"] > 0
        assert timing["peak_rss_mb"] > 0
        assert timing["rule_pairs_compared"] > 0
    assert [t["name"] for t in report["targets"]] == [
        "check, 60 rules: seconds",
        "check, time per rule: 60 rules / 30 rules",
    ]
    assert report["problems"] == []
