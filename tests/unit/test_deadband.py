"""The deadband decision (bridge.deadband.decide): which values of a series are worth a point."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.deadband import Sent, decide, describe, label
from bridge.models import Deadband

S = 1_000_000  # one second, in µs
T0 = 1_795_680_000_000_000

values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
bands = st.floats(1e-3, 1e3, allow_nan=False)
gaps = st.integers(0, 120 * S)  # between messages of one series


def absolute(band: float, heartbeat_s: int = 3600) -> Deadband:
    return Deadband("absolute", band, heartbeat_s * S)


def run(band: Deadband, points: list[tuple[int, float]]) -> list[bool]:
    """Decide a series in order; whether each point was sent."""
    state: Sent | None = None
    sent = []
    for ts, value in points:
        send, state = decide(state, value, ts, band)
        sent.append(send)
    return sent


def series(deltas: list[tuple[int, float]]) -> list[tuple[int, float]]:
    ts = T0
    out = []
    for gap, value in deltas:
        ts += gap
        out.append((ts, value))
    return out


@given(last=values, delta=values, band=bands, kind=st.sampled_from(["absolute", "relative"]))
def test_a_value_that_left_the_band_is_always_sent(
    last: float, delta: float, band: float, kind: str
) -> None:
    """Whatever the state, a value further from the last sent one than the band is sent, and
    becomes the new state."""
    d = Deadband(kind, band, 3600 * S)
    limit = band if kind == "absolute" else band * abs(last)
    value = last + delta
    if abs(value - last) <= limit:
        return  # within the band: the other tests cover it
    send, after = decide(Sent(last, T0), value, T0 + S, d)
    assert send
    assert after == Sent(value, T0 + S)


@given(last=values, band=bands, kind=st.sampled_from(["absolute", "relative"]))
def test_a_value_within_the_band_is_held_back(last: float, band: float, kind: str) -> None:
    """A value that moved less than the band, before the heartbeat, is held back and leaves the
    state as it was."""
    d = Deadband(kind, band, 3600 * S)
    room = band if kind == "absolute" else band * abs(last)
    value = last + room / 2
    if value == last and room:  # the half band rounds away at this magnitude
        return
    send, after = decide(Sent(last, T0), value, T0 + 60 * S, d)
    assert (send, after) == (False, Sent(last, T0))


# No deadline: an example's time says how busy the machine is, not whether the rule holds.
@settings(deadline=None)
@given(
    deltas=st.lists(st.tuples(gaps, st.floats(20, 21, allow_nan=False)), min_size=1),
    heartbeat_s=st.integers(1, 600),
)
def test_the_gap_between_sent_points_never_exceeds_the_heartbeat(
    deltas: list[tuple[int, float]], heartbeat_s: int
) -> None:
    """A held-back point is always less than a heartbeat after the last sent one: while
    messages keep coming, sent points are at most a heartbeat plus one message gap apart."""
    band = absolute(1000.0, heartbeat_s)  # nothing ever leaves this band: only heartbeats send
    points = series(deltas)
    sent = run(band, points)
    assert sent[0]
    last_sent = points[0][0]
    for (ts, _v), was_sent in zip(points, sent, strict=True):
        if was_sent:
            last_sent = ts
        else:
            assert ts - last_sent < heartbeat_s * S
    sent_ts = [ts for (ts, _v), s in zip(points, sent, strict=True) if s]
    biggest_gap = max(g for g, _v in deltas[1:]) if len(deltas) > 1 else 0
    assert all(b - a <= heartbeat_s * S + biggest_gap for a, b in itertools.pairwise(sent_ts))


@given(
    states=st.lists(st.tuples(st.integers(1, 60 * S), st.integers(0, 3)), min_size=1, max_size=60)
)
def test_on_change_sends_exactly_the_changes(states: list[tuple[int, int]]) -> None:
    """With on_change (and no heartbeat due) the points sent are the first and every one whose
    value differs from the one before it."""
    band = Deadband("on_change", 0.0, 7 * 86400 * S)
    points = series([(gap, float(v)) for gap, v in states])
    sent = run(band, points)
    changes = [i == 0 or points[i][1] != points[i - 1][1] for i in range(len(points))]
    assert sent == changes


def test_relative_band_is_a_share_of_the_last_sent_value() -> None:
    """relative: 0.02 holds back moves up to 2 % of the last sent value; from 0 any change goes."""
    band = Deadband("relative", 0.02, 3600 * S)
    assert run(band, series([(0, 100.0), (S, 101.9), (S, 102.1), (S, 104.0)])) == [
        True,
        False,
        True,
        False,  # 104.0 is within 2 % of 102.1, the last sent
    ]
    assert run(band, series([(0, 0.0), (S, 0.0), (S, 0.001)])) == [True, False, True]


def test_the_band_is_measured_from_the_last_sent_value_not_the_last_seen() -> None:
    """A slow drift is sent once it adds up to more than the band (no creeping past it)."""
    band = absolute(0.5)
    drift = series([(0, 20.0)] + [(S, 20.0 + 0.2 * i) for i in range(1, 6)])
    assert run(band, drift) == [True, False, False, True, False, False]


def test_the_heartbeat_counts_measurement_time() -> None:
    """An unchanged value is sent again once a heartbeat of measurement time has passed."""
    band = absolute(0.5, heartbeat_s=300)
    points = series([(0, 20.0), (299 * S, 20.0), (S, 20.0), (S, 20.0)])
    assert run(band, points) == [True, False, True, False]


def test_out_of_order_and_repeated_points_pass_without_moving_the_state() -> None:
    """A point older than the last sent one is sent (never dropped) and leaves the state; the
    last sent point again (a redelivery) is sent again, for the spool to store once."""
    band = absolute(0.5)
    state = Sent(20.0, T0)
    assert decide(state, 20.1, T0 - S, band) == (True, state)
    assert decide(state, 20.0, T0, band) == (True, state)
    # A different value at the same time is decided like any other.
    assert decide(state, 20.1, T0, band) == (False, state)
    assert decide(state, 21.0, T0, band) == (True, Sent(21.0, T0))
    assert decide(None, 5.0, T0, band) == (True, Sent(5.0, T0))


def test_description_says_what_the_band_does() -> None:
    """explain's words for each kind of band."""
    assert label(absolute(0.5)) == "±0.5"
    assert label(Deadband("relative", 0.02, S)) == "±2 %"
    assert label(Deadband("on_change", 0.0, S)) == "on change"
    assert describe(absolute(0.5, 300)) == (
        "a value is sent when it moves more than 0.5 from the last sent one, or 300 s after it "
        "anyway (measurement time)"
    )
