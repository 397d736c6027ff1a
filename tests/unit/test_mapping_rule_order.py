"""Unit tests of rule-order warnings: which topic filters cover or meet each other, the shadowed
and overlapping rules ``check`` warns about (with their lines), and ``check --strict``. Message
explanations: ``test_mapping_explain.py``."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bridge.cli.main import main
from bridge.errors import EX_CONFIG
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.overlap import (
    RuleWarning,
    covers,
    example_topic,
    format_warning,
    mismatch,
    rule_warnings,
    topic_lines,
)
from bridge.mapping.topics import TopicFilter, parse_filter
from tests.support.rule_files import CHAIN_YAML, GOOD_YAML

# Rule 1 is shadowed by rule 0 (topic on line 8); rule 3 overlaps rule 2 (topic on line 17);
# rule 4 ('#') is broader than everything before it, which is the intended order.
WARN_YAML = """\
version: 1
rules:
  - name: all-plant
    topic: "plant/#"
    device_id: plant
    metrics: {v: v}
  - name: line-environment
    topic: "plant/{site}/{line}/env"
    device_id: "{site}-{line}"
    metrics: {t: temp}
  - name: berlin
    topic: "tele/berlin/+"
    device_id: berlin
    payload: number
    metric: m
  - name: voltage
    topic: "tele/+/voltage"
    device_id: v
    payload: number
    metric: voltage
  - name: catch-all
    topic: "#"
    device_id: all
    payload: number
    metric: x
"""


def f(text: str) -> TopicFilter:
    """The compiled filter for ``text``."""
    return parse_filter(text)


# (A, B, A covers B, some topic matches both)
PAIRS = [
    ("#", "a/b", True, True),
    ("a/#", "a", True, True),
    ("a", "a/#", False, True),
    ("a/#", "a/b/c", True, True),
    ("a/+", "a/b", True, True),
    ("a/b", "a/+", False, True),
    ("+/+", "a/+", True, True),
    ("a/+", "a/+/c", False, False),
    ("a/+/#", "a/#", False, True),
    ("a/#", "a/+/#", True, True),
    ("+/#", "#", True, True),
    ("#", "+/#", True, True),
    ("#", "$SYS/#", False, False),
    ("+/#", "$SYS/broker", False, False),
    ("$SYS/#", "$SYS/broker/+", True, True),
    ("+/broker", "$SYS/broker", False, False),
    ("$SYS/+", "$SYS/x", True, True),
    ("a/b", "a/c", False, False),
    ("a/+/c", "a/b/+", False, True),
    ("x/#", "#", False, True),
    ("{site}/{line}", "plant/+", True, True),
    ("a/b/c", "a/b", False, False),
    ("a/b/#", "a/+", False, True),
    ("a//b", "a/+/b", False, True),
    (r"a/{n:\d+}", "a/7", True, True),
    (r"a/{n:\d+}", "a/x", False, False),
    (r"a/{n:\d+}", "a/+", False, True),
    (r"a/{n:\d+}", r"a/{m:\d+}", True, True),
    (r"a/{n:\d+}", r"a/{m:[a-z]+}", False, False),
    (r"a/+", r"a/{m:[a-z]+}", True, True),
    (r"a/{n:\d+}/#", "a/{name#}", False, True),
    ("a/{rest#}", "a/b/c", True, True),
]


@pytest.mark.parametrize(("a", "b", "a_covers_b", "meet"), PAIRS)
def test_containment_and_intersection_truth_table(
    a: str, b: str, a_covers_b: bool, meet: bool
) -> None:
    """covers() and example_topic() give the MQTT answer for each listed pair of filters."""
    assert covers(f(a), f(b)) is a_covers_b
    example = example_topic(f(a), f(b))
    assert (example is not None) is meet
    if example is not None:
        levels = example.split("/")
        assert f(a).match(levels) is not None
        assert f(b).match(levels) is not None


FILTERS = [
    "#",
    "+",
    "+/#",
    "a",
    "a/#",
    "a/+",
    "a/b",
    "+/b",
    "a/+/#",
    "+/+/c",
    "a/b/c",
    "$SYS",
    "$SYS/#",
    "$SYS/+",
    "+/+",
    "a//b",
    "b/#",
]


def _universe(a: TopicFilter, b: TopicFilter) -> list[list[str]]:
    """Every topic over the filters' literals plus a fresh one, up to one level past both.

    Wildcards cannot tell a fresh literal from any other, so this finite set decides
    containment and intersection exactly.
    """
    words = {lvl for lvl in (*a.levels, *b.levels) if lvl is not None} | {"fresh"}
    longest = max(len(a.levels), len(b.levels)) + 1
    return [
        list(t) for n in range(1, longest + 1) for t in itertools.product(sorted(words), repeat=n)
    ]


def test_containment_agrees_with_brute_force_matching() -> None:
    """For every pair of sample filters, covers/example_topic agree with TopicFilter.match."""
    for ta, tb in itertools.product(FILTERS, repeat=2):
        a, b = f(ta), f(tb)
        topics = _universe(a, b)
        in_b = [t for t in topics if b.match(t) is not None]
        both = [t for t in in_b if a.match(t) is not None]
        assert covers(a, b) is (len(both) == len(in_b)), (ta, tb)
        assert (example_topic(a, b) is None) is (not both), (ta, tb)


def test_mismatch_agrees_with_match_and_names_the_level() -> None:
    """mismatch() is None exactly when match() succeeds, and says which level differs."""
    for text in FILTERS:
        filt = f(text)
        for topic in _universe(filt, f("x/y/z")):
            assert (mismatch(filt, topic) is None) is (filt.match(topic) is not None)
    assert mismatch(f("plant/+/+/env"), ["plant", "b", "l", "state"]) == "level 4 'state' ≠ 'env'"
    assert mismatch(f("a/+/c"), ["a", "b", "c", "d"]) == "topic has 4 levels, filter 3"
    assert mismatch(f("a/b/c/#"), ["a"]) == "topic has 1 level, filter needs at least 3"
    assert "'$'" in (mismatch(f("+/x"), ["$SYS", "x"]) or "")


def test_shadowed_and_overlapping_rules_are_warned_with_lines(tmp_path: Path) -> None:
    """A covered rule is 'shadowed', a partial overlap names an example topic; lines are the
    rules' topic keys."""
    path = tmp_path / "m.yaml"
    path.write_text(WARN_YAML)
    rules = load_mappings_text(WARN_YAML, str(path))
    warnings = rule_warnings(rules, topic_lines(path))
    assert [(w.kind, w.index, w.other_index, w.line) for w in warnings] == [
        ("shadowed", 1, 0, 8),
        ("overlap", 3, 2, 17),
    ]
    assert warnings[1].example == "tele/berlin/voltage"
    assert format_warning(warnings[0], "m.yaml").startswith(
        "warning: m.yaml:8: rules[1] (line-environment): never matches: rules[0] (all-plant)"
    )
    assert "'tele/berlin/voltage'" in format_warning(warnings[1], "m.yaml")


def test_specific_before_general_and_disjoint_rules_give_no_warning() -> None:
    """Disjoint filters, and a narrow rule placed before a broader one, are not warned about."""
    assert rule_warnings(load_mappings_text(GOOD_YAML)) == []
    narrow_first = """\
version: 1
rules:
  - {name: env, topic: "plant/+/+/env", device_id: d, metrics: {t: t}}
  - {name: plant, topic: "plant/#", device_id: d, metrics: {t: t}}
  - {name: sys, topic: "$SYS/#", device_id: d, metrics: {t: t}}
  - {name: rest, topic: "#", device_id: d, metrics: {t: t}}
"""
    assert rule_warnings(load_mappings_text(narrow_first)) == []


def test_a_warning_without_a_line_names_the_file_only() -> None:
    """Without a known line the warning reads 'FILE: rules[i] (name): ...'."""
    warning = RuleWarning("overlap", 2, "r", 0, "q", "a/b", "overlaps ...")
    assert format_warning(warning, "f.yaml") == "warning: f.yaml: rules[2] (r): overlaps ..."


def test_continue_and_ignore_rules_in_warnings() -> None:
    """A 'continue: true' rule hides nothing; an 'ignore' rule shadows and overlaps like any."""
    warnings = rule_warnings(load_mappings_text(CHAIN_YAML))
    assert [(w.kind, w.index, w.other_index) for w in warnings] == [
        ("overlap", 1, 0),
        ("shadowed", 3, 2),
        ("shadowed", 4, 0),
    ]
    assert "'plant/x/debug/env', are ignored by it" in warnings[0].message


def test_check_with_warnings_exits_0_and_strict_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check prints OK, subscriptions and warnings and exits 0; with --strict it exits 78."""
    path = tmp_path / "m.yaml"
    path.write_text(WARN_YAML)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path}: OK, 5 rule(s)"
    assert out[1] == "  all-plant: subscribes plant/# (QoS 1), payload json"
    assert out[6].startswith(f"warning: {path}:8: rules[1] (line-environment): never matches")
    assert out[7].startswith(f"warning: {path}:17: rules[3] (voltage): overlaps rules[2]")
    assert main(["check", "--strict", str(path)]) == EX_CONFIG
    assert "--strict" in capsys.readouterr().err


def test_check_of_a_clean_file_with_strict_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--strict does not change the exit code of a file without warnings."""
    path = tmp_path / "good.yaml"
    path.write_text(GOOD_YAML)
    assert main(["check", "--strict", str(path)]) == 0
    assert "warning" not in capsys.readouterr().out
