"""Exact time: every epoch unit and ISO 8601 form of one instant gives the same microseconds.

Property tests (hypothesis) draw instants as integers of nanoseconds, write them in every form a
device may send, and check the parser and the compiled rules agree: finer digits are truncated
to the microsecond, never rounded into the next second.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.cli.main import main
from bridge.errors import PayloadError
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.mapping.timestamps import TimestampFormat, format_timestamp, parse_timestamp

REPO = Path(__file__).resolve().parents[2]
PROPS = settings(derandomize=True, database=None, deadline=None, max_examples=300)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z
AUTO_MAX_NS = 10**20 - 1  # the largest ns value auto still reads as nanoseconds (year 5138)
# Before 2**33 s (the year 2242) a double has finer steps than a microsecond at second magnitude.
FLOAT_SAFE_S = 2**33
# orjson hands integers up to 2**64 - 1 over as int (ns until the year 2554), larger ones as floats.
JSON_INT_MAX = 2**64 - 1
STAMP_NS = 1_700_000_000_999_999_600  # the PLC stamp that rounded into the next second
instants = st.integers(MIN_NS, AUTO_MAX_NS)
json_instants = st.integers(MIN_NS, JSON_INT_MAX)


def iso(ns: int) -> str:
    """``ns`` as ISO 8601 UTC with all nine fraction digits."""
    seconds, frac = divmod(ns, 10**9)
    whole = EPOCH + timedelta(seconds=seconds)
    return f"{whole:%Y-%m-%dT%H:%M:%S}.{frac:09d}Z"


def decimal_text(ns: int, unit_ns: int) -> str:
    """``ns`` in a unit of ``unit_ns`` nanoseconds, as exact decimal text (``123.000456``)."""
    whole, frac = divmod(ns, unit_ns)
    digits = len(str(unit_ns)) - 1
    return f"{whole}.{frac:0{digits}d}" if digits else str(whole)


def forms(ns: int) -> dict[str, tuple[object, TimestampFormat]]:
    """Every form of the instant ``ns`` a payload may carry, with the format that reads it."""
    return {
        "ns int": (ns, "epoch_ns"),
        "ns text": (str(ns), "epoch_ns"),
        "us text": (decimal_text(ns, 10**3), "epoch_us"),
        "ms text": (decimal_text(ns, 10**6), "epoch_ms"),
        "s text": (decimal_text(ns, 10**9), "epoch_s"),
        "iso": (iso(ns), "iso8601"),
    }


@given(instants)
@example(STAMP_NS)
@example(MIN_NS)
@example(MIN_NS + 999)
@PROPS
def test_every_form_of_one_instant_gives_the_same_microsecond(ns: int) -> None:
    """Epoch s/ms/µs/ns (integer and decimal text) and ISO forms agree, explicit and auto."""
    want = ns // 1000
    for name, (value, fmt) in forms(ns).items():
        assert parse_timestamp(value, fmt) == want, name
        assert parse_timestamp(value, "auto") == want, name


@given(json_instants)
@example(STAMP_NS)
@PROPS
def test_whole_unit_integers_agree_with_the_instant(ns: int) -> None:
    """JSON integers in every unit (as orjson hands them over) give the truncated instant."""
    units: tuple[tuple[int, TimestampFormat], ...] = (
        (1, "epoch_ns"),
        (10**3, "epoch_us"),
        (10**6, "epoch_ms"),
        (10**9, "epoch_s"),
    )
    for unit_ns, fmt in units:
        whole = orjson.loads(str(ns // unit_ns).encode())
        assert isinstance(whole, int)
        assert parse_timestamp(whole, fmt) == ns // unit_ns * unit_ns // 1000
        assert parse_timestamp(whole, "auto") == ns // unit_ns * unit_ns // 1000


@given(st.integers(MIN_NS // 1000, FLOAT_SAFE_S * 10**6 - 1))
@example(1_700_000_000_999_999)
@PROPS
def test_json_floats_with_microsecond_fractions_are_exact_before_2242(us: int) -> None:
    """A JSON number of seconds with 6 fraction digits (or ms with 3) is a float after parsing;
    its shortest text is still the digits sent, so the microsecond is exact."""
    units: tuple[tuple[int, TimestampFormat], ...] = ((10**6, "epoch_s"), (10**3, "epoch_ms"))
    for unit_us, fmt in units:
        number = orjson.loads(decimal_text(us * 1000, unit_us * 1000).encode())
        assert parse_timestamp(number, fmt) == us
        assert parse_timestamp(number, "auto") == us


@given(st.integers(MIN_NS // 1000, 253_402_300_799_999_999))
@PROPS
def test_formatted_timestamps_parse_back_exactly(us: int) -> None:
    """What is sent to the API (ISO 8601, up to 6 digits) reads back as the same microsecond."""
    assert parse_timestamp(format_timestamp(us), "iso8601") == us


RULES = Mapper(
    load_mappings_text(
        "version: 1\nrules:\n"
        "  - name: plc\n    topic: plc/{line}/{fmt}\n    device_id: '{line}'\n"
        "    metrics: {v: v}\n    timestamp: {field: ts, format: auto}\n",
        "exact-time.yaml",
    ),
    max_future_s=10**12,
)


@given(json_instants)
@example(STAMP_NS)
@PROPS
def test_compiled_rules_stamp_every_form_at_the_same_microsecond(ns: int) -> None:
    """Through a compiled rule, JSON payloads carrying the instant in any form give one ts_us."""
    stamps: set[int] = set()
    for name, (value, _) in forms(ns).items():
        payload = orjson.dumps({"v": 1, "ts": value})
        mapped = RULES.map(f"plc/l1/{name.replace(' ', '-')}", payload, received_us=ns // 1000)
        assert not mapped.failures, (name, mapped.failures)
        stamps.update(record.ts_us for record in mapped.records)
    assert stamps == {ns // 1000}


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        (STAMP_NS, "auto"),
        (STAMP_NS, "epoch_ns"),
        ("1700000000999999600", "auto"),
        ("1700000000.9999996", "epoch_s"),
        ("1700000000999.9996", "auto"),
        ("1700000000999999.6", "epoch_us"),
        (1_700_000_000.9999996, "auto"),  # a float: the digits beyond the double are lost,
        ("2023-11-14T22:13:20.9999996Z", "auto"),  # but not into the next second
        ("2023-11-14T23:13:20.999999600+01:00", "iso8601"),
    ],
)
def test_a_nanosecond_stamp_stays_in_its_second(value: object, fmt: TimestampFormat) -> None:
    """The PLC stamp …20.9999996 is …20.999999Z in every form (it was …21Z as an epoch)."""
    assert format_timestamp(parse_timestamp(value, fmt)) == "2023-11-14T22:13:20.999999Z"


def test_json_floats_read_as_their_shortest_text() -> None:
    """A float is read through repr: 0.1-style binary noise never shifts a microsecond."""
    assert parse_timestamp(1_731_657_600.000001, "epoch_s") == 1_731_657_600_000_001
    assert parse_timestamp(1_731_657_600_000.001, "epoch_ms") == 1_731_657_600_000_001
    assert parse_timestamp(1.7316576e9, "auto") == 1_731_657_600_000_000


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1700000000." + "9" * 60_000, 1_700_000_000_999_999),  # Decimal math would round up
        ("1.7e9", 1_700_000_000_000_000),
        ("17e8", 1_700_000_000_000_000),
        ("+1700000000", 1_700_000_000_000_000),
        (" 1700000000.5 ", 1_700_000_000_500_000),
        ("1700000000.0000009", 1_700_000_000_000_000),
    ],
)
def test_long_fractions_and_exponents_are_read_exactly(text: str, want: int) -> None:
    """Long fractions are truncated cheaply; exponent and sign forms are plain decimals."""
    assert parse_timestamp(text, "epoch_s") == want


@pytest.mark.parametrize("text", ["1e999999999", "1e-999999999", "9" * 25, "Infinity", "NaN"])
def test_extreme_exponents_are_refused_without_big_arithmetic(text: str) -> None:
    """Huge or tiny exponents are refused by magnitude before any power of ten is computed."""
    with pytest.raises(PayloadError) as info:
        parse_timestamp(text, "epoch_s")
    assert info.value.reason == "bad_timestamp"


def test_the_guides_exact_time_example_passes_check_and_its_tests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example under "Exact time" in docs/guide/mapping-file.md is checked and its tests
    pass with the real mapper: the ns integer and the ISO form give the same time."""
    page = (REPO / "docs" / "guide" / "mapping-file.md").read_text(encoding="utf-8")
    section = page.split("#### Exact time")[1]
    block = section.split("```yaml\n")[1].split("```")[0]
    file = tmp_path / "plc.yaml"
    file.write_text(block, encoding="utf-8")
    assert main(["check", "--strict", str(file)]) == 0
    assert main(["test", str(file)]) == 0
    assert "2 passed, 0 failed" in capsys.readouterr().out
