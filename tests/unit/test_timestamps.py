"""Unit tests of timestamp parsing (payload forms → epoch µs) and formatting."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bridge.errors import PayloadError
from bridge.mapping.timestamps import (
    TimestampFormat,
    check_not_future,
    format_timestamp,
    parse_timestamp,
)

T0 = datetime(2024, 11, 15, 8, 0, 0, tzinfo=UTC)
T0_S = int(T0.timestamp())  # 1731657600
T0_US = T0_S * 1_000_000


def bad(value: object, fmt: TimestampFormat = "auto") -> PayloadError:
    """The PayloadError raised for ``value``."""
    with pytest.raises(PayloadError) as info:
        parse_timestamp(value, fmt)
    assert info.value.reason == "bad_timestamp"
    return info.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-11-15T08:00:00Z", T0_US),
        ("2024-11-15T08:00:00+00:00", T0_US),
        ("2024-11-15T10:00:00+02:00", T0_US),
        ("2024-11-15T03:00:00-05:00", T0_US),
        ("2024-11-15T08:00:00.250Z", T0_US + 250_000),
        ("2024-11-15T08:00:00.000001Z", T0_US + 1),
    ],
)
@pytest.mark.parametrize("fmt", ["auto", "iso8601"])
def test_iso_with_zone_is_converted_to_utc_microseconds(
    text: str, expected: int, fmt: TimestampFormat
) -> None:
    """ISO 8601 strings with 'Z' or an offset become exact UTC epoch microseconds."""
    assert parse_timestamp(text, fmt) == expected


@pytest.mark.parametrize("text", ["2024-11-15T08:00:00", "2024-11-15 08:00:00.5", "2024-11-15"])
def test_iso_without_zone_is_refused(text: str) -> None:
    """A zone-less ISO timestamp is ambiguous and is rejected, not guessed."""
    assert "no time zone" in bad(text).detail


@pytest.mark.parametrize("text", ["yesterday", "15/11/2024 08:00", "2024-13-01T00:00:00Z", " "])
def test_unparsable_strings_are_refused(text: str) -> None:
    """Strings that are neither numbers nor ISO 8601 are rejected as bad_timestamp."""
    bad(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (T0_S, T0_US),
        (T0_S + 0.5, T0_US + 500_000),
        (T0_S * 1_000, T0_US),
        (T0_S * 1_000 + 7, T0_US + 7_000),
        (T0_S * 1_000_000 + 3, T0_US + 3),
        (T0_S * 1_000_000_000, T0_US),
        (T0_S * 1_000_000_000 + 5_000, T0_US + 5),
    ],
    ids=["s", "s-fraction", "ms", "ms-exact", "us", "ns", "ns-exact"],
)
def test_auto_epoch_unit_is_chosen_by_magnitude(value: float, expected: int) -> None:
    """In auto mode seconds, milliseconds, microseconds and nanoseconds are told apart by size."""
    assert parse_timestamp(value, "auto") == expected


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        (T0_S, "epoch_s"),
        (T0_S * 1_000, "epoch_ms"),
        (T0_S * 1_000_000, "epoch_us"),
        (T0_S * 1_000_000_000, "epoch_ns"),
    ],
)
def test_explicit_epoch_formats_scale_by_their_unit(value: int, fmt: TimestampFormat) -> None:
    """An explicit epoch format applies its unit regardless of the value's magnitude."""
    assert parse_timestamp(value, fmt) == T0_US


def test_explicit_format_overrides_auto_guess() -> None:
    """With epoch_ms a value auto would read as seconds is read as milliseconds (and refused)."""
    assert parse_timestamp(T0_S, "auto") == T0_US
    assert "before 2000" in bad(T0_S, "epoch_ms").detail


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        (str(T0_S), "auto", T0_US),
        (f" {T0_S} ", "auto", T0_US),
        (f"{T0_S}.25", "auto", T0_US + 250_000),
        (str(T0_S * 1000), "auto", T0_US),
        (str(T0_S * 1000), "epoch_ms", T0_US),
        (str(T0_S * 1_000_000_000), "epoch_ns", T0_US),
    ],
)
def test_numeric_strings_are_read_as_epochs(text: str, fmt: TimestampFormat, expected: int) -> None:
    """Numeric strings are parsed like numbers in auto and explicit epoch formats."""
    assert parse_timestamp(text, fmt) == expected


@pytest.mark.parametrize("text", ["1_731_657_600", "nan", "inf", "0x6737"])
def test_number_like_strings_that_are_not_plain_decimals_are_refused(text: str) -> None:
    """Underscored, hex, NaN and infinity strings are not accepted as epoch numbers."""
    bad(text)
    bad(text, "epoch_s")


def test_iso_only_format_refuses_numbers() -> None:
    """With format iso8601 a numeric epoch is rejected."""
    assert "ISO 8601" in bad(T0_S, "iso8601").detail


def test_epoch_format_refuses_iso_strings() -> None:
    """With an epoch format an ISO string is rejected."""
    assert "expected a number" in bad("2024-11-15T08:00:00Z", "epoch_s").detail


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("fmt", ["auto", "epoch_s", "iso8601"])
def test_booleans_are_refused(value: bool, fmt: TimestampFormat) -> None:
    """JSON true/false are not timestamps even though bool is an int in Python."""
    assert "boolean" in bad(value, fmt).detail


@pytest.mark.parametrize("value", [None, [T0_S], {"t": T0_S}, b"1731657600"])
def test_other_types_are_refused(value: object) -> None:
    """None, lists, objects and bytes are rejected as bad_timestamp."""
    bad(value)


@pytest.mark.parametrize("value", [-T0_S, -1, 0, 0.0, "0", "-5", float("nan"), float("inf")])
def test_non_positive_and_non_finite_epochs_are_refused(value: object) -> None:
    """Zero, negative, NaN and infinite epoch values are rejected."""
    bad(value)


@pytest.mark.parametrize(
    "value",
    [1, 946_684_799, 946_684_799_999, 946_684_799_999_999, "1999-12-31T23:59:59Z"],
)
def test_readings_before_2000_are_refused(value: object) -> None:
    """Anything before 2000-01-01T00:00:00Z is treated as a device clock fault."""
    assert "before 2000" in bad(value).detail


def test_year_2000_boundary_is_accepted() -> None:
    """Exactly 2000-01-01T00:00:00Z is the first accepted instant."""
    assert parse_timestamp("2000-01-01T00:00:00Z", "auto") == 946_684_800_000_000
    assert parse_timestamp(946_684_800, "auto") == 946_684_800_000_000


def test_epochs_beyond_nanosecond_range_are_refused() -> None:
    """An auto epoch too large for any unit (≥ 1e20) is rejected as out of range."""
    assert "out of range" in bad(1e20).detail
    assert "out of range" in bad(1e300).detail


def test_huge_integer_epoch_is_a_payload_error() -> None:
    """An integer too large for a float is rejected as bad_timestamp, not an OverflowError."""
    bad(10**400)


def test_far_future_is_refused_by_check_not_future() -> None:
    """check_not_future rejects a timestamp more than max_future_s after the receive time."""
    now = T0_US
    check_not_future(now, now, 0)
    check_not_future(now + 86_400_000_000, now, 86_400)
    check_not_future(now - 10 * 86_400_000_000, now, 0)  # the past is always fine here
    with pytest.raises(PayloadError, match="future") as info:
        check_not_future(now + 86_400_000_001, now, 86_400)
    assert info.value.reason == "bad_timestamp"
    year_3000 = parse_timestamp("3000-01-01T00:00:00Z", "auto")
    with pytest.raises(PayloadError):
        check_not_future(year_3000, now, 86_400)


@pytest.mark.parametrize(
    ("ts_us", "text"),
    [
        (T0_US, "2024-11-15T08:00:00Z"),
        (T0_US + 250_000, "2024-11-15T08:00:00.250Z"),
        (T0_US + 1_000, "2024-11-15T08:00:00.001Z"),
        (T0_US + 123_456, "2024-11-15T08:00:00.123456Z"),
        (T0_US + 1, "2024-11-15T08:00:00.000001Z"),
        (T0_US + 999_999, "2024-11-15T08:00:00.999999Z"),
        (946_684_800_000_000, "2000-01-01T00:00:00Z"),
    ],
)
def test_format_timestamp_uses_the_precision_the_value_has(ts_us: int, text: str) -> None:
    """Whole seconds format without fraction, whole ms with 3 digits, otherwise 6 digits; 'Z'."""
    assert format_timestamp(ts_us) == text


@pytest.mark.parametrize("ts_us", [T0_US, T0_US + 1, T0_US + 1_000, T0_US + 654_321])
def test_format_and_parse_round_trip(ts_us: int) -> None:
    """A formatted timestamp parses back to the same microseconds."""
    assert parse_timestamp(format_timestamp(ts_us), "iso8601") == ts_us
