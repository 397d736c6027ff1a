"""``deadband`` in the mapping file: compiled onto the rule's records (a metric's own band
over the rule's), its check errors, and what ``explain`` says about it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bridge.config.yamlfile import load_yaml_text
from bridge.errors import ConfigError
from bridge.mapping.explain import explain, explanation_json, format_explanation
from bridge.mapping.loader import compile_mappings, load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.mapping.selftest import run_mapping_tests
from bridge.mapping.spec import MappingFile
from bridge.models import Deadband, Deadbands
from bridge.recipes import recipe

REPO = Path(__file__).resolve().parents[2]
S = 1_000_000
RECV_US = 1_795_680_000_000_000

RULE = """version: 1
rules:
  - name: env
    topic: plant/{dev}/env
    device_id: '{dev}'
    metrics:
      temp_c: t
      state: STATE
EXTRA
"""


def rules(state: str = "s", extra: str = "    deadband: {absolute: 0.5, heartbeat_s: 300}") -> str:
    return RULE.replace("STATE", state).replace("EXTRA", extra)


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_mappings_text(text, "m.yaml")
    return str(info.value)


def test_the_rule_band_and_a_metric_s_own_band_reach_the_records() -> None:
    """Every record of the rule carries its deadbands; a metric's own band wins over the
    rule's, a metric without one takes the rule's."""
    text = rules("{path: s, deadband: {on_change: true}}")
    mapper = Mapper(load_mappings_text(text, "m.yaml"))
    (record,) = mapper.map("plant/a1/env", b'{"t": 21.5, "s": 1}', RECV_US).records
    assert record.deadband == Deadbands(
        "env",
        Deadband("absolute", 0.5, 300 * S),
        (("state", Deadband("on_change", 0.0, 3600 * S)),),
    )
    assert record.deadband.of("temp_c") == Deadband("absolute", 0.5, 300 * S)
    assert record.deadband.of("state") == Deadband("on_change", 0.0, 3600 * S)


def test_a_metric_band_alone_leaves_the_other_metrics_unscreened() -> None:
    """Without a rule-wide band, only the metric with its own is screened."""
    text = rules("{path: s, deadband: {relative: 0.02}}", "")
    (record,) = (
        Mapper(load_mappings_text(text, "m.yaml"))
        .map("plant/a1/env", b'{"t": 21.5, "s": 1}', RECV_US)
        .records
    )
    assert record.deadband is not None
    assert record.deadband.of("temp_c") is None
    assert record.deadband.of("state") == Deadband("relative", 0.02, 3600 * S)


def test_a_rule_without_deadband_makes_plain_records() -> None:
    """No deadband key: records carry none (the spool stores every point)."""
    (record,) = (
        Mapper(load_mappings_text(rules(extra=""), "m.yaml"))
        .map("plant/a1/env", b'{"t": 21.5, "s": 1}', RECV_US)
        .records
    )
    assert record.deadband is None


@pytest.mark.parametrize(
    ("band", "message"),
    [
        (
            "{absolute: 0.5, relative: 0.1}",
            "give exactly one of 'absolute', 'relative' or "
            "'on_change: true' (found absolute, relative)",
        ),
        ("{heartbeat_s: 60}", "give exactly one of 'absolute', 'relative' or 'on_change: true'"),
        ("{on_change: false}", "on_change: false is no deadband"),
    ],
)
def test_a_band_needs_exactly_one_kind(band: str, message: str) -> None:
    """Two kinds, none, or on_change: false are check errors naming file, line and key."""
    text = config_error(rules(extra=f"    deadband: {band}"))
    assert "m.yaml:9: rules[0].deadband" in text
    assert message in text


@pytest.mark.parametrize(
    ("band", "key"),
    [
        ("{absolute: 0}", "absolute"),
        ("{absolute: -1}", "absolute"),
        ("{relative: 0}", "relative"),
        ("{on_change: true, heartbeat_s: 0}", "heartbeat_s"),
        ("{on_change: true, heartbeat_s: 700000}", "heartbeat_s"),
    ],
)
def test_zero_negative_or_huge_values_are_check_errors(band: str, key: str) -> None:
    """A band must be above 0 and the heartbeat between 0 and a week."""
    assert f"rules[0].deadband.{key}" in config_error(rules(extra=f"    deadband: {band}"))


def test_an_unknown_key_is_a_check_error_with_a_suggestion() -> None:
    """A typo in a band's key gets a did-you-mean."""
    text = config_error(rules(extra="    deadband: {absolut: 0.5}"))
    assert "rules[0].deadband.absolut: unknown key; did you mean 'absolute'?" in text


def test_deadband_and_coalesce_on_one_rule_is_a_check_error() -> None:
    """The two do not combine: the error says so at the deadband."""
    text = config_error(rules(extra="    deadband: {absolute: 0.5}\n    coalesce: {window_s: 60}"))
    assert "rules[0].deadband: deadband and coalesce do not combine" in text
    text = config_error(
        rules("{path: s, deadband: {on_change: true}}", "    coalesce: {window_s: 60}")
    )
    assert "rules[0].metrics.state.deadband: deadband and coalesce do not combine" in text


def test_a_metric_band_on_a_templated_name_is_a_check_error() -> None:
    """A metric's own band needs a fixed name (the name it would match is not known)."""
    text = RULE.replace("temp_c: t", "'{dev}_temp': {path: t, deadband: {absolute: 1}}")
    text = config_error(text.replace("STATE", "s").replace("EXTRA", ""))
    assert "needs a fixed metric name; put it on the rule" in text


def test_a_plain_payload_rule_takes_the_rule_band() -> None:
    """payload: number with a rule-wide band: its one metric is screened."""
    text = """version: 1
rules:
  - name: valve
    topic: plant/{dev}/valve
    device_id: '{dev}'
    payload: number
    metric: position
    deadband: {on_change: true, heartbeat_s: 600}
"""
    (record,) = (
        Mapper(load_mappings_text(text, "m.yaml")).map("plant/v1/valve", b"1", RECV_US).records
    )
    assert record.deadband is not None
    assert record.deadband.of("position") == Deadband("on_change", 0.0, 600 * S)


def test_explain_says_what_the_band_would_do() -> None:
    """explain names each band and what it does, and that one message cannot show holding
    back; its JSON lists the bands."""
    text = rules("{path: s, deadband: {on_change: true}}")
    mapper = Mapper(load_mappings_text(text, "m.yaml"))
    ex = explain(mapper, "plant/a1/env", b'{"t": 21.5, "s": 1}', RECV_US)
    out = format_explanation(ex)
    assert (
        "deadband ±0.5 on every metric without its own, heartbeat 300 s\n"
        "           a value is sent when it moves more than 0.5 from the last sent one, or "
        "300 s after it anyway (measurement time)\n"
        "         on change on state, heartbeat 3600 s\n"
        "           a value is sent when it differs from the last sent one, or 3600 s after it "
        "anyway (measurement time)\n"
    ) in out
    assert "one message cannot show holding back" in out
    assert [
        (b["metric"], b["kind"], b["band"], b["heartbeat_s"])
        for b in explanation_json(ex)["deadbands"]
    ] == [(None, "absolute", 0.5, 300.0), ("state", "on_change", 0.0, 3600.0)]
    # The points are what the message maps to: the first of a series always goes out.
    assert ex.body[0]["metrics"] == {"temp_c": 21.5, "state": 1.0}


def test_explain_of_a_rule_without_band_says_nothing_of_bands() -> None:
    """No band, no deadband lines."""
    mapper = Mapper(load_mappings_text(rules(extra=""), "m.yaml"))
    ex = explain(mapper, "plant/a1/env", b'{"t": 21.5, "s": 1}', RECV_US)
    assert "deadband" not in format_explanation(ex)
    assert explanation_json(ex)["deadbands"] == []


def test_the_guides_example_passes_its_tests() -> None:
    """The deadband example of docs/guide/mapping-file.md is a whole file whose tests pass."""
    page = (REPO / "docs" / "guide" / "mapping-file.md").read_text(encoding="utf-8")
    blocks = [b.split("```")[0] for b in page.split("```yaml\n")[1:]]
    (block,) = [b for b in blocks if "deadband" in b and "version: 1" in b]
    data, index = load_yaml_text(block, "mapping-file.md")
    rules = compile_mappings(data, index)
    assert all(r.deadband is not None for r in rules)
    tests = MappingFile.model_validate(data).tests or []
    assert len(tests) == 2
    assert [o.problems for o in run_mapping_tests(rules, tests, index)] == [[]] * len(tests)


def test_the_recipe_guides_deadband_lines_fit_the_tasmota_recipe() -> None:
    """The rules of docs/guide/recipes.md's deadband example are the Tasmota recipe's rules
    with one deadband line each; with them the recipe compiles and its tests still pass."""
    page = (REPO / "docs" / "guide" / "recipes.md").read_text(encoding="utf-8")
    (block,) = [
        b.split("```")[0] for b in page.split("```yaml\n")[1:] if "deadband" in b.split("```")[0]
    ]
    shown, _ = load_yaml_text("rules:\n" + block, "recipes.md")
    assert isinstance(shown, dict)
    data, _ = load_yaml_text(recipe("tasmota").text, "tasmota.yaml")
    assert isinstance(data, dict)
    by_name = {r["name"]: r for r in data["rules"]}
    for rule in shown["rules"]:
        assert {k: v for k, v in rule.items() if k != "deadband"} == by_name[rule["name"]]
        by_name[rule["name"]]["deadband"] = rule["deadband"]
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    data, index = load_yaml_text(text, "tasmota+deadband.yaml")
    rules = compile_mappings(data, index)
    assert {r.name for r in rules if r.deadband is not None} == {"tasmota-sensor", "tasmota-power"}
    tests = MappingFile.model_validate(data).tests or []
    assert tests
    assert [o.problems for o in run_mapping_tests(rules, tests, index)] == [[]] * len(tests)
