"""Capped exponential backoff with full jitter. Pure: randomness is injected."""

from __future__ import annotations

import math
import random
from collections.abc import Callable


class Backoff:
    """``delay = rng() * min(cap, base * 2**attempt)`` (the "full jitter" scheme).

    Full jitter spreads the retries of many clients over the whole window, so a recovering
    broker or API is not hit by a synchronized wave.
    """

    def __init__(self, base: float, cap: float, rng: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng
        self.attempt = 0

    def next_delay(self) -> float:
        """Delay before the next attempt; each call widens the window up to the cap."""
        window = min(self.cap, math.ldexp(self.base, min(self.attempt, 62)))
        self.attempt += 1
        return self._rng() * window

    def reset(self) -> None:
        """Start over after a success."""
        self.attempt = 0
