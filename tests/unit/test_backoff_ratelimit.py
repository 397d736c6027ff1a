"""Unit tests of retry pacing: full-jitter backoff, token bucket, Retry-After and LogThrottle."""

from __future__ import annotations

import email.utils
import logging
import random

import pytest

from bridge.api.http import parse_retry_after
from bridge.backoff import Backoff
from bridge.logs import LogThrottle
from bridge.ratelimit import TokenBucket, pacing
from tests.support.clock import FakeClock

NOW = 1_731_657_600.0  # 2024-11-15T08:00:00Z as a wall-clock time


# -- Backoff ----------------------------------------------------------------------------------


def test_backoff_window_doubles_up_to_the_cap() -> None:
    """With rng() = 1 the delays are the window: base * 2**attempt, capped."""
    backoff = Backoff(0.5, 10.0, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 10, 10, 10]
    assert backoff.attempt == 8


def test_backoff_is_full_jitter() -> None:
    """The delay is rng() times the window: 0 with rng() = 0, half the window with 0.5."""
    assert [Backoff(1.0, 60.0, rng=lambda: 0.0).next_delay() for _ in range(3)] == [0, 0, 0]
    half = Backoff(1.0, 60.0, rng=lambda: 0.5)
    assert [half.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]


def test_backoff_delays_stay_within_the_window_with_a_seeded_rng() -> None:
    """Every delay lies in [0, min(cap, base * 2**attempt)] and they are spread, not constant."""
    rng = random.Random(99)
    backoff = Backoff(0.25, 30.0, rng=rng.random)
    delays = []
    for attempt in range(200):
        delay = backoff.next_delay()
        assert 0.0 <= delay <= min(30.0, 0.25 * 2**attempt)
        delays.append(delay)
    late = delays[10:]
    # jitter spreads retries over the whole window
    assert max(late) > 20.0
    assert min(late) < 10.0


def test_backoff_reset_starts_over() -> None:
    """reset() after a success makes the next delay use the base window again."""
    backoff = Backoff(2.0, 100.0, rng=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 2.0


def test_backoff_survives_very_many_attempts() -> None:
    """Thousands of failures never overflow: the delay stays at the cap."""
    backoff = Backoff(0.5, 30.0, rng=lambda: 1.0)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 30.0


# -- TokenBucket ------------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_paces_at_the_rate() -> None:
    """A full bucket gives `burst` tokens at once, then one per 1/rate seconds."""
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.delay(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) is False
    assert bucket.delay(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) is True
    assert bucket.take(0.5) is False


def test_token_bucket_delay_is_zero_when_a_token_is_available() -> None:
    """delay() is 0 while tokens remain and does not consume one."""
    bucket = TokenBucket(rate=1.0, burst=2, now=0.0)
    assert bucket.delay(0.0) == 0.0
    assert bucket.delay(0.0) == 0.0
    assert bucket.take(0.0)
    assert bucket.take(0.0)
    assert bucket.delay(0.0) == pytest.approx(1.0)


def test_token_bucket_refill_is_capped_at_burst() -> None:
    """A long idle period refills the bucket only up to `burst`."""
    bucket = TokenBucket(rate=10.0, burst=5, now=0.0)
    for _ in range(5):
        bucket.take(0.0)
    taken = sum(bucket.take(3600.0) for _ in range(100))
    assert taken == 5


def test_token_bucket_ignores_a_clock_going_backwards() -> None:
    """A time earlier than the last one adds no tokens (and takes none away)."""
    bucket = TokenBucket(rate=1.0, burst=1, now=100.0)
    assert bucket.take(100.0)
    assert bucket.take(50.0) is False
    assert bucket.take(100.5) is False
    assert bucket.take(101.0) is True


def test_token_bucket_sustained_rate_matches_rate() -> None:
    """Following delay() for a simulated minute yields burst + rate * 60 requests."""
    clock = FakeClock(0.0)
    rate = 1000 / 60  # the API's 1,000 requests per minute
    bucket = TokenBucket(rate=rate, burst=10, now=clock())
    sent = 0
    while clock() < 60.0:
        wait = bucket.delay(clock())
        if wait > 0:
            clock.advance(wait + 1e-9)  # a float residue of 1e-16 s would not move the clock
            continue
        assert bucket.take(clock())
        sent += 1
    assert 10 + 1000 - 2 <= sent <= 10 + 1000 + 1


# -- Retry-After ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"), [("120", 120.0), (" 7 ", 7.0), ("0", 0.0), ("86400", 86400.0)]
)
def test_retry_after_delay_seconds(header: str, seconds: float) -> None:
    """A delay-seconds Retry-After is returned as seconds."""
    assert parse_retry_after(header, NOW) == seconds


def test_retry_after_http_date_in_the_future() -> None:
    """An HTTP-date in the future gives the seconds until then."""
    header = email.utils.formatdate(NOW + 90, usegmt=True)
    assert parse_retry_after(header, NOW) == pytest.approx(90.0)


@pytest.mark.parametrize(
    "header", ["Wed, 21 Oct 2015 07:28:00 GMT", email.utils.formatdate(NOW - 1, usegmt=True)]
)
def test_retry_after_http_date_in_the_past_means_now(header: str) -> None:
    """An HTTP-date in the past means retry immediately (0 seconds)."""
    assert parse_retry_after(header, NOW) == 0.0


@pytest.mark.parametrize(
    "header",
    ["", "soon", "-1", "1.5", "1e3", "Wed, 21 Oct 2015 07:28:00", "Wed, 32 Foo 2015 GMT", "0x10"],
)
def test_retry_after_garbage_is_none(header: str) -> None:
    """Unreadable values (and dates without a zone) give None, not an exception."""
    assert parse_retry_after(header, NOW) is None


def test_retry_after_absent_is_none() -> None:
    """No header gives None."""
    assert parse_retry_after(None, NOW) is None


@pytest.mark.parametrize("header", ["²", "1²", "①"])
def test_retry_after_unicode_digits_are_none(header: str) -> None:
    """Non-ASCII 'digits' in Retry-After are unreadable (None), never an exception."""
    assert parse_retry_after(header, NOW) is None


# -- LogThrottle ------------------------------------------------------------------------------

LOGGER = logging.getLogger("tests.unit.throttle")


def test_log_throttle_logs_once_per_interval_with_the_repeat_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Within the interval repeats are suppressed; the next line reports how many there were."""
    clock = FakeClock()
    throttle = LogThrottle(interval=30.0, clock=clock)
    caplog.set_level(logging.WARNING, logger=LOGGER.name)
    written = []
    for _ in range(6):  # t = 0, 5, ..., 25: one line, five repeats
        written.append(throttle.log(LOGGER, logging.WARNING, "api", "API down: %s", "refused"))
        clock.advance(5.0)
    assert written == [True, False, False, False, False, False]
    assert throttle.log(LOGGER, logging.WARNING, "api", "API down: %s", "refused")  # t = 30
    clock.advance(1.0)
    throttle.log(LOGGER, logging.WARNING, "api", "API down: %s", "refused")
    clock.advance(29.0)
    throttle.log(LOGGER, logging.WARNING, "api", "API down: %s", "refused")  # t = 60
    clock.advance(30.0)
    throttle.log(LOGGER, logging.WARNING, "api", "API down: %s", "refused")  # t = 90
    assert [r.getMessage() for r in caplog.records] == [
        "API down: refused",
        "API down: refused (repeated 5 times since last report)",
        "API down: refused (repeated 1 times since last report)",
        "API down: refused",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_log_throttle_keys_are_independent(caplog: pytest.LogCaptureFixture) -> None:
    """Each key has its own interval and count."""
    clock = FakeClock()
    throttle = LogThrottle(interval=10.0, clock=clock)
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    assert throttle.log(LOGGER, logging.INFO, "a", "a failed")
    assert throttle.log(LOGGER, logging.INFO, "b", "b failed")
    assert not throttle.log(LOGGER, logging.INFO, "a", "a failed")
    clock.advance(10.0)
    assert throttle.log(LOGGER, logging.INFO, "b", "b failed")
    assert [r.getMessage() for r in caplog.records] == ["a failed", "b failed", "b failed"]


def test_log_throttle_keeps_percent_style_arguments_out_of_the_format(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Arguments holding '%' or '{}' are logged verbatim, not interpreted as formats."""
    clock = FakeClock()
    throttle = LogThrottle(interval=1.0, clock=clock)
    caplog.set_level(logging.ERROR, logger=LOGGER.name)
    throttle.log(LOGGER, logging.ERROR, "k", "bad topic %r", "a/%s/{x}")
    throttle.log(LOGGER, logging.ERROR, "k", "bad topic %r", "a/%s/{x}")
    clock.advance(1.0)
    throttle.log(LOGGER, logging.ERROR, "k", "bad topic %r", "a/%d/{y}")
    assert [r.getMessage() for r in caplog.records] == [
        "bad topic 'a/%s/{x}'",
        "bad topic 'a/%d/{y}' (repeated 1 times since last report)",
    ]


def test_pacing_splits_the_budget_statically_or_adaptively() -> None:
    """Static: each of N replicas paces at budget/N and never above. Adaptive: it starts at
    budget/N and may recover up to the whole budget after 429s halved it."""
    single = pacing(1000.0)
    assert single.start == single.ceiling == pytest.approx(1000.0 / 60.5)
    static = pacing(1000.0, 3)
    assert static.start == static.ceiling == pytest.approx(1000.0 / 3 / 60.5)
    adaptive = pacing(1000.0, 3, adaptive=True)
    assert adaptive.start == pytest.approx(1000.0 / 3 / 60.5)
    assert adaptive.ceiling == pytest.approx(1000.0 / 60.5)
    # Together, N static replicas stay under the budget in any 60 s window, bursts included.
    assert 3 * (static.burst + 60 * static.ceiling) <= 1000.0
    assert 1.0 <= static.burst <= 2.0
