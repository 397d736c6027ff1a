"""Deadbands: whether a metric's new value is worth a data point.

Pure code (no I/O, no clock): the spool calls :func:`decide` for every point of a rule with a
deadband, against the last *sent* value of that device and metric, which it keeps in its
``deadband_state`` table in the same transaction as the records (:mod:`bridge.spool.deadband`).

The rules, in order:

- no sent value yet: send (a bridge that forgot the state sends one point too many, never one
  too few);
- older than the last sent value (out of order, or an MQTT redelivery of a message the state
  has moved past): send, and keep the state. Such a point is never dropped; at worst it is a
  point a first decision held back;
- the same timestamp and value as the last sent one: send. It is that point again (an MQTT
  redelivery after a crash), and the spool's record ids store it once;
- ``heartbeat_us`` of measurement time or more since the last sent one: send;
- otherwise send only if it moved out of the band: ``absolute``, by more than the band;
  ``relative``, by more than band times |last sent| (from 0, any change); ``on_change``, at all.

Measurement time, not the wall clock, drives the heartbeat, so a backlog replayed after an
outage is decided as it was measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.models import Deadband

KINDS = ("absolute", "relative", "on_change")


@dataclass(frozen=True, slots=True)
class Sent:
    """The last value sent for one device and metric, and its measurement time."""

    value: float
    ts_us: int


def moved(last: float, value: float, band: Deadband) -> bool:
    """Whether ``value`` is outside the band around ``last``."""
    if band.kind == "on_change":
        return value != last
    delta = abs(value - last)
    if band.kind == "relative":
        return delta > band.band * abs(last)
    return delta > band.band


def decide(last: Sent | None, value: float, ts_us: int, band: Deadband) -> tuple[bool, Sent | None]:
    """Send this point? Returns (send, the state after it)."""
    if last is None:
        return True, Sent(value, ts_us)
    if ts_us < last.ts_us:
        return True, last
    if ts_us == last.ts_us and value == last.value:
        return True, last
    if ts_us - last.ts_us >= band.heartbeat_us or moved(last.value, value, band):
        return True, Sent(value, ts_us)
    return False, last


def describe(band: Deadband) -> str:
    """One line on what the band does, for ``explain`` and the logs."""
    heartbeat = f"{band.heartbeat_us / 1_000_000:g} s"
    if band.kind == "on_change":
        what = "a value is sent when it differs from the last sent one"
    elif band.kind == "relative":
        what = (
            f"a value is sent when it moves more than {band.band * 100:g} % of the last sent "
            "one from it"
        )
    else:
        what = f"a value is sent when it moves more than {band.band:g} from the last sent one"
    return f"{what}, or {heartbeat} after it anyway (measurement time)"


def label(band: Deadband) -> str:
    """Short form of the band: ``±0.5``, ``±2 %`` or ``on change``."""
    if band.kind == "on_change":
        return "on change"
    if band.kind == "relative":
        return f"±{band.band * 100:g} %"
    return f"±{band.band:g}"
