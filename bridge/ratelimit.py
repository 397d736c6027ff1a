"""Client-side pacing for the API: a token bucket, the rates it runs at, and the pacer that
honours 429s. Pure: time is an argument."""

from __future__ import annotations

from dataclasses import dataclass

# The API counts requests in a sliding 60 s window as they arrive. Pacing over a slightly
# longer window leaves room for network jitter to bunch arrivals together.
PACING_GUARD_S = 0.5


@dataclass(frozen=True, slots=True)
class Pacing:
    """Requests per second to start at, the most to recover to after 429s, and the burst."""

    start: float
    ceiling: float
    burst: float


def pacing(requests_per_minute: float, replicas: int = 1, *, adaptive: bool = False) -> Pacing:
    """This bridge's pacing when ``replicas`` bridges share ``requests_per_minute``.

    Static: each paces at its share. Adaptive: each starts at its share and may recover (after
    a 429 halved it) up to the whole budget, so a bridge whose partners are idle or down uses
    what they leave; the 429s of a crowded window pull all of them back under the budget.
    The burst may use half of the guard's room (any 60 s then holds at most burst + 60 * rate
    requests), so a slot that wakes a little late does not waste its turn.
    """
    share = requests_per_minute / replicas
    start = share / (60.0 + PACING_GUARD_S)
    ceiling = (requests_per_minute if adaptive else share) / (60.0 + PACING_GUARD_S)
    burst = max(1.0, min(2.0, share * PACING_GUARD_S / 120.0))
    return Pacing(start, ceiling, burst)


class TokenBucket:
    """Allows ``rate`` requests per second on average with bursts up to ``burst``.

    Pacing here keeps the bridge from being the cause of a 429 (the API allows 1,000 telemetry
    requests per minute per organization).
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate from ``now`` on; what accrued until then accrued at the old rate."""
        self._refill(now)
        self.rate = rate

    def delay(self, now: float) -> float:
        """Seconds until one token is available (0 if one is available now)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self, now: float) -> bool:
        """Take one token if available."""
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


MAX_RETRY_AFTER_S = 3600.0  # a Retry-After of days is a server bug; data must not wait forever
# After a run of 429s the rate doubles once every recovery period: the last Retry-After, at
# least a second (none, 0 or unreadable means 1 s) and at most a minute, the API's window: a
# minute at half the rate leaves no trace of the overload in what the API counts.
RECOVERY_PERIOD_MIN_S = 1.0
RECOVERY_PERIOD_MAX_S = 60.0


class Pacer:
    """When the next request may go: the token bucket at this bridge's rate, and a pause that
    every request slot shares after a 429. Pure: time is an argument.

    A run of 429s (429s with no 2xx between them) halves the rate once: every 429 of a storm
    answers the same overload, and halving on each would leave the bridge crawling long after
    the storm. Once 2xx answers return, the rate doubles every recovery period (the last
    Retry-After, 1 s to 60 s) until it is back at this bridge's share; each accepted request
    also adds a fiftieth of the ceiling, which keeps recovery quick after one long Retry-After
    and, with the adaptive budget split, probes above the share up to the ceiling.
    """

    def __init__(self, pace: Pacing, now: float) -> None:
        self._bucket = TokenBucket(pace.start, burst=pace.burst, now=now)
        self._share = pace.start
        self._ceiling = pace.ceiling
        self._floor = min(pace.start, 1.0 / 60.0)  # at least one request a minute
        self._not_before = 0.0
        self._limited = False  # in a run of 429s: no 2xx since the last one
        self._period = RECOVERY_PERIOD_MIN_S
        self._next_doubling: float | None = None  # set while recovering towards the share

    @property
    def rate(self) -> float:
        """Requests per second as of the last call."""
        return self._bucket.rate

    def rate_at(self, now: float) -> float:
        """Requests per second at ``now``, the doublings due by then included (changes
        nothing)."""
        rate, at = self._bucket.rate, self._next_doubling
        while at is not None and at <= now and rate < self._share:
            rate, at = min(self._share, 2 * rate), at + self._period
        return rate

    def _recover(self, now: float) -> None:
        """Apply the doublings due by ``now``, each at its own time (the bucket fills at the
        old rate until then)."""
        while self._next_doubling is not None and self._next_doubling <= now:
            at = self._next_doubling
            if self._bucket.rate < self._share:  # accepted requests may have got there first
                self._bucket.set_rate(min(self._share, 2 * self._bucket.rate), at)
            self._next_doubling = at + self._period if self._bucket.rate < self._share else None

    def delay(self, now: float) -> float:
        """Seconds until a request may go (0: take a turn with :meth:`take`); never past the
        next doubling, so that a waiting slot goes at the new rate."""
        self._recover(now)
        wait = self._bucket.delay(now)
        if self._next_doubling is not None:
            wait = min(wait, self._next_doubling - now)
        return max(self._not_before - now, wait)

    def take(self, now: float) -> bool:
        """Take a turn if one is free now."""
        self._recover(now)
        return self._not_before <= now and self._bucket.take(now)

    def rate_limited(self, now: float, retry_after: float | None, fallback: float = 0.0) -> float:
        """The API answered 429 asking to wait ``retry_after`` seconds (None: it did not say;
        wait ``fallback``), capped at :data:`MAX_RETRY_AFTER_S`: no slot sends before then. The
        first 429 of a run halves the rate; each sets the recovery period and stops recovery
        until a 2xx. Returns the seconds this added to the shared pause."""
        self._recover(now)
        wait = min(fallback if retry_after is None else retry_after, MAX_RETRY_AFTER_S)
        added = max(0.0, now + wait - max(self._not_before, now))
        self._not_before = max(self._not_before, now + wait)
        period = RECOVERY_PERIOD_MIN_S if retry_after is None else retry_after
        self._period = min(max(period, RECOVERY_PERIOD_MIN_S), RECOVERY_PERIOD_MAX_S)
        self._next_doubling = None
        if not self._limited:
            self._limited = True
            self._bucket.set_rate(max(self._floor, self._bucket.rate / 2), now)
        return added

    def accepted(self, now: float) -> None:
        """A request was accepted: a run of 429s ends and recovery starts (or goes on)."""
        self._recover(now)
        if self._bucket.rate < self._ceiling:
            self._bucket.set_rate(min(self._ceiling, self._bucket.rate + self._ceiling / 50), now)
        if self._limited and self._bucket.rate < self._share:
            self._next_doubling = now + self._period
        self._limited = False
