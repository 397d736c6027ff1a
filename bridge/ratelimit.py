"""Client-side pacing for the API: a token bucket. Pure: time is an argument."""

from __future__ import annotations


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
