"""``number_format``: numbers as people print them (issue 16, item 5) — a decimal comma,
thousands separators, a trailing unit, hexadecimal and binary integers; opt-in per rule and per
metric, and nothing changes without it."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.config.yamlfile import load_yaml_text
from bridge.errors import ConfigError
from bridge.mapping.loader import compile_mappings, load_mappings_text
from bridge.mapping.mapper import Mapped, Mapper
from bridge.mapping.selftest import run_mapping_tests
from bridge.mapping.spec import MappingFile
from tests.support import REPO

RECV_US = 1_795_681_920_000_000

PLAIN = """version: 1
rules:
  - name: hmi
    topic: "hmi/{device}/{metric}"
    device_id: "{device}"
    payload: number
    metric: "{metric}"
FORMAT"""

JSON = """version: 1
rules:
  - name: panel
    topic: "panel/{device}"
    device_id: "{device}"
FORMAT
    metrics:
      temp_c: temp
      pressure_bar: {path: p, number_format: {decimal: ".", unit: bar}}
      status_word: {path: status, number_format: {hex: true, binary: true}}
"""


def plain(number_format: str = "") -> Mapper:
    fmt = f"    number_format: {number_format}\n" if number_format else ""
    return Mapper(load_mappings_text(PLAIN.replace("FORMAT", fmt), "m.yaml"))


def json_rule(number_format: str = "") -> Mapper:
    fmt = f"    number_format: {number_format}" if number_format else ""
    return Mapper(load_mappings_text(JSON.replace("FORMAT", fmt), "m.yaml"))


def value(m: Mapped) -> float:
    assert not m.failures, m.failures
    [record] = m.records
    [got] = record.metrics.values()
    return got


def reasons(m: Mapped) -> list[str]:
    return [f.reason for f in m.failures]


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_mappings_text(text, "m.yaml")
    return str(info.value)


GERMAN = '{decimal: ",", thousands: "."}'


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (b"21,4", 21.4),
        (b"-0,5", -0.5),
        (b"1.234", 1234.0),  # thousands ".": 1.234 is one thousand two hundred thirty-four
        (b"1.234,5", 1234.5),
        (b"1.234.567,25", 1234567.25),
        (b"1234,5", 1234.5),
        (b" 21,4 ", 21.4),
    ],
)
def test_a_decimal_comma_and_thousands_separators(payload: bytes, want: float) -> None:
    assert value(plain(GERMAN).map("hmi/p1/temp", payload, RECV_US)) == want


@pytest.mark.parametrize("payload", [b"1,234.5", b"21.4", b"1.2345", b"1.23", b"", b"21,4,5"])
def test_text_that_does_not_fit_the_format_is_not_numeric(payload: bytes) -> None:
    """Never guessed: ``1,234.5`` under decimal "," and thousands "." is a dead letter."""
    m = plain(GERMAN).map("hmi/p1/temp", payload, RECV_US)
    assert reasons(m) == ["not_numeric"]
    assert "decimal ','" in str(m.failures[0])


def test_without_the_option_nothing_changes() -> None:
    m = plain()
    for payload in (b"21,4", b"1.234,5", b"21.4 \xc2\xb0C", b"0x1F", b"0b1010"):
        assert reasons(m.map("hmi/p1/temp", payload, RECV_US)) == ["not_numeric"]
    assert value(m.map("hmi/p1/temp", b"21.4", RECV_US)) == 21.4
    doc = json.dumps({"temp": "21,4", "p": 1.0, "status": 3}).encode()
    got = json_rule().map("panel/p1", doc, RECV_US)
    assert reasons(got) == ["not_numeric"]


@pytest.mark.parametrize(
    ("payload", "want"),
    [(b"21.4 \xc2\xb0C", 21.4), (b"21.4\xc2\xb0C", 21.4), (b"55 %", 55.0), (b"7", 7.0)],
)
def test_a_trailing_unit_is_stripped_with_or_without_a_space(payload: bytes, want: float) -> None:
    m = plain('{unit: ["°C", "%"]}')
    assert value(m.map("hmi/p1/temp", payload, RECV_US)) == want


@pytest.mark.parametrize("payload", ["21.4 K", "21.4 °F", "21.4 °C °C", "°C", "21.4 C"])
def test_any_other_trailing_text_stays_not_numeric(payload: str) -> None:
    m = plain('{unit: "°C"}')
    assert reasons(m.map("hmi/p1/temp", payload.encode(), RECV_US)) == ["not_numeric"]


@pytest.mark.parametrize(
    ("payload", "want"),
    [(b"0x1F", 31.0), (b"0X1f", 31.0), (b"-0x10", -16.0), (b"0b1010", 10.0), (b"12", 12.0)],
)
def test_hexadecimal_and_binary_integers(payload: bytes, want: float) -> None:
    m = plain("{hex: true, binary: true}")
    assert value(m.map("hmi/p1/word", payload, RECV_US)) == want


def test_hex_is_not_read_unless_asked_for() -> None:
    assert reasons(plain("{binary: true}").map("hmi/p1/w", b"0x1F", RECV_US)) == ["not_numeric"]
    assert reasons(plain("{hex: true}").map("hmi/p1/w", b"0b11", RECV_US)) == ["not_numeric"]
    assert reasons(plain("{hex: true}").map("hmi/p1/w", b"0x1G", RECV_US)) == ["not_numeric"]


def test_transforms_apply_after_the_number_is_read() -> None:
    text = PLAIN.replace("FORMAT", f"    number_format: {GERMAN}\n    transform: {{scale: 0.001}}")
    m = Mapper(load_mappings_text(text, "m.yaml"))
    assert value(m.map("hmi/p1/energy", b"1.234,5", RECV_US)) == pytest.approx(1.2345)


def test_a_non_finite_number_is_still_refused() -> None:
    assert reasons(plain(GERMAN).map("hmi/p1/t", b"1e999", RECV_US)) == ["non_finite"]


def test_json_string_fields_use_the_rules_format_or_the_metrics_own() -> None:
    doc = {"temp": "21,4", "p": "1.013 bar", "status": "0x00FF"}
    got = json_rule(GERMAN).map("panel/p1", json.dumps(doc).encode(), RECV_US)
    assert not got.failures
    assert got.records[0].metrics == {"temp_c": 21.4, "pressure_bar": 1.013, "status_word": 255}


def test_json_numbers_stay_numbers_under_a_format() -> None:
    doc = {"temp": 21.4, "p": 1.0, "status": 3}
    got = json_rule(GERMAN).map("panel/p1", json.dumps(doc).encode(), RECV_US)
    assert got.records[0].metrics == {"temp_c": 21.4, "pressure_bar": 1.0, "status_word": 3}


def test_a_value_map_entry_wins_over_the_format() -> None:
    text = PLAIN.replace(
        "FORMAT", '    number_format: {hex: true}\n    transform: {map: {"off": 0}}'
    )
    m = Mapper(load_mappings_text(text, "m.yaml"))
    assert value(m.map("hmi/p1/w", b"OFF", RECV_US)) == 0.0
    assert value(m.map("hmi/p1/w", b"0x2", RECV_US)) == 2.0


def test_the_same_mark_for_decimal_and_thousands_is_a_check_error() -> None:
    text = config_error(
        PLAIN.replace("FORMAT", '    number_format: {decimal: ",", thousands: ","}')
    )
    assert "m.yaml:8: rules[0].number_format:" in text
    assert "ambiguous" in text


def test_an_unknown_key_is_a_check_error_with_a_suggestion() -> None:
    text = config_error(PLAIN.replace("FORMAT", "    number_format: {hexx: true}"))
    assert "rules[0].number_format.hexx: unknown key; did you mean 'hex'?" in text


def test_an_unknown_decimal_mark_is_a_check_error() -> None:
    text = config_error(PLAIN.replace("FORMAT", '    number_format: {decimal: ";"}'))
    assert "rules[0].number_format.decimal" in text


def test_a_unit_with_spaces_around_it_is_a_check_error() -> None:
    text = config_error(PLAIN.replace("FORMAT", '    number_format: {unit: " °C"}'))
    assert "rules[0].number_format: unit ' °C'" in text


def test_number_format_on_a_boolean_rule_is_a_check_error() -> None:
    text = PLAIN.replace("payload: number", "payload: boolean")
    text = config_error(text.replace("FORMAT", "    number_format: {hex: true}"))
    assert "rules[0].number_format: number_format is for payload: number" in text


def test_number_format_on_a_collect_only_rule_is_a_check_error() -> None:
    text = config_error(
        "version: 1\nrules:\n  - {name: c, topic: 'c/{d}', device_id: '{d}',"
        " collect: {path: x}, number_format: {hex: true}}\n"
    )
    assert "rules[0].number_format: number_format applies to 'metrics'" in text


def test_the_guides_example_passes_its_tests() -> None:
    """The number_format example of docs/guide/mapping-file.md is a whole file whose tests pass."""
    page = (REPO / "docs" / "guide" / "mapping-file.md").read_text(encoding="utf-8")
    blocks = [b.split("```")[0] for b in page.split("```yaml\n")[1:]]
    (block,) = [b for b in blocks if "number_format" in b and "version: 1" in b]
    data, index = load_yaml_text(block, "mapping-file.md")
    rules = compile_mappings(data, index)
    tests = MappingFile.model_validate(data).tests or []
    assert len(tests) >= 3
    assert [o.problems for o in run_mapping_tests(rules, tests, index)] == [[]] * len(tests)


# --- properties ------------------------------------------------------------------------------

_PROPS = settings(max_examples=300, derandomize=True, database=None, deadline=None)


def _grouped(digits: str, sep: str) -> str:
    head = len(digits) % 3 or 3
    groups = [digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)]
    return sep.join(groups)


@_PROPS
@given(
    whole=st.integers(0, 10**12),
    fraction=st.text(alphabet="0123456789", max_size=4),
    negative=st.booleans(),
    unit=st.sampled_from(["", "°C", " °C", "\u00a0°C"]),
    thousands=st.sampled_from([".", " ", "'", "\u202f"]),
)
def test_a_printed_number_reads_back_as_itself(
    whole: int, fraction: str, negative: bool, unit: str, thousands: str
) -> None:
    """A number printed with grouped thousands, a decimal comma and a unit is read back as the
    value its canonical form has."""
    m = plain(f'{{decimal: ",", thousands: "{thousands}", unit: "°C"}}')
    sign = "-" if negative else ""
    printed = f"{sign}{_grouped(str(whole), thousands)}{',' + fraction if fraction else ''}{unit}"
    want = float(f"{sign}{whole}.{fraction or '0'}")
    assert value(m.map("hmi/p1/t", printed.encode(), RECV_US)) == want


@_PROPS
@given(st.text(alphabet="0123456789.,eE+- x", max_size=12))
@example("1,234.5")
@example("1.234")
def test_under_the_german_format_a_text_is_read_exactly_one_way_or_refused(text: str) -> None:
    """Whatever the text, the result is its German reading or a not_numeric dead letter,
    never a crash and never another reading."""
    got = plain(GERMAN).map("hmi/p1/t", text.encode(), RECV_US)
    if got.failures:
        assert reasons(got) in (["not_numeric"], ["non_finite"])
        return
    canonical = text.strip().replace(".", "").replace(",", ".")
    assert value(got) == float(canonical)
    assert "," not in text.strip() or text.strip().count(",") == 1
    if "," in text and "." in text:
        assert text.index(".") < text.index(",")  # thousands never after the decimal mark


@_PROPS
@given(st.text(alphabet="0123456789.,eE+- x°C%", max_size=12))
def test_without_a_format_a_plain_rule_reads_exactly_what_it_read_before(text: str) -> None:
    """The option is opt-in: a format of plain defaults accepts exactly what no format does."""
    before = plain().map("hmi/p1/t", text.encode(), RECV_US)
    after = plain('{decimal: "."}').map("hmi/p1/t", text.encode(), RECV_US)
    assert reasons(before) == reasons(after)
    assert [r.metrics for r in before.records] == [r.metrics for r in after.records]


@_PROPS
@given(st.integers(-(2**53), 2**53))
def test_hex_and_binary_integers_read_back(n: int) -> None:
    m = plain("{hex: true, binary: true}")
    sign = "-" if n < 0 else ""
    assert value(m.map("hmi/p1/w", f"{sign}{abs(n):#x}".encode(), RECV_US)) == n
    assert value(m.map("hmi/p1/w", f"{sign}{abs(n):#b}".encode(), RECV_US)) == n
