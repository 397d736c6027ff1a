"""The local API's rate limits: one sliding-window limiter per endpoint, as the contract's
"Rate limits" table has one limit per endpoint (:mod:`bridge.limits`).

Each endpoint counts its own requests: a burst of ``POST /alerts`` never uses up telemetry's
window. A refused request gets ``429`` with ``Retry-After`` in whole seconds, rounded up, so a
client that waits exactly that long is admitted.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from bridge.limits import (
    ALERTS_REQUESTS_PER_MINUTE,
    DEVICES_REQUESTS_PER_MINUTE,
    METRICS_REQUESTS_PER_MINUTE,
    TELEMETRY_REQUESTS_PER_MINUTE,
)

Endpoint = Literal["telemetry", "devices", "metrics", "alerts"]
ENDPOINTS: tuple[Endpoint, ...] = ("telemetry", "devices", "metrics", "alerts")
RATE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class EndpointLimits:
    """Admitted requests per window for each endpoint (None: no limit), and the window.

    The defaults are the contract's per-minute limits. Tests shrink ``window_s`` (a limit of 3
    per 1 s window answers ``Retry-After: 1``) so a 429 costs a second, not a minute.
    """

    telemetry: int | None = TELEMETRY_REQUESTS_PER_MINUTE
    devices: int | None = DEVICES_REQUESTS_PER_MINUTE
    metrics: int | None = METRICS_REQUESTS_PER_MINUTE
    alerts: int | None = ALERTS_REQUESTS_PER_MINUTE
    window_s: float = RATE_WINDOW_SECONDS

    def __post_init__(self) -> None:
        for name in ENDPOINTS:
            limit = self.of(name)
            if limit is not None and limit < 0:
                raise ValueError(f"the {name} rate limit must be >= 0 or None")
        if not self.window_s > 0:
            raise ValueError("the rate-limit window must be > 0 s")

    def of(self, endpoint: Endpoint) -> int | None:
        limit: int | None = getattr(self, endpoint)
        return limit

    def describe(self) -> str:
        """``telemetry 1000/60s, devices 300/60s, ...`` for the start-up line."""
        window = f"{self.window_s:g}s"
        return ", ".join(
            f"{name} {'none' if self.of(name) is None else f'{self.of(name)}/{window}'}"
            for name in ENDPOINTS
        )


class WindowLimiter:
    """Sliding window log: at most `limit` admitted requests in any `window_s` span."""

    def __init__(self, limit: int, window_s: float = RATE_WINDOW_SECONDS) -> None:
        self.limit = limit
        self._window = window_s
        self._admitted: deque[float] = deque()

    def admit(self, now: float) -> float | None:
        """Admits a request at `now`, or returns the seconds until one would be admitted."""
        while self._admitted and self._admitted[0] <= now - self._window:
            self._admitted.popleft()
        if len(self._admitted) < self.limit:
            self._admitted.append(now)
            return None
        if not self._admitted:  # limit 0: nothing ever gets in
            return self._window
        return self._admitted[0] + self._window - now


class Limiters:
    """One :class:`WindowLimiter` per limited endpoint."""

    def __init__(self, limits: EndpointLimits) -> None:
        self.limits = limits
        self._by_endpoint = {
            name: WindowLimiter(limit, limits.window_s)
            for name in ENDPOINTS
            if (limit := limits.of(name)) is not None
        }

    def refuse(self, endpoint: Endpoint, now: float) -> tuple[int, str] | None:
        """None when the request is admitted; else (``Retry-After`` seconds, message)."""
        limiter = self._by_endpoint.get(endpoint)
        if limiter is None:
            return None
        wait = limiter.admit(now)
        if wait is None:
            return None
        retry_after = max(1, math.ceil(wait))
        per = (
            "per minute"
            if self.limits.window_s == RATE_WINDOW_SECONDS
            else f"per {self.limits.window_s:g} s"
        )
        return retry_after, (
            f"Rate limit of {limiter.limit} requests {per} exceeded; retry after {retry_after} s."
        )
