"""Timestamp parsing and formatting for points.

Points carry time as integer microseconds since the Unix epoch (UTC): exact, cheap to compare and
to hash, and wide enough for every form devices send.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, tzinfo
from typing import Literal

from bridge.errors import PayloadError

TimestampFormat = Literal["auto", "iso8601", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns"]

_EPOCH_SCALE = {"epoch_s": 1_000_000, "epoch_ms": 1_000, "epoch_us": 1, "epoch_ns": 0.001}
# Plausible epoch magnitudes for "now-ish" readings, used to tell seconds from milliseconds etc.
# 1e11 s is the year 5138, 1e14 ms the year 5138: anything below is read in the smaller unit.
_AUTO_BOUNDS = ((1e11, 1_000_000.0), (1e14, 1_000.0), (1e17, 1.0), (1e20, 0.001))
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
        try:
            number = float(value)
        except OverflowError:
            raise PayloadError("bad_timestamp", "epoch value is out of range") from None
        return _from_epoch(number, fmt)
    if isinstance(value, str):
        if fmt in ("auto", "iso8601"):
            if fmt == "auto" and _looks_numeric(value):
                return _from_epoch(float(value), fmt)
            return _from_iso(value, tz)
        if _looks_numeric(value):
            return _from_epoch(float(value), fmt)
        raise PayloadError("bad_timestamp", f"expected a number for {fmt}")
    raise PayloadError("bad_timestamp", f"unsupported type {type(value).__name__}")


def _looks_numeric(text: str) -> bool:
    stripped = text.strip()
    if not stripped or "_" in stripped:
        return False
    try:
        float(stripped)
    except ValueError:
        return False
    return stripped.lstrip("+-")[:1].isdigit() or stripped.lstrip("+-")[:1] == "."


def _from_epoch(number: float, fmt: TimestampFormat) -> int:
    if not math.isfinite(number) or number <= 0:
        raise PayloadError("bad_timestamp", f"epoch value {number!r} is not a positive number")
    if fmt == "auto":
        for bound, scale in _AUTO_BOUNDS:
            if number < bound:
                return _checked(round(number * scale))
        raise PayloadError("bad_timestamp", f"epoch value {number!r} is out of range")
    us = number * _EPOCH_SCALE[fmt]
    if not math.isfinite(us) or us > _MAX_US:
        raise PayloadError("bad_timestamp", f"epoch value {number!r} is out of range")
    return _checked(round(us))


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
