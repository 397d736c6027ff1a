"""Conversions that read like the datasheet (issue 16, item 4): ``linear: {from, to}`` and
``expr: "(x - 32) * 5 / 9"`` on a metric, a plain rule's transform, ``collect`` and
``readings``; one conversion step per metric, ``round`` and then ``range`` on the result."""

from __future__ import annotations

import json

import pytest

from bridge.config.yamlfile import load_yaml_text
from bridge.errors import ConfigError, PayloadError
from bridge.mapping.explain import explain, explanation_json, format_explanation
from bridge.mapping.loader import compile_mappings, load_mappings_text
from bridge.mapping.mapper import Mapped, Mapper
from bridge.mapping.overlap import rule_warnings
from bridge.mapping.selftest import run_mapping_tests
from bridge.mapping.spec import MappingFile
from bridge.mapping.transforms import IDENTITY, Transform
from bridge.metrics import DEAD_LETTER_REASONS
from tests.support import REPO

RECV_US = 1_795_681_920_000_000

JSON = """version: 1
rules:
  - name: tank
    topic: "plc/{tank}"
    device_id: "{tank}"
    metrics:
METRICS
"""

PLAIN = """version: 1
rules:
  - name: gauge
    topic: "gauge/{tank}"
    device_id: "{tank}"
    payload: number
    metric: level
    transform: TRANSFORM
"""


def json_mapper(*metrics: str) -> Mapper:
    body = "\n".join(f"      {m}" for m in metrics)
    return Mapper(load_mappings_text(JSON.replace("METRICS", body), "m.yaml"))


def plain_mapper(transform: str) -> Mapper:
    return Mapper(load_mappings_text(PLAIN.replace("TRANSFORM", transform), "m.yaml"))


def metrics_of(m: Mapped) -> dict[str, float]:
    return {k: v for r in m.records for k, v in r.metrics.items()}


def reasons(m: Mapped) -> list[str]:
    return [f.reason for f in m.failures]


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_mappings_text(text, "m.yaml")
    return str(info.value)


MA = "level: {path: ma, linear: {from: [4, 20], to: [0, 10]}}"


# --- linear ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ma", "bar"), [(4, 0.0), (20, 10.0), (12, 5.0), (8, 2.5), (3.2, -0.5), (21.6, 11.0)]
)
def test_a_4_20_ma_signal_becomes_bar(ma: float, bar: float) -> None:
    """Both ends map exactly, the middle on the line, and values outside the span convert too."""
    m = json_mapper(MA).map("plc/t1", json.dumps({"ma": ma}).encode(), RECV_US)
    assert metrics_of(m) == {"level": pytest.approx(bar, abs=1e-12)}
    assert not m.failures


def test_range_applies_to_the_converted_value() -> None:
    """range [0, 10] is in bar: 3.2 mA (-0.5 bar) is refused, 20 mA (10 bar) kept."""
    mapper = json_mapper(MA.replace("}}", "}, range: [0, 10]}"))
    assert reasons(mapper.map("plc/t1", b'{"ma": 3.2}', RECV_US)) == ["out_of_range"]
    assert metrics_of(mapper.map("plc/t1", b'{"ma": 20}', RECV_US)) == {"level": 10.0}


def test_clamp_turns_a_wire_break_into_the_range_end() -> None:
    mapper = plain_mapper(
        "{linear: {from: [4, 20], to: [0, 100]}, range: [0, 100], out_of_range: clamp}"
    )
    assert metrics_of(mapper.map("gauge/t1", b"3.6", RECV_US)) == {"level": 0.0}
    assert metrics_of(mapper.map("gauge/t1", b"8", RECV_US)) == {"level": 25.0}


def test_round_comes_after_the_conversion_and_before_the_range() -> None:
    """10.004 bar rounds to 10.0 before the range check, so it is not refused."""
    mapper = json_mapper(
        "p: {path: v, linear: {from: [0, 1], to: [0, 1]}, round: 2, range: [0, 10]}"
    )
    assert metrics_of(mapper.map("plc/t1", b'{"v": 10.004}', RECV_US)) == {"p": 10.0}


def test_a_falling_line_maps_as_well() -> None:
    """A sensor whose signal falls as the value rises: from [20, 4] to [0, 10]."""
    mapper = json_mapper("level: {path: ma, linear: {from: [20, 4], to: [0, 10]}}")
    assert metrics_of(mapper.map("plc/t1", b'{"ma": 4}', RECV_US)) == {"level": 10.0}
    assert metrics_of(mapper.map("plc/t1", b'{"ma": 16}', RECV_US)) == {"level": 2.5}


# --- expr ------------------------------------------------------------------------------------


def test_fahrenheit_to_celsius() -> None:
    mapper = json_mapper('temp_c: {path: f, expr: "(x - 32) * 5 / 9", round: 1}')
    assert metrics_of(mapper.map("plc/t1", b'{"f": 98.6}', RECV_US)) == {"temp_c": 37.0}
    assert metrics_of(mapper.map("plc/t1", b'{"f": -40}', RECV_US)) == {"temp_c": -40.0}


def test_an_expression_on_a_plain_payload_collect_and_readings() -> None:
    plain = plain_mapper('{expr: "sqrt(x) * 2"}')
    assert metrics_of(plain.map("gauge/t1", b"16", RECV_US)) == {"level": 8.0}
    text = """version: 1
rules:
  - name: c
    topic: "c/{d}"
    device_id: "{d}"
    collect: {path: f, expr: "x / 1000"}
  - name: r
    topic: "r/{d}"
    device_id: "{d}"
    readings: {name: n, value: v, linear: {from: [0, 4095], to: [0, 100]}}
"""
    mapper = Mapper(load_mappings_text(text, "m.yaml"))
    got = mapper.map("c/d1", b'{"f": {"a": 1500, "b": 2}}', RECV_US)
    assert metrics_of(got) == {"a": 1.5, "b": 0.002}
    got = mapper.map("r/d1", b'[{"n": "x", "v": 4095}, {"n": "y", "v": 0}]', RECV_US)
    assert metrics_of(got) == {"x": 100.0, "y": 0.0}


@pytest.mark.parametrize(
    ("expr", "raw", "reason"),
    [
        ("100 / x", 0, "conversion_failed"),  # division by zero
        ("x % 0", 5, "conversion_failed"),
        ("sqrt(x)", -1, "conversion_failed"),  # math domain error
        ("log(x)", 0, "conversion_failed"),
        ("exp(x)", 1000, "conversion_failed"),  # overflow
        ("x ** 0.5", -4, "conversion_failed"),  # no complex numbers
        ("x * 1e308", 10, "non_finite"),  # the result is infinite
    ],
)
def test_a_value_the_expression_cannot_compute_fails_that_metric_only(
    expr: str, raw: float, reason: str
) -> None:
    """A per-metric failure with its reason, counted like any other; the next metric is kept."""
    mapper = json_mapper(f'bad: {{path: v, expr: "{expr}"}}', "ok: {path: w}")
    m = mapper.map("plc/t1", json.dumps({"v": raw, "w": 1}).encode(), RECV_US)
    assert reasons(m) == [reason]
    assert metrics_of(m) == {"ok": 1.0}
    assert m.failures[0].detail.startswith("bad: ")
    assert reason in DEAD_LETTER_REASONS


def test_conversion_failures_reject_the_message_under_reject_message() -> None:
    text = JSON.replace("METRICS", '      bad: {path: v, expr: "1 / x"}\n      ok: {path: w}')
    text += "    on_error: reject_message\n"
    m = Mapper(load_mappings_text(text, "m.yaml")).map("plc/t1", b'{"v": 0, "w": 1}', RECV_US)
    assert reasons(m) == ["conversion_failed"]
    assert m.records == []


def test_a_text_value_goes_through_the_map_then_the_expression() -> None:
    mapper = plain_mapper('{map: {LOW: 1, HIGH: 3}, expr: "x * 10"}').rules[0]
    assert mapper.transforms[0].apply("level", "high") == 30.0


# --- check errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (
            'v: {path: v, expr: "(y - 32) * 5 / 9"}',
            "m.yaml:7: rules[0].metrics.v.expr: unknown name 'y'; did you mean 'x'?",
        ),
        (
            'v: {path: v, expr: "sqr(x)"}',
            "m.yaml:7: rules[0].metrics.v.expr: unknown function 'sqr'; did you mean 'sqrt'?",
        ),
        ('v: {path: v, expr: "x +"}', "m.yaml:7: rules[0].metrics.v.expr: not an expression"),
        (
            "v: {path: v, expr: \"__import__('os')\"}",
            "rules[0].metrics.v.expr: unknown function '__import__'",
        ),
        (
            "v: {path: v, expr: \"__import__('os').system('true')\"}",
            "rules[0].metrics.v.expr: only the functions abs, min, max",
        ),
        ('v: {path: v, expr: "x.real"}', "rules[0].metrics.v.expr: attribute is not allowed"),
        ('v: {path: v, expr: "x if x > 0 else 0"}', "comparisons and conditions"),
        ('v: {path: v, expr: "(lambda: x)()"}', "only the functions"),
        ('v: {path: v, expr: "7"}', "never reads the value x"),
        ('v: {path: v, expr: "x * 1e999"}', "a number in the expression is too large"),
        ('v: {path: v, expr: "round(x, 1.5)"}', "digits is a whole number 0-12"),
        (f'v: {{path: v, expr: "{"x + " * 100}x"}}', "longer than 200 characters"),
        (f'v: {{path: v, expr: "{"-" * 30}x"}}', "nested more than 20 levels"),
        (
            "v: {path: v, expr: x, scale: 2}",
            "rules[0].metrics.v.expr: 'expr' replaces scale: write the whole conversion in it",
        ),
        (
            "v: {path: v, linear: {from: [4, 20], to: [0, 1]}, offset: 1, scale: 2}",
            "rules[0].metrics.v.linear: 'linear' replaces scale and offset",
        ),
        (
            "v: {path: v, linear: {from: [4, 20], to: [0, 1]}, expr: x}",
            "rules[0].metrics.v.expr: give 'linear' or 'expr', not both",
        ),
        (
            "v: {path: v, linear: {from: [4, 4], to: [0, 1]}}",
            "m.yaml:7: rules[0].metrics.v.linear.from: 'from' needs two different values",
        ),
        ("v: {path: v, linear: {from: [4], to: [0, 1]}}", "rules[0].metrics.v.linear.from"),
        ("v: {path: v, linear: {from: [4, 20], to: [0, 1], too: 1}}", "did you mean 'to'"),
        (
            "v: {path: v, linear: {from: [-1e308, 1e308], to: [0, 1]}}",
            "rules[0].metrics.v.linear: the spans are too wide",
        ),
    ],
)
def test_check_names_file_line_and_key(metric: str, expected: str) -> None:
    assert expected in config_error(JSON.replace("METRICS", f"      {metric}"))


def test_a_plain_rule_transform_error_names_its_key() -> None:
    text = config_error(PLAIN.replace("TRANSFORM", '{expr: "value * 2"}'))
    assert "m.yaml:8: rules[0].transform.expr: unknown name 'value'; did you mean 'x'?" in text


# --- the common path -------------------------------------------------------------------------


def test_a_transform_without_a_conversion_step_skips_it() -> None:
    """The flag the hot path tests is false without scale, offset, linear and expr, and set by
    any of them (also through dataclasses.replace, as number_format uses it)."""
    from dataclasses import replace

    from bridge.mapping.conversions import linear

    assert not IDENTITY.converts
    assert not Transform.build(digits=2, valid_range=[0, 1]).converts
    assert Transform.build(scale=2.0).converts
    assert Transform.build(offset=-1.0).converts
    convert = linear([4, 20], [0, 10])
    assert Transform.build(convert=convert).converts
    assert replace(Transform.build(convert=convert), digits=1).converts
    assert Transform.build(scale=2.0).apply("m", 3) == 6.0


def test_scale_and_offset_still_work_and_overflow_as_before() -> None:
    t = Transform.build(scale=1e308)
    with pytest.raises(PayloadError) as info:
        t.apply("m", 10.0)
    assert info.value.reason == "non_finite"


# --- explain ---------------------------------------------------------------------------------


def test_explain_shows_the_conversion_steps_and_their_result() -> None:
    mapper = json_mapper(
        MA.replace("}}", "}, round: 2, range: [0, 10]}"),
        'temp_c: {path: f, expr: "(x - 32) * 5 / 9"}',
        "plain: {path: p}",
    )
    ex = explain(mapper, "plc/t1", b'{"ma": 3, "f": 212, "p": 1}', RECV_US)
    text = format_explanation(ex)
    assert (
        "convert level: x = 3 → linear [4, 20] → [0, 10], then round 2, then range [0, 10] "
        "(reject outside) → out_of_range"
    ) in text
    assert "convert temp_c: x = 212 → expr (x - 32) * 5 / 9 = 100" in text
    assert "convert plain" not in text  # no steps, no line
    doc = explanation_json(ex)
    assert [c["metric"] for c in doc["conversions"]] == ["level", "temp_c"]
    assert doc["conversions"][1]["raw"] == "212"


def test_explain_shows_a_plain_rules_conversion() -> None:
    mapper = plain_mapper("{linear: {from: [4, 20], to: [0, 100]}}")
    text = format_explanation(explain(mapper, "gauge/t1", b"8", RECV_US))
    assert "convert level: x = 8 → linear [4, 20] → [0, 100] = 25" in text


# --- docs ------------------------------------------------------------------------------------


def test_the_guides_example_passes_its_tests() -> None:
    """The conversions example of docs/guide/mapping-file.md is a whole file whose tests pass."""
    page = (REPO / "docs" / "guide" / "mapping-file.md").read_text(encoding="utf-8")
    blocks = [b.split("```")[0] for b in page.split("```yaml\n")[1:]]
    (block,) = [b for b in blocks if "linear:" in b and "version: 1" in b]
    data, index = load_yaml_text(block, "mapping-file.md")
    rules = compile_mappings(data, index)
    tests = MappingFile.model_validate(data).tests or []
    assert len(tests) >= 4
    assert [o.problems for o in run_mapping_tests(rules, tests, index)] == [[]] * len(tests)


def test_the_cookbooks_analog_inputs_recipe_passes_check_strict_and_its_tests() -> None:
    """The analog-inputs example of docs/guide/recipes.md (4-20 mA, 0-10 V, an NTC)."""
    page = (REPO / "docs" / "guide" / "recipes.md").read_text(encoding="utf-8")
    blocks = [b.split("```")[0] for b in page.split("```yaml\n")[1:]]
    (block,) = [b for b in blocks if "io-pressure" in b]
    data, index = load_yaml_text(block, "recipes.md")
    rules = compile_mappings(data, index)
    assert rule_warnings(rules) == []
    tests = MappingFile.model_validate(data).tests or []
    assert {r for t in tests for r in t.expect_failures or []} == {
        "out_of_range",
        "conversion_failed",
    }
    assert [o.problems for o in run_mapping_tests(rules, tests, index)] == [[]] * len(tests)


def test_the_schema_describes_linear_and_expr() -> None:
    schema = json.loads((REPO / "deploy" / "topic-mappings.schema.json").read_text("utf-8"))
    transform = schema["$defs"]["MetricSpec"]["properties"]
    assert "expr" in transform
    assert "linear" in transform
    linear = schema["$defs"]["LinearSpec"]
    assert set(linear["properties"]) == {"from", "to"}
    assert linear["additionalProperties"] is False
