"""What delivery says in the log: failures and pauses (once per 30 s per kind), the line that
ends an outage the log announced, and DEBUG lines of the request path.

An outage runs from the first failed request to the next accepted one (:class:`~bridge.outage.
Outage`). If the log said "delivery failed, will retry" (or that delivery is paused), it also
says when delivery resumed: after how long, and how many points waited meanwhile — so the last
line of a recovered outage is never the failure. A 429 is pacing, not an outage: its own line
says how long the pause is.

DEBUG lines (requests accepted, failed attempts and their backoff, pacing waits) are written at
most once a second per kind, each saying how many it stands for: DEBUG stays readable at
thousands of messages a second. Nothing here is per message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bridge.batcher import Batch
from bridge.errors import RetryableDelivery
from bridge.logs import LogThrottle, duration
from bridge.outage import Ended, Outage
from bridge.spool.file import SpoolFile

log = logging.getLogger("bridge.delivery")


class DeliveryReporter:
    """Logs what :class:`bridge.delivery.Delivery` does (see the module docstring)."""

    def __init__(
        self,
        file: SpoolFile,
        throttle: LogThrottle,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._file = file
        self._throttle = throttle
        self._debug = LogThrottle(1.0, clock)
        self._wall = wall_clock
        self._outage = Outage(clock)

    def failed(self, exc: RetryableDelivery, delay: float, *, paused: bool) -> None:
        """A request failed and will be retried in ``delay`` seconds; ``paused``: the API
        refuses the token or the URL (delivery waits for it to change)."""
        fields: dict[str, object] = {"status": exc.status}
        if paused:
            fields["event"] = "delivery_paused"
            shown = self._throttle.log(
                log, logging.ERROR, f"pause{exc.status}", "%s", exc, extra=fields
            )
        else:
            fields["event"] = "delivery_failed"
            shown = self._throttle.log(
                log, logging.WARNING, "retry", "delivery failed, will retry: %s", exc, extra=fields
            )
        self._outage.failed(announced=shown, kind="paused" if paused else "failing")
        self.debug(
            "backoff",
            "request failed (%s); next attempt of that batch in %.2f s",
            exc.status or "no answer",
            delay,
            status=exc.status,
            delay_s=round(delay, 3),
        )

    def rate_limited(self, pause_s: float, rate: float) -> None:
        """A 429: every slot pauses ``pause_s``; pacing is now ``rate`` requests/s."""
        self._throttle.log(
            log,
            logging.WARNING,
            "429",
            "API rate limit hit; pausing %.1f s, pacing now %.2f requests/s",
            pause_s,
            rate,
            extra={"status": 429, "pause_s": round(pause_s, 3), "rate": round(rate, 3)},
        )

    def accepted(self, batch: Batch, took_s: float, written: int | None) -> None:
        """The API accepted ``batch`` (before it leaves the spool): end an outage, if any."""
        self.debug(
            "sent",
            "API accepted %d point(s) in %d record(s) in %.0f ms (points_written %s)",
            batch.points,
            len(batch.records),
            took_s * 1000,
            written,
            status=201,
            points=batch.points,
            batch_size=len(batch.records),
            latency_ms=round(took_s * 1000, 1),
        )
        ended = self._outage.recovered()
        if ended is not None and ended.announced:
            self._resumed(ended, batch)

    def debug(self, key: str, msg: str, *args: object, **fields: object) -> None:
        """A DEBUG line of kind ``key``, at most one a second."""
        if log.isEnabledFor(logging.DEBUG):
            self._debug.log(log, logging.DEBUG, key, msg, *args, extra=fields)

    def _resumed(self, ended: Ended, batch: Batch) -> None:
        # Counted while the accepted batch is still in the spool, so it is part of what waited.
        file = self._file
        waiting = file.depth_points + file.held_points
        received = [r.received_us for r in batch.records]
        if file.oldest_received_us is not None:
            received.append(file.oldest_received_us)
        oldest_s = max(0.0, self._wall() - min(received) / 1e6)
        fields: dict[str, object] = {
            "event": "delivery_resumed",
            "down_s": round(ended.down_s, 3),
            "failures": ended.failures,
            "backlog_points": waiting,
            "oldest_waiting_s": round(oldest_s, 3),
        }
        if ended.kind == "paused":
            log.info(
                "API accepts requests again after %s paused; delivery resumed: %d point(s) "
                "waited, oldest %s",
                duration(ended.down_s),
                waiting,
                duration(oldest_s),
                extra=fields,
            )
            return
        log.info(
            "delivery resumed after %s down (%d failed attempt(s)); %d point(s) waited, oldest %s",
            duration(ended.down_s),
            ended.failures,
            waiting,
            duration(oldest_s),
            extra=fields,
        )
