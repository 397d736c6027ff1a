"""The intake: each received message is mapped at once and parked until the next group commit.

Runs synchronously in paho's message callback, so it does the least it can: map, append, count
in plain integers (flushed to Prometheus once per commit, not once per message).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bridge.mapping import Mapper
from bridge.metrics import BridgeMetrics
from bridge.points import DeadLetter, Record

_DETAIL_CAP = 1000


@dataclass(slots=True)
class Pending:
    """A received message waiting for its group commit and then its PUBACK."""

    mid: int
    qos: int
    generation: int
    topic: str
    payload: bytes
    received_us: int
    records: list[Record]
    dead: DeadLetter | None


class Intake:
    """Maps messages and queues them for the commit loop, in receive order."""

    def __init__(
        self,
        mapper: Mapper,
        metrics: BridgeMetrics,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.mapper = mapper
        self._m = metrics
        self._wall = wall_clock
        self._pending: deque[Pending] = deque()
        self._ready = asyncio.Event()
        self.accepting = True
        # Receive times of messages committed but never acknowledged (their connection dropped):
        # the broker will redeliver them with DUP=1, and reusing the time keeps their record ids
        # equal, so the spool stores them once even when the payload carries no timestamp.
        self._replay: dict[tuple[str, bytes], deque[tuple[int, int]]] = {}
        self._received = 0
        self._unmatched = 0
        self._points: dict[str, int] = {}
        self._failures: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def receive(
        self, topic: str, payload: bytes, mid: int, qos: int, dup: bool, generation: int
    ) -> None:
        """The MQTT sink: map one message and queue it."""
        if not self.accepting:
            return  # shutting down: left unacknowledged, the broker keeps it for the session
        received_us = int(self._wall() * 1_000_000)
        if dup and self._replay:
            earlier = self._replay.get((topic, payload))
            if earlier:
                received_us = earlier.popleft()[0]
                if not earlier:
                    del self._replay[(topic, payload)]
        mapped = self.mapper.map(topic, payload, received_us)
        self._received += 1
        dead = None
        rule = mapped.rule or ""
        if mapped.failures:
            first = mapped.failures[0]
            if first.reason == "unmatched":
                self._unmatched += 1
            for f in mapped.failures:
                key = (rule, f.reason)
                self._failures[key] = self._failures.get(key, 0) + 1
            detail = "; ".join(str(f) for f in mapped.failures)
            if mapped.records:
                detail = f"partially mapped ({mapped.points} point(s) kept): {detail}"
            dead = DeadLetter(first.reason, detail[:_DETAIL_CAP], topic, payload, rule, received_us)
        if mapped.records:
            self._points[rule] = self._points.get(rule, 0) + mapped.points
        self._pending.append(
            Pending(mid, qos, generation, topic, payload, received_us, mapped.records, dead)
        )
        self._ready.set()

    async def wait(self) -> None:
        """Wait until at least one message is pending."""
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()

    def take(self, limit: int) -> list[Pending]:
        """Remove and return up to ``limit`` oldest pending messages."""
        n = min(limit, len(self._pending))
        return [self._pending.popleft() for _ in range(n)]

    def put_back(self, batch: list[Pending]) -> None:
        """Return an uncommitted batch to the front, keeping receive order."""
        self._pending.extendleft(reversed(batch))

    def remember_unacked(self, p: Pending, generation: int) -> None:
        """Record the receive time of a committed message that could not be acknowledged."""
        self._replay.setdefault((p.topic, p.payload), deque()).append((p.received_us, generation))

    def forget_before(self, generation: int) -> None:
        """Drop replay entries from connections before ``generation`` (their redelivery is
        over: it happens right after the reconnect that follows the drop)."""
        for key in list(self._replay):
            kept = deque(e for e in self._replay[key] if e[1] >= generation)
            if kept:
                self._replay[key] = kept
            else:
                del self._replay[key]

    def flush_counters(self) -> None:
        """Move the per-message counts into the Prometheus metrics."""
        m = self._m
        if self._received:
            m.messages_received.inc(self._received)
            self._received = 0
        if self._unmatched:
            m.messages_unmatched.inc(self._unmatched)
            self._unmatched = 0
        for rule, n in self._points.items():
            m.points_mapped.labels(rule).inc(n)
        self._points.clear()
        for (rule, reason), n in self._failures.items():
            m.mapping_failures.labels(rule, reason).inc(n)
        self._failures.clear()
