"""Topics no rule matched: a bounded sample for ``GET /debug/unmatched``, and a log line once a
minute naming a few, so users see what their rules miss."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

log = logging.getLogger(__name__)


class UnmatchedTopics:
    """A bounded sample of recent topics no rule matched, so users see what their rules miss.

    Keeps the ``limit`` most recently seen topics (least recently seen are forgotten first) with
    a count each; topics are truncated so a flood of long topics cannot grow memory.
    """

    def __init__(self, limit: int = 100, topic_cap: int = 256) -> None:
        self._limit = limit
        self._cap = topic_cap
        self._seen: OrderedDict[str, list[int]] = OrderedDict()  # topic -> [count, last_us]
        self.since_report = 0

    def add(self, topic: str, now_us: int) -> None:
        """Count one unmatched message."""
        key = topic[: self._cap]
        entry = self._seen.get(key)
        if entry is None:
            if len(self._seen) >= self._limit:
                self._seen.popitem(last=False)
            self._seen[key] = [1, now_us]
        else:
            entry[0] += 1
            entry[1] = now_us
            self._seen.move_to_end(key)
        self.since_report += 1

    def recent(self) -> list[dict[str, object]]:
        """Most recently seen first: topic, count, last_seen (epoch µs)."""
        return [
            {"topic": t, "count": c, "last_seen_us": last}
            for t, (c, last) in reversed(self._seen.items())
        ]

    async def report_loop(self, interval: float = 60.0) -> None:
        """Once a minute, if any message matched no rule, say how many and name a few topics."""
        while True:
            await asyncio.sleep(interval)
            if self.since_report:
                topics = [str(e["topic"]) for e in self.recent()[:5]]
                log.warning(
                    "%d message(s) in the last %.0f s matched no rule, e.g. on %s "
                    "(all recent ones: GET /debug/unmatched)",
                    self.since_report,
                    interval,
                    ", ".join(repr(t) for t in topics),
                    extra={
                        "event": "unmatched",
                        "reason": "unmatched",
                        "count": self.since_report,
                        "topics": topics,
                    },
                )
                self.since_report = 0
