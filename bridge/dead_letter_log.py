"""What the bridge says about its dead letters, in the metrics and in the log.

A dead letter as it is written: counted by reason, and logged with its reason, topic, rule and
the mapper's explanation (at most one line per reason every 30 s, with how often it repeated).
Its payload appears in that line only when ``dead_letters.log_payload_bytes`` allows it — a
payload can hold what does not belong in a log — and then escaped and cut to that length.

Dead letters pruned by their budget: counted by limit at once
(``dead_letters_pruned_total{reason}``), and summed up in one log line a minute at most, saying
how many went, which limit took them, and their reasons.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from bridge.logs import LogThrottle
from bridge.metrics import BridgeMetrics
from bridge.models import DeadLetter
from bridge.settings import DeadLetterSettings
from bridge.spool.dlbudget import Pruned

log = logging.getLogger(__name__)

_TEXT_CAP = 200  # characters of topic, rule and detail in a log line


def excerpt(payload: bytes, limit: int) -> str:
    """The first ``limit`` bytes of a payload as one escaped, quoted line: no byte of it can
    start a new log line, move a terminal's cursor or reverse the text after it."""
    text = payload[:limit].decode("utf-8", "backslashreplace")
    shown = repr(text)  # escapes control, format (bidi) and other unprintable characters
    if len(payload) > limit:
        shown += f"… ({len(payload)} bytes)"
    return shown


class DeadLetterReporter:
    """Counts and logs dead letters written and pruned (see the module docstring)."""

    def __init__(
        self,
        metrics: BridgeMetrics,
        settings: DeadLetterSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        summary_every_s: float = 60.0,
    ) -> None:
        self._m = metrics
        self._s = settings
        self._clock = clock
        self._throttle = LogThrottle(30.0, clock)
        self._every = summary_every_s
        self._pending: Counter[tuple[str, str]] = Counter()
        self._since: float | None = None  # when the first prune not yet logged happened
        self._last_summary = -float("inf")

    def written(self, dead: DeadLetter) -> None:
        """A dead letter was committed (the message is acknowledged)."""
        self._m.dead_letters.labels(dead.reason).inc()
        args: list[object] = [
            dead.topic[:_TEXT_CAP],
            dead.reason,
            dead.rule[:_TEXT_CAP],
            dead.detail[:_TEXT_CAP],
        ]
        fields: dict[str, object] = {
            "event": "dead_letter",
            "topic": dead.topic[:_TEXT_CAP],
            "reason": dead.reason,
            "rule": dead.rule[:_TEXT_CAP],
            "detail": dead.detail[:_TEXT_CAP],
        }
        msg = "message on topic %r dead-lettered (reason %s, rule %r): %r"
        if self._s.log_payload_bytes:
            msg += "; payload %s"
            shown = excerpt(dead.payload, self._s.log_payload_bytes)
            args.append(shown)
            fields["payload"] = shown
        self._throttle.log(log, logging.WARNING, f"dead:{dead.reason}", msg, *args, extra=fields)

    def pruned(self, pruned: Pruned) -> None:
        """Count dead letters the budget pruned; log a summary when one is due. Call it
        regularly, with nothing pruned too, so a summary is not held back."""
        now = self._clock()
        for why, n in pruned.by_why().items():
            self._m.dead_letters_pruned.labels(why).inc(n)
        for why, reason, n in pruned.counts:
            self._pending[why, reason] += n
        if pruned.total and self._since is None:
            self._since = now
        if self._pending and now - self._last_summary >= self._every:
            self._summary(now)

    def _summary(self, now: float) -> None:
        summary = Pruned.of(self._pending)
        whys = summary.by_why()
        level = logging.INFO if set(whys) == {"max_age"} else logging.WARNING
        since = 0.0 if self._since is None else now - self._since
        log.log(
            level,
            "pruned %d dead letter(s)%s, oldest first: %s; their reasons: %s "
            "(list or export what is left with `metriqo-bridge dead-letters`)",
            summary.total,
            f" in the last {since:.0f} s" if since >= 1 else "",
            ", ".join(f"{n} {self._why(why)}" for why, n in sorted(whys.items())),
            ", ".join(f"{reason} {n}" for reason, n in sorted(summary.by_reason().items())),
        )
        self._pending.clear()
        self._since = None
        self._last_summary = now

    def _why(self, why: str) -> str:
        s = self._s
        return {
            "max_age": f"older than dead_letters.max_age_s ({s.max_age_s:g} s)",
            "max_count": f"beyond dead_letters.max_count ({s.max_count})",
            "max_bytes": f"beyond dead_letters.max_bytes ({s.max_bytes} bytes)",
            "disk_full": "to make room for readings on a full disk",
        }.get(why, why)
