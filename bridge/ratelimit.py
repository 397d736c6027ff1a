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


class Pacer:
    """When the next request may go: the token bucket at this bridge's rate, and a pause that
    every request slot shares after a 429. Pure: time is an argument.

    The rate follows AIMD: a 429 halves it (the bridge, or its replicas together, asked too
    much), each accepted request adds back a fiftieth of the ceiling.
    """

    def __init__(self, pace: Pacing, now: float) -> None:
        self._bucket = TokenBucket(pace.start, burst=pace.burst, now=now)
        self._ceiling = pace.ceiling
        self._floor = min(pace.start, 1.0 / 60.0)  # at least one request a minute
        self._not_before = 0.0

    @property
    def rate(self) -> float:
        """Requests per second now."""
        return self._bucket.rate

    def delay(self, now: float) -> float:
        """Seconds until a request may go (0: take a turn with :meth:`take`)."""
        return max(self._not_before - now, self._bucket.delay(now))

    def take(self, now: float) -> bool:
        """Take a turn if one is free now."""
        return self._not_before <= now and self._bucket.take(now)

    def rate_limited(self, now: float, wait: float) -> float:
        """The API answered 429 asking to wait ``wait`` seconds (capped at
        :data:`MAX_RETRY_AFTER_S`): no slot sends before then, and the rate is halved.
        Returns the seconds this added to the shared pause."""
        wait = min(wait, MAX_RETRY_AFTER_S)
        added = max(0.0, now + wait - max(self._not_before, now))
        self._not_before = max(self._not_before, now + wait)
        self._bucket.rate = max(self._floor, self._bucket.rate / 2)
        return added

    def accepted(self) -> bool:
        """A request was accepted: recover towards the ceiling. True if the rate changed."""
        if self._bucket.rate >= self._ceiling:
            return False
        self._bucket.rate = min(self._ceiling, self._bucket.rate + self._ceiling / 50)
        return True
