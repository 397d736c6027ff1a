"""Fault modes of the local Metriqo-compatible API server (`bridge.lab.apiserver.server`).

Used by tests and by people rehearsing an outage (``metriqo-bridge simulate-api --error-rate``
and friends; rows 5-9 of ``shared/reliability-matrix.md``). `Faults` is the frozen, inert-by-default
description; `FaultState` is the small amount of per-server state (start time, 5xx rotation,
whether the rotated token was seen) and makes every decision. Nothing here touches a socket: the
randomness and both clocks are injected, so a seeded `random.Random` makes the rates exact.

The rotated token (`Faults.unauthorized_until_token`) is never put into a repr, a summary or a
message.
"""

from __future__ import annotations

import hmac
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Literal, TypeAlias

import orjson

from bridge.lab.apiserver.validation import TelemetryItem

RetryAfterForm: TypeAlias = Literal["seconds", "http-date", "zero", "garbage", "missing", "huge"]
RETRY_AFTER_FORMS: tuple[RetryAfterForm, ...] = (
    "seconds",
    "http-date",
    "zero",
    "garbage",
    "missing",
    "huge",
)
HUGE_RETRY_AFTER = 86_400_000
GARBAGE_RETRY_AFTER = "soon, probably"
ERROR_STATUSES = (500, 502, 503)
"""The statuses `Faults.error_rate` rotates through, in this order."""

FaultName: TypeAlias = Literal[
    "hang",
    "error_rate",
    "unauthorized_until_token",
    "storm_429",
    "max_points_413",
    "poison_value",
    "record_then_500",
    "latency",
    "slow_body",
]
"""What `RequestRecord.fault` names: the fault that answered (or delayed) a request."""


def _check_share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1")


def _check_non_negative(name: str, value: float) -> None:
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True, slots=True)
class Faults:
    """Which faults the fake API injects into ``POST /telemetry``; all off by default.

    Attributes:
        error_rate: Share (0..1) of requests answered 500/502/503 (rotating), storing nothing.
        record_then_500: Share (0..1) of otherwise accepted requests whose points are stored
            before the server answers 500, so a retry creates duplicates.
        storm_429_s: For this many seconds after the server starts, every request gets 429.
        retry_after: The form of the storm's Retry-After header: ``seconds`` (remaining storm
            time rounded up), ``http-date`` (an RFC 7231 IMF-fixdate that far ahead), ``zero``,
            ``garbage``, ``missing`` (no header) or ``huge`` (86400000).
        latency_s: Delay before the response headers.
        slow_body_bps: When > 0, the response body is streamed at this many bytes per second.
        hang: Read the request and never answer, until the client gives up.
        unauthorized_until_token: Answer 401 until a request carries exactly this token; from
            then on it (and only it) is accepted. Never shown in repr.
        max_points_413: More data points than this in one request get 413.
        poison_value: A point with exactly this value gets 400 naming the object index.
        rng: Randomness for the two rates; seed it for deterministic tests.
        clock: Monotonic seconds for the storm window.
        wall_clock: Epoch seconds for the ``http-date`` form.

    Raises:
        ValueError: A share outside 0..1, a negative duration, rate or point limit, or an empty
            token.
    """

    error_rate: float = 0.0
    record_then_500: float = 0.0
    storm_429_s: float = 0.0
    retry_after: RetryAfterForm = "seconds"
    latency_s: float = 0.0
    slow_body_bps: int = 0
    hang: bool = False
    unauthorized_until_token: str | None = field(default=None, repr=False)
    max_points_413: int | None = None
    poison_value: float | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    wall_clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Validates the settings."""
        _check_share("error_rate", self.error_rate)
        _check_share("record_then_500", self.record_then_500)
        _check_non_negative("storm_429_s", self.storm_429_s)
        _check_non_negative("latency_s", self.latency_s)
        if self.slow_body_bps < 0:
            raise ValueError("slow_body_bps must be >= 0")
        if self.retry_after not in RETRY_AFTER_FORMS:
            raise ValueError(f"retry_after must be one of {', '.join(RETRY_AFTER_FORMS)}")
        if self.unauthorized_until_token is not None and not self.unauthorized_until_token:
            raise ValueError("unauthorized_until_token must be non-empty")
        if self.max_points_413 is not None and self.max_points_413 < 0:
            raise ValueError("max_points_413 must be >= 0")

    def summary(self) -> str:
        """Returns a one-line description of the active faults (never the token)."""
        parts: list[str] = []
        if self.error_rate:
            parts.append(f"error-rate {self.error_rate:g} (500/502/503)")
        if self.record_then_500:
            parts.append(f"record-then-500 {self.record_then_500:g}")
        if self.storm_429_s:
            parts.append(f"429 storm {self.storm_429_s:g} s (Retry-After: {self.retry_after})")
        if self.latency_s:
            parts.append(f"latency {self.latency_s:g} s")
        if self.slow_body_bps:
            parts.append(f"slow body {self.slow_body_bps} B/s")
        if self.hang:
            parts.append("hang")
        if self.unauthorized_until_token is not None:
            parts.append("401 until the rotated token is presented")
        if self.max_points_413 is not None:
            parts.append(f"413 above {self.max_points_413} points")
        if self.poison_value is not None:
            parts.append(f"400 for value {self.poison_value!r}")
        return "faults: " + ("; ".join(parts) if parts else "none")


def retry_after_header(form: RetryAfterForm, remaining_s: float, now_wall: float) -> str | None:
    """Returns the Retry-After value of a storm 429 in `form`, or None for ``missing``.

    Args:
        form: See `Faults.retry_after`.
        remaining_s: Storm time left, in seconds.
        now_wall: The current epoch time, for ``http-date``.
    """
    wait = max(0, math.ceil(remaining_s))
    if form == "seconds":
        return str(wait)
    if form == "http-date":
        # Whole seconds, rounded up, so the date is never earlier than the storm's end.
        at = datetime.fromtimestamp(math.ceil(now_wall + remaining_s), UTC)
        return format_datetime(at, usegmt=True)
    if form == "zero":
        return "0"
    if form == "garbage":
        return GARBAGE_RETRY_AFTER
    if form == "huge":
        return str(HUGE_RETRY_AFTER)
    return None


@dataclass(frozen=True, slots=True)
class StormReply:
    """A storm 429: the Retry-After value (None = no header) and the seconds left."""

    retry_after: str | None
    remaining_s: float


def find_poison(items: Sequence[TelemetryItem], poison: float) -> str | None:
    """Returns ``body[i].metrics["name"]`` of the first point equal to `poison`, or None."""
    for index, item in enumerate(items):
        for name, value in item.metrics:
            if value == poison:
                return f"body[{index}].metrics[{orjson.dumps(name).decode()}]"
    return None


class FaultState:
    """The per-server state of `Faults`, and every fault decision.

    Not thread-safe; one instance belongs to one server's event loop.
    """

    def __init__(self, faults: Faults) -> None:
        """Binds the state to `faults`; the storm window opens at `start`."""
        self.faults = faults
        self._started_at: float | None = None
        self._errors = 0
        self._token_seen = False

    def start(self) -> None:
        """Marks the server start (the storm window begins now); later calls do nothing."""
        if self._started_at is None:
            self._started_at = self.faults.clock()

    def error_status(self) -> int | None:
        """Draws the `error_rate` dice: a 5xx status (rotating), or None to go on."""
        if not self.faults.error_rate or self.faults.rng.random() >= self.faults.error_rate:
            return None
        status = ERROR_STATUSES[self._errors % len(ERROR_STATUSES)]
        self._errors += 1
        return status

    def record_then_fail(self) -> bool:
        """Draws the `record_then_500` dice for a request whose points were just stored."""
        share = self.faults.record_then_500
        return bool(share) and self.faults.rng.random() < share

    def storm(self) -> StormReply | None:
        """Returns the 429 to answer while the storm lasts, else None."""
        if not self.faults.storm_429_s:
            return None
        self.start()
        assert self._started_at is not None
        remaining = self._started_at + self.faults.storm_429_s - self.faults.clock()
        if remaining <= 0:
            return None
        header = retry_after_header(self.faults.retry_after, remaining, self.faults.wall_clock())
        return StormReply(header, remaining)

    @property
    def rotates_token(self) -> bool:
        """Whether `Faults.unauthorized_until_token` replaces the normal token check."""
        return self.faults.unauthorized_until_token is not None

    def rotated_token_ok(self, header: str | None) -> bool:
        """Checks an Authorization header against the rotated token; remembers a match.

        Only meaningful when `rotates_token`; compares in constant time.
        """
        token = self.faults.unauthorized_until_token
        if token is None:
            return False
        scheme, _, credentials = (header or "").partition(" ")
        presented = f"{scheme.lower()} {credentials}".encode("utf-8", "surrogateescape")
        ok = hmac.compare_digest(presented, f"bearer {token}".encode())
        self._token_seen = self._token_seen or ok
        return ok

    @property
    def token_seen(self) -> bool:
        """Whether a request has carried the rotated token yet."""
        return self._token_seen
