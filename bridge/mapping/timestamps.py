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

import math
from datetime import UTC, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Literal

from bridge.errors import PayloadError

TimestampFormat = Literal["auto", "iso8601", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns"]

# Each unit as a power of ten relative to microseconds: µs = floor(value * 10**shift).
_EPOCH_SHIFT = {"epoch_s": 6, "epoch_ms": 3, "epoch_us": 0, "epoch_ns": -3}
# Plausible epoch magnitudes for "now-ish" readings, used to tell seconds from milliseconds etc.
# 1e11 s is the year 5138, 1e14 ms the year 5138: anything below is read in the smaller unit.
_AUTO_BOUNDS = ((10**11, 6), (10**14, 3), (10**17, 0), (10**20, -3))
# Beyond every unit's range (1e21 ns is the year 33658): refused before any arithmetic.
_EPOCH_LIMIT = 10**21
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
        if isinstance(value, float):
            if not math.isfinite(value):
                raise PayloadError(
                    "bad_timestamp", f"epoch value {value!r} is not a positive number"
                )
            return _from_epoch(Decimal(repr(value)), fmt)  # the shortest text naming this float
        return _from_epoch(value, fmt)
    if isinstance(value, str):
        if fmt in ("auto", "iso8601"):
            if fmt == "auto" and (number := _decimal(value)) is not None:
                return _from_epoch(number, fmt)
            return _from_iso(value, tz)
        if (number := _decimal(value)) is not None:
            return _from_epoch(number, fmt)
        raise PayloadError("bad_timestamp", f"expected a number for {fmt}")
    raise PayloadError("bad_timestamp", f"unsupported type {type(value).__name__}")


def _decimal(text: str) -> Decimal | None:
    """The exact value of plain decimal text (``12``, ``-1.5``, ``.5``, ``1e9``), else None."""
    stripped = text.strip()
    # Underscores, NaN and infinity are valid for Decimal() but no device sends them as a time.
    if not stripped or "_" in stripped:
        return None
    first = stripped.lstrip("+-")[:1]
    if not (first.isdigit() or first == "."):
        return None
    try:
        number = Decimal(stripped)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _from_epoch(number: int | Decimal, fmt: TimestampFormat) -> int:
    if number <= 0:
        raise PayloadError(
            "bad_timestamp", f"epoch value {_shown(number)} is not a positive number"
        )
    if number >= _EPOCH_LIMIT:
        raise PayloadError("bad_timestamp", f"epoch value {_shown(number)} is out of range")
    if fmt == "auto":
        for bound, shift in _AUTO_BOUNDS:
            if number < bound:
                return _checked(_floor_scaled(number, shift))
        raise PayloadError("bad_timestamp", f"epoch value {_shown(number)} is out of range")
    us = _floor_scaled(number, _EPOCH_SHIFT[fmt])
    if us > _MAX_US:
        raise PayloadError("bad_timestamp", f"epoch value {_shown(number)} is out of range")
    return _checked(us)


def _floor_scaled(number: int | Decimal, shift: int) -> int:
    """``floor(number * 10**shift)`` exactly, for 0 < number < 1e21 (no float, no rounding)."""
    power: int = 10 ** abs(shift)  # typed: int ** int is Any to mypy (a negative power is a float)
    if isinstance(number, int):
        return number * power if shift >= 0 else number // power
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite: checked by the callers
    scale = exponent + shift
    if scale < 0:
        # Digits below the microsecond are dropped before int(): a 60 kB fraction stays cheap.
        digits = digits[:scale]
        scale = 0
    if not digits:
        return 0
    multiplier: int = 10**scale
    return int("".join(map(str, digits))) * multiplier


def _shown(number: int | Decimal) -> str:
    text = str(number)
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


def check_not_future(ts_us: int, now_us: int, max_future_s: float) -> None:
    """Reject readings stamped too far ahead of the receive time (device clock faults)."""
    if ts_us - now_us > max_future_s * 1_000_000:
        raise PayloadError("bad_timestamp", "timestamp is too far in the future")


def check_not_past(ts_us: int, now_us: int, max_past_s: float | None) -> None:
    """Reject readings stamped longer than ``max_past_s`` before the receive time."""
    if max_past_s is not None and now_us - ts_us > max_past_s * 1_000_000:
        raise PayloadError("bad_timestamp", "timestamp is too far in the past")


def format_timestamp(ts_us: int) -> str:
    """Format epoch microseconds as ISO 8601 UTC with 'Z', at the precision the value has."""
    seconds, micros = divmod(ts_us, 1_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if micros == 0:
        return base + "Z"
    if micros % 1000 == 0:
        return f"{base}.{micros // 1000:03d}Z"
    return f"{base}.{micros:06d}Z"
