"""Timestamp parsing and formatting for points.

Points carry time as integer microseconds since the Unix epoch (UTC): exact, cheap to compare and
to hash, and wide enough for every form devices send.

One rounding rule for every form: finer digits are truncated (toward the past) to the microsecond.
Epoch numbers are read with integer arithmetic on their decimal text, never through a float (a
float has only ~256 ns steps at nanosecond magnitudes and rounded ``…20.9999996`` into the next
second), and ISO 8601 fractions of any length are truncated by ``datetime.fromisoformat`` the same
way, so one instant gives one timestamp in every form. Truncation, not rounding, because a reading
then never moves into the next second, minute or day, and truncating ns → µs → s equals ns → s.
A JSON number with a fraction is already a float once parsed; it is read through its shortest
decimal text (``repr``), which is the digits the device sent whenever the float can hold them
(seconds with up to 6 fraction digits before the year 2242, milliseconds with up to 3).
"""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Literal

from bridge.errors import PayloadError

TimestampFormat = Literal["auto", "iso8601", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns"]

# Epoch numbers are carried as exact integer millionths of their unit, floor(value * 1e6): the
# finest unit a device may use with a fraction (seconds) then still resolves the microsecond.
_SCALE = 1_000_000
# Per unit, what divides millionths into microseconds (µs = millionths // divisor).
_DIVISOR = {"epoch_s": 1, "epoch_ms": 1_000, "epoch_us": 1_000_000, "epoch_ns": 1_000_000_000}
# Plausible epoch magnitudes for "now-ish" readings, used to tell seconds from milliseconds etc.
# 1e11 s is the year 5138, 1e14 ms the year 5138: anything below is read in the smaller unit.
_AUTO_BOUNDS = tuple(
    (bound * _SCALE, _DIVISOR[unit])
    for bound, unit in (
        (10**11, "epoch_s"),
        (10**14, "epoch_ms"),
        (10**17, "epoch_us"),
        (10**20, "epoch_ns"),
    )
)
# Beyond every unit's range (1e21 ns is the year 33658): refused before any big arithmetic.
_LIMIT = 10**21 * _SCALE
_LIMIT_DIGITS = 22  # whole-number digits of anything below 1e21
# A plain decimal: optional sign, ASCII digits, optional fraction. Others go through Decimal.
_PLAIN = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?")
_MIN_US = 946_684_800 * 1_000_000  # 2000-01-01T00:00:00Z: older readings are clock faults
_MAX_US = 253_402_300_799 * 1_000_000  # 9999-12-31T23:59:59Z: the last time ISO 8601 can write


def parse_timestamp(
    value: object, fmt: TimestampFormat, tz: tzinfo | None = None, pattern: str | None = None
) -> int:
    """Parse a payload timestamp into epoch microseconds.

    Args:
        value: the raw field value.
        fmt: how to read numbers and strings (``auto`` decides by type and magnitude).
        tz: zone for zone-less ISO 8601 strings and patterns; without it they are refused.
        pattern: a ``strptime`` pattern for strings such as ``26.11.2026 08:32:00``.

    Raises:
        PayloadError: with reason ``bad_timestamp`` for anything not understood.
    """
    if pattern is not None:
        if not isinstance(value, str):
            raise PayloadError("bad_timestamp", f"expected a string like {pattern!r}")
        try:
            parsed = datetime.strptime(value.strip(), pattern)  # the zone is applied below
        except ValueError:
            raise PayloadError("bad_timestamp", f"does not match {pattern!r}") from None
        return _from_datetime(parsed, tz)
    if isinstance(value, bool):
        raise PayloadError("bad_timestamp", "boolean is not a timestamp")
    if isinstance(value, int | float):
        if fmt == "iso8601":
            raise PayloadError("bad_timestamp", "expected an ISO 8601 string")
        if isinstance(value, int):
            return _from_epoch(value * _SCALE, fmt, value)
        # A float is read through its shortest text (repr): the digits sent, where it holds them.
        # NaN and infinity have no such text (-1: refused as not positive, as before).
        return _from_epoch(_millionths(repr(value)) or -1, fmt, value)
    if isinstance(value, str):
        if fmt in ("auto", "iso8601"):
            if fmt == "auto" and (number := _millionths(value)) is not None:
                return _from_epoch(number, fmt, value)
            return _from_iso(value, tz)
        if (number := _millionths(value)) is not None:
            return _from_epoch(number, fmt, value)
        raise PayloadError("bad_timestamp", f"expected a number for {fmt}")
    raise PayloadError("bad_timestamp", f"unsupported type {type(value).__name__}")


def _millionths(text: str) -> int | None:
    """``floor(number * 1e6)`` of decimal text, exactly (no float), or None if not a number."""
    stripped = text.strip()
    plain = _PLAIN.fullmatch(stripped)
    if plain is None:
        return _millionths_of_decimal(stripped)  # exponents, non-ASCII digits
    sign, whole, fraction = plain.group(1), plain.group(2).lstrip("0"), plain.group(3) or ""
    if not (plain.group(2) or fraction):
        return None  # "", "+", "."
    if len(whole) > _LIMIT_DIGITS:
        return _LIMIT if sign != "-" else -1  # out of range: no int() of a long digit string
    # Digits below the millionth are dropped here: floor for a positive value, one rule.
    number = int(whole or "0") * _SCALE + int((fraction + "00000")[:6] or "0")
    return -number if sign == "-" else number


def _millionths_of_decimal(text: str) -> int | None:
    # Underscores, NaN and infinity are valid for Decimal() but no device sends them as a time.
    if not text or "_" in text:
        return None
    first = text.lstrip("+-")[:1]
    if not (first.isdigit() or first == "."):
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    if number.adjusted() >= _LIMIT_DIGITS:
        return _LIMIT if number > 0 else -1  # before any power of ten of a huge exponent
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite
    scale = exponent + 6
    if scale < 0:
        digits = digits[:scale]  # below the millionth: dropped before int(), cheap at any length
        scale = 0
    multiplier: int = 10**scale
    magnitude = int("".join(map(str, digits)) or "0") * multiplier
    return -magnitude if sign else magnitude


def _from_epoch(millionths: int, fmt: TimestampFormat, value: object) -> int:
    if millionths <= 0:
        raise PayloadError("bad_timestamp", f"epoch value {_shown(value)} is not a positive number")
    if millionths >= _LIMIT:
        raise PayloadError("bad_timestamp", f"epoch value {_shown(value)} is out of range")
    if fmt == "auto":
        for bound, divisor in _AUTO_BOUNDS:
            if millionths < bound:
                return _checked(millionths // divisor)
        raise PayloadError("bad_timestamp", f"epoch value {_shown(value)} is out of range")
    us = millionths // _DIVISOR[fmt]
    if us > _MAX_US:
        raise PayloadError("bad_timestamp", f"epoch value {_shown(value)} is out of range")
    return _checked(us)


def _shown(value: object) -> str:
    if isinstance(value, int) and value.bit_length() > 128:
        return "(a number too large to be a time)"  # str() of a huge int is slow or refused
    text = repr(value) if isinstance(value, float) else str(value).strip()
    return text if len(text) <= 40 else text[:37] + "..."


def _from_iso(text: str, tz: tzinfo | None = None) -> int:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise PayloadError("bad_timestamp", "not an ISO 8601 timestamp") from None
    return _from_datetime(parsed, tz)


def _from_datetime(parsed: datetime, tz: tzinfo | None) -> int:
    if parsed.tzinfo is None:
        if tz is None:
            # A zone-less time is ambiguous (plant local time? UTC?); refusing beats guessing.
            # A rule can name the zone with timestamp.timezone.
            raise PayloadError("bad_timestamp", "timestamp has no time zone")
        parsed = parsed.replace(tzinfo=tz)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return _checked((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _checked(us: int) -> int:
    if us < _MIN_US:
        raise PayloadError("bad_timestamp", "timestamp is before 2000-01-01")
    return us


def check_not_before_2000(ts_us: int) -> None:
    """Reject readings stamped before 2000 (a device clock that was never set), as parsed
    timestamps are; for times that arrive as numbers already (Sparkplug's)."""
    _checked(ts_us)


def check_not_future(ts_us: int, now_us: int, max_future_s: float) -> None:
    """Reject readings stamped too far ahead of the receive time (device clock faults)."""
    if ts_us - now_us > max_future_s * 1_000_000:
        raise PayloadError("bad_timestamp", "timestamp is too far in the future")


def check_not_past(ts_us: int, now_us: int, max_past_s: float | None) -> None:
    """Reject readings stamped longer than ``max_past_s`` before the receive time."""
    if max_past_s is not None and now_us - ts_us > max_past_s * 1_000_000:
        raise PayloadError("bad_timestamp", "timestamp is too far in the past")


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    # time's gmtime and strftime: 0.85 us against datetime's 2.15, once per object sent; the
    # objects of a request mostly share their seconds (a fleet's readings of one moment), so
    # the text of the recent seconds is kept: 0.17 us for one seen before.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_timestamp(ts_us: int) -> str:
    """Format epoch microseconds as ISO 8601 UTC with 'Z', at the precision the value has."""
    seconds, micros = divmod(ts_us, 1_000_000)
    base = _second(seconds)
    if micros == 0:
        return base + "Z"
    if micros % 1000 == 0:
        return f"{base}.{micros // 1000:03d}Z"
    return f"{base}.{micros:06d}Z"
