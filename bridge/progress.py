"""The periodic progress line and the totals at stop, read from the bridge's own metrics.

Nothing is counted twice: a :class:`Tally` is a reading of the Prometheus counters the bridge
keeps anyway, and a line is the difference between two readings. An operator reading the
journal wants what happened lately (the flows of the last interval) and where things stand
now (what waits in the spool, and how old the oldest of it is); the totals since start are in
``/metrics`` and in the one line at stop.

Quiet when idle: an interval in which nothing was received, delivered, dead-lettered, dropped
or rate-limited, with nothing waiting, logs one line saying so and then nothing until something
happens again, or an hour passed (so the journal still shows the bridge alive).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields

from prometheus_client import CollectorRegistry

from bridge.logs import duration
from bridge.metrics import PREFIX

log = logging.getLogger(__name__)

IDLE_EVERY_S = 3600.0  # an idle bridge still says so once an hour

# Tally field -> the counter sample it reads (summed over its labels, unless a label is given).
_SAMPLES: dict[str, tuple[str, dict[str, str]]] = {
    "received": ("messages_received_total", {}),
    "delivered": ("points_delivered_total", {}),
    "requests": ("api_requests_total", {"status_class": "2xx"}),
    "dead_letters": ("dead_letters_total", {}),
    "ignored": ("messages_ignored_total", {}),
    "unmatched": ("messages_unmatched_total", {}),
    "rate_limited": ("api_rate_limited_total", {}),
    "dropped": ("points_dropped_total", {}),
}
_BACKLOG = PREFIX + "spool_points"
_OLDEST = PREFIX + "spool_oldest_point_age_seconds"


@dataclass(frozen=True, slots=True)
class Tally:
    """The bridge's counters at one moment (or the difference of two readings).

    Attributes:
        received: MQTT messages received.
        delivered: points the API accepted.
        requests: requests the API accepted (2xx).
        dead_letters: dead letters written (mapping failures and API refusals).
        ignored: messages an ignore rule dropped on purpose.
        unmatched: messages whose topic matched no rule.
        rate_limited: requests answered 429.
        dropped: waiting points deleted unsent (``spool.when_full: drop-oldest``).
    """

    received: int = 0
    delivered: int = 0
    requests: int = 0
    dead_letters: int = 0
    ignored: int = 0
    unmatched: int = 0
    rate_limited: int = 0
    dropped: int = 0

    def __sub__(self, other: Tally) -> Tally:
        return Tally(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def quiet(self) -> bool:
        """Nothing happened (ignored and unmatched messages are received too)."""
        return not (
            self.received
            or self.delivered
            or self.dead_letters
            or self.rate_limited
            or self.dropped
        )


@dataclass(frozen=True, slots=True)
class Reading:
    """One look at the metrics: the counters, and the spool's backlog as the gauges say."""

    tally: Tally
    backlog: int  # points waiting in the spool (held ones included)
    oldest_s: float  # age of the oldest of them; 0 when none waits


def read(registry: CollectorRegistry) -> Reading:
    """Read the counters and the backlog gauges in one pass over the registry."""
    sums = dict.fromkeys(_SAMPLES, 0.0)
    wanted = {PREFIX + name: field for field, (name, _labels) in _SAMPLES.items()}
    backlog = oldest = 0.0
    for family in registry.collect():
        for sample in family.samples:
            field = wanted.get(sample.name)
            if field is not None:
                labels = _SAMPLES[field][1]
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    sums[field] += sample.value
            elif sample.name == _BACKLOG:
                backlog = sample.value
            elif sample.name == _OLDEST:
                oldest = sample.value
    tally = Tally(**{f.name: int(sums[f.name]) for f in fields(Tally)})
    return Reading(tally, int(backlog), oldest if backlog else 0.0)


@dataclass(frozen=True, slots=True)
class Line:
    """A log line: its text (``%``-style with ``args``) and its fields for the JSON format."""

    msg: str
    args: tuple[object, ...]
    fields: dict[str, object]


class Progress:
    """Decides when a progress line is due and writes it (see the module docstring).
    Pure: the readings and ``now`` are arguments."""

    def __init__(self, first: Reading, now: float, idle_every_s: float = IDLE_EVERY_S) -> None:
        self._last = first.tally
        self._since = now
        self._idle_every = idle_every_s
        self._said_idle_at: float | None = None

    def line(self, reading: Reading, now: float) -> Line | None:
        """The line for the interval that ends ``now``, or None while the bridge stays idle."""
        delta = reading.tally - self._last
        interval = now - self._since
        self._last, self._since = reading.tally, now
        idle = delta.quiet and reading.backlog == 0
        if not idle:
            self._said_idle_at = None
        elif self._said_idle_at is not None and now - self._said_idle_at < self._idle_every:
            return None
        else:
            self._said_idle_at = now
        msg = (
            "last %s: received %d message(s), delivered %d point(s) in %d request(s), "
            "%d dead letter(s), %d rate-limited (429); waiting in the spool: %d point(s)"
        )
        args: list[object] = [
            duration(interval),
            delta.received,
            delta.delivered,
            delta.requests,
            delta.dead_letters,
            delta.rate_limited,
            reading.backlog,
        ]
        if reading.backlog:
            msg += ", oldest %s"
            args.append(duration(reading.oldest_s))
        if delta.dropped:
            msg += "; %d point(s) DROPPED unsent (spool full)"
            args.append(delta.dropped)
        out: dict[str, object] = {"event": "progress", "interval_s": round(interval, 3)}
        out.update(zip(_names(), astuple(delta), strict=True))
        out.update(backlog_points=reading.backlog, oldest_waiting_s=round(reading.oldest_s, 3))
        return Line(msg, tuple(args), out)


def totals(reading: Reading, uptime_s: float) -> Line:
    """The line at stop: everything since start, and what stays in the spool."""
    t = reading.tally
    msg = (
        "stopped after %s: received %d message(s), delivered %d point(s) in %d request(s), "
        "%d dead letter(s), %d ignored, %d unmatched, %d dropped; %d point(s) stay in the "
        "spool for the next start"
    )
    args = (
        duration(uptime_s),
        t.received,
        t.delivered,
        t.requests,
        t.dead_letters,
        t.ignored,
        t.unmatched,
        t.dropped,
        reading.backlog,
    )
    out: dict[str, object] = {"event": "totals", "uptime_s": round(uptime_s, 3)}
    out.update(zip(_names(), astuple(t), strict=True))
    out["backlog_points"] = reading.backlog
    return Line(msg, args, out)


def _names() -> list[str]:
    return [f.name for f in fields(Tally)]


async def progress_loop(
    registry: CollectorRegistry,
    every_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Log a progress line every ``every_s`` seconds until cancelled."""
    progress = Progress(read(registry), clock())
    while True:
        await asyncio.sleep(every_s)
        line = progress.line(read(registry), clock())
        if line is not None:
            log.info(line.msg, *line.args, extra=line.fields)
