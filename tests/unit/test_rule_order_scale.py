"""Unit tests of the cost of ``check``'s rule-order warnings: the trie finds the same warnings
as comparing every pair of rules did, and its work grows with the number of rules, not with its
square. Timings are the benchmark's (``metriqo-bridge bench check``), not a test's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cli.main import main
from bridge.lab.bench.check_mode import plant_rules_yaml
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Rule
from bridge.mapping.overlap import (
    OverlapWork,
    RuleWarning,
    covers,
    example_topic,
    rule_warnings,
)


def every_pair(rules: Sequence[Rule]) -> list[RuleWarning]:
    """The rule-order warnings as 3fbd39f found them, comparing each rule with every earlier
    one: the oracle the trie must agree with."""
    out: list[RuleWarning] = []
    for j, rule in enumerate(rules):
        found: list[RuleWarning] = []
        for i, earlier in enumerate(rules[:j]):
            if earlier.keep_going and not earlier.ignore:
                continue
            a, b = earlier.topic, rule.topic
            example = example_topic(a, b)
            if covers(a, b):
                found = [RuleWarning("shadowed", j, rule.name, i, earlier.name, example, "")]
                break
            if example is not None and not covers(b, a):
                found.append(RuleWarning("overlap", j, rule.name, i, earlier.name, example, ""))
        out.extend(found)
    return out


def summary(warnings: Sequence[RuleWarning]) -> list[tuple[str, int, int, str | None]]:
    """What a warning says, without its wording."""
    return [(w.kind, w.index, w.other_index, w.example) for w in warnings]


# Levels for generated filters: literals (one starting with '$'), wildcards, captures and
# captures with a regex, so that every branch of covers() and example_topic() is reached.
_LEVELS = ["a", "b", "$s", "", "+", "{c}", "{r:[ab]}", "{n:[0-9]+}", "{_:a|x}"]


@st.composite
def rule_files(draw: st.DrawFn) -> str:
    """A mapping file of up to 25 rules over a small alphabet: many overlap."""
    lines = ["version: 1", "rules:"]
    for i in range(draw(st.integers(1, 25))):
        levels = []
        for k, level in enumerate(draw(st.lists(st.sampled_from(_LEVELS), min_size=1, max_size=4))):
            # Capture names must differ within a filter.
            unique = level
            for name in ("c}", "r:", "n:"):
                unique = unique.replace("{" + name, f"{{{name[0]}{k}{name[1]}")
            levels.append(unique)
        tail = draw(st.sampled_from(["", "", "#", "{rest#}"]))
        if tail:
            levels.append(tail)
        topic = "/".join(levels) or "/"  # one empty level is no filter; two are
        kind = draw(st.sampled_from(["rule", "rule", "ignore", "continue"]))
        if kind == "ignore":
            lines.append(f"  - {{name: r{i}, topic: '{topic}', ignore: true}}")
        else:
            more = ", continue: true" if kind == "continue" else ""
            lines.append(
                f"  - {{name: r{i}, topic: '{topic}', device_id: d, metrics: {{t: t}}{more}}}"
            )
    return "\n".join(lines) + "\n"


@settings(max_examples=200, deadline=None)
@given(rule_files())
def test_the_trie_finds_what_comparing_every_pair_found(text: str) -> None:
    """On generated files full of overlaps, wildcards, regex levels, '$' topics, ignore and
    continue rules, the warnings are exactly those of the pairwise comparison."""
    rules = load_mappings_text(text)
    assert summary(rule_warnings(rules)) == summary(every_pair(rules))


@pytest.mark.parametrize("seed", [5, 7, 9])
def test_the_trie_finds_what_comparing_every_pair_found_in_a_plant_file(seed: int) -> None:
    """On a plant's file of 800 rules (the bench's), the warnings are the same, and there
    are some to find."""
    rules = load_mappings_text(plant_rules_yaml(800, seed))
    expected = summary(every_pair(rules))
    assert expected
    assert summary(rule_warnings(rules)) == expected


def test_rule_order_work_grows_linearly_with_the_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From 1,000 to 8,000 rules of a plant's file, the pairs compared and the trie nodes
    visited per rule stay the same (comparing every pair would be 32 million pairs at 8,000),
    and ``check`` of the 8,000-rule file on disk gives the same warnings."""
    per_rule = []
    for n in (1000, 8000):
        text = plant_rules_yaml(n)
        work = OverlapWork()
        warnings = rule_warnings(load_mappings_text(text), work=work)
        per_rule.append((work.pairs / n, work.nodes / n))
        assert work.pairs <= 4 * n
        assert work.nodes <= 12 * n
    (pairs_small, nodes_small), (pairs_large, nodes_large) = per_rule
    assert pairs_large <= 1.1 * pairs_small
    assert nodes_large <= 1.1 * nodes_small
    path = tmp_path / "plant.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["check", str(path)]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]
    assert len(printed) == len(warnings) > 0
