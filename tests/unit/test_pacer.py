"""The :class:`~bridge.ratelimit.Pacer` with fake time: Retry-After pauses, one halving per run
of 429s, and recovery to the bridge's share within a few Retry-After periods once 2xx return."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bridge.ratelimit import MAX_RETRY_AFTER_S, Pacer, TokenBucket, pacing

# An answer of the fake API to a request sent at a time: None for a 2xx, else a 429 with this
# Retry-After (itself None when the header is missing).
Answer = Callable[[float], tuple[bool, float | None]]


def storm(until: float, retry_after: float | None) -> Answer:
    """429 with ``retry_after`` for every request sent before ``until``, then 2xx."""
    return lambda t: (True, retry_after) if t < until else (False, None)


def drive(
    pacer: Pacer, answer: Answer, start: float, end: float
) -> list[tuple[float, bool, float]]:
    """Send as the delivery loop does, one request at a time with instant answers, from
    ``start`` to ``end``; returns (send time, was it a 429, the rate then) of every request."""
    sent: list[tuple[float, bool, float]] = []
    now = start
    while now < end:
        wait = pacer.delay(now)
        if wait > 0:
            now += wait + 1e-9  # a float residue of 1e-16 s would not move the clock
            continue
        assert pacer.take(now)
        limited, retry_after = answer(now)
        sent.append((now, limited, pacer.rate))
        if limited:
            pacer.rate_limited(now, retry_after, fallback=0.5)
        else:
            pacer.accepted(now)
    return sent


def test_pacer_never_allows_a_request_before_retry_after() -> None:
    """After a 429 asking for 30 s no turn is given before then; a shorter later answer does
    not shorten the pause; the wait is capped at MAX_RETRY_AFTER_S; without a Retry-After the
    fallback wait applies."""
    pacer = Pacer(pacing(6000.0), now=0.0)
    assert pacer.take(0.0)
    assert pacer.rate_limited(10.0, 30.0) == 30.0
    assert pacer.delay(10.0) == 30.0
    assert pacer.rate_limited(11.0, 1.0) == 0.0  # inside the pause: adds nothing
    assert pacer.delay(39.99) == pytest.approx(0.01)
    assert not pacer.take(39.99)
    assert pacer.take(40.0)
    assert pacer.rate_limited(50.0, 1e9) == MAX_RETRY_AFTER_S
    assert not pacer.take(50.0 + MAX_RETRY_AFTER_S - 0.001)
    later = 100.0 + MAX_RETRY_AFTER_S
    assert pacer.rate_limited(later, None, fallback=2.5) == 2.5


def test_a_storm_of_many_429s_halves_the_rate_once() -> None:
    """Fifty 429s in a row (no 2xx between them) halve the rate once, not fifty times; the
    first 429 after a 2xx starts a new run and halves it again."""
    pace = pacing(120.0)
    pacer = Pacer(pace, now=0.0)
    sent = drive(pacer, storm(until=1e9, retry_after=0.0), 0.0, 60.0)
    assert sum(limited for _, limited, _ in sent) >= 50
    assert pacer.rate == pytest.approx(pace.start / 2)
    pacer.accepted(61.0)
    before = pacer.rate
    pacer.rate_limited(61.5, 1.0)
    pacer.rate_limited(61.6, 1.0)
    assert pacer.rate == pytest.approx(before / 2)


def test_after_a_429_storm_the_rate_is_back_at_the_share_within_a_few_retry_after_periods() -> None:
    """A 20 s storm answering 429 with Retry-After: 2 s: one Retry-After period after the first
    2xx the pacer is back at its share, and the following minute sends a full share of
    requests (none refused); it never goes above the share."""
    pace = pacing(120.0)
    pacer = Pacer(pace, now=0.0)
    sent = drive(pacer, storm(until=20.0, retry_after=2.0), 0.0, 100.0)
    assert sum(limited for _, limited, _ in sent) >= 8  # a storm, not a single 429
    first_2xx = next(t for t, limited, _ in sent if not limited)
    assert first_2xx < 22.0 + 1e-6  # the last Retry-After honoured, and no later
    assert not any(limited for t, limited, _ in sent if t >= first_2xx)
    assert all(rate <= pace.start for _, _, rate in sent)
    assert {rate for t, _, rate in sent[1:] if t <= first_2xx} == {pace.start / 2}
    assert {rate for t, _, rate in sent if t >= first_2xx + 2.0} == {pace.start}
    minute = [t for t, _, _ in sent if first_2xx + 4.0 <= t < first_2xx + 64.0]
    assert 60 * pace.start - 1 <= len(minute) <= 60 * pace.start + pace.burst


def test_the_rate_doubles_every_retry_after_period_up_to_the_share_and_not_beyond() -> None:
    """Three runs of 429s, each ended by one 2xx, leave the rate below a quarter of the share;
    from the last 2xx it doubles once per period (the last Retry-After, 5 s) and stops at the
    share."""
    pace = pacing(600.0)
    pacer = Pacer(pace, now=0.0)
    for t in (0.0, 1.0, 2.0):
        pacer.rate_limited(t, 0.0)
        pacer.rate_limited(t + 0.1, 5.0)
        pacer.accepted(t + 0.5)
    low = pacer.rate
    assert low < pace.start / 4
    # Recovery runs from the last 2xx (2.5 s) on: doublings at 7.5, 12.5 and 17.5 s.
    expected = {7.49: low, 7.5: 2 * low, 12.5: 4 * low, 17.49: 4 * low, 17.5: pace.start}
    for t, rate in {**expected, 1000.0: pace.start}.items():
        assert pacer.rate_at(t) == pytest.approx(rate), t
    assert pacer.rate == low  # rate_at changed nothing
    pacer.take(1000.0)
    assert pacer.rate == pytest.approx(pace.start)
    pacer.accepted(1001.0)
    assert pacer.rate == pytest.approx(pace.start)  # static split: the share is the ceiling


@pytest.mark.parametrize(
    ("retry_after", "period"), [(None, 1.0), (0.0, 1.0), (0.2, 1.0), (3.0, 3.0), (3600.0, 60.0)]
)
def test_the_recovery_period_is_the_last_retry_after_between_a_second_and_a_minute(
    retry_after: float | None, period: float
) -> None:
    """The rate doubles one period after the first 2xx: the last Retry-After, at least 1 s
    (also when the header is missing) and at most 60 s."""
    pace = pacing(600.0)
    pacer = Pacer(pace, now=0.0)
    pacer.rate_limited(0.0, 30.0)
    pacer.rate_limited(0.0, retry_after, fallback=0.5)
    pacer.accepted(10.0)
    assert pacer.rate_at(10.0 + period - 1e-6) == pytest.approx(pace.start / 2 + pace.start / 50)
    assert pacer.rate_at(10.0 + period) == pytest.approx(pace.start)


def test_each_accepted_request_also_adds_a_fiftieth_of_the_share() -> None:
    """Between doublings each 2xx adds a fiftieth of the share, so one long Retry-After does
    not hold the rate at half for its whole length."""
    pace = pacing(120.0)
    pacer = Pacer(pace, now=0.0)
    pacer.rate_limited(0.0, 60.0)
    for i in range(25):
        pacer.accepted(60.0 + i)
    assert pacer.rate == pytest.approx(pace.start)
    assert pacer.rate_at(120.0) == pytest.approx(pace.start)


def test_a_429_during_recovery_halves_again_and_waits_for_the_next_2xx() -> None:
    """Recovery stops at a new 429 (a new run: halved once more) and starts over, a period
    after the next 2xx."""
    pace = pacing(600.0)
    pacer = Pacer(pace, now=0.0)
    for t in (0.0, 1.0):
        pacer.rate_limited(t, 0.0)
        pacer.accepted(t + 0.5)
    before = pacer.rate
    pacer.rate_limited(2.0, 4.0)  # before the doubling due at 2.5 s
    assert pacer.rate == pytest.approx(before / 2)
    assert pacer.rate_at(100.0) == pytest.approx(before / 2)  # no 2xx yet: no recovery
    pacer.accepted(100.0)
    after = pacer.rate
    assert pacer.rate_at(103.9) == pytest.approx(after)
    assert pacer.rate_at(104.0) == pytest.approx(2 * after)


def test_a_waiting_slot_wakes_at_the_doubling() -> None:
    """While the bucket is empty at about half the rate, the wait never reaches past the next
    doubling, and from then on turns come at the full rate."""
    pace = pacing(60.5)  # one request a second
    pacer = Pacer(pace, now=0.0)
    pacer.rate_limited(0.0, 0.0)
    pacer.accepted(0.0)  # 0.52 requests a second; doubling due at 1 s
    assert pacer.take(0.0)  # the burst
    assert pacer.delay(0.0) == pytest.approx(1.0)  # not 1 / 0.52 s
    assert not pacer.take(0.999)
    # 0.52 of a token accrued by 1 s; the rest comes at the full rate.
    assert pacer.delay(1.0) == pytest.approx(0.48)
    assert pacer.take(1.48)


def test_adaptive_pacing_recovers_to_the_share_by_doubling_then_probes_to_the_ceiling() -> None:
    """With the adaptive split, doubling brings the rate back to the share only; above it each
    2xx adds a fiftieth of the ceiling (the whole budget), never beyond it."""
    pace = pacing(600.0, 3, adaptive=True)
    pacer = Pacer(pace, now=0.0)
    pacer.rate_limited(0.0, 1.0)
    pacer.accepted(1.0)
    assert pacer.rate_at(2.0) == pytest.approx(pace.start)
    pacer.accepted(2.0)
    assert pacer.rate == pytest.approx(pace.start + pace.ceiling / 50)
    t = 3.0
    while pacer.rate < pace.ceiling:
        pacer.accepted(t)
        t += 1.0
    assert pacer.rate == pytest.approx(pace.ceiling)
    pacer.rate_limited(t, 1.0)  # half the budget is more than the share: no doubling
    pacer.accepted(t + 1.0)
    assert pacer.rate == pytest.approx(pace.ceiling / 2 + pace.ceiling / 50)
    assert pacer.rate_at(t + 1000.0) == pacer.rate


def test_the_rate_never_falls_below_one_request_a_minute() -> None:
    """Runs of 429s, each ended by a single 2xx, halve the rate each time, down to one request
    a minute."""
    pacer = Pacer(pacing(30.0), now=0.0)
    for i in range(40):
        pacer.rate_limited(float(i), 0.0)
        pacer.accepted(i + 0.5)
        pacer.rate_limited(i + 0.6, 0.0)
    assert pacer.rate == pytest.approx(1 / 60)


def test_token_bucket_set_rate_keeps_what_accrued_at_the_old_rate() -> None:
    """Tokens accrued before a rate change accrued at the old rate."""
    bucket = TokenBucket(rate=1.0, burst=1, now=0.0)
    assert bucket.take(0.0)
    bucket.set_rate(4.0, 0.5)  # half a token by then
    assert bucket.delay(0.5) == pytest.approx(0.125)
