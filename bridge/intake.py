"""The intake: each received message is mapped at once and parked until the next group commit.

Runs synchronously in paho's message callback, so it does the least it can: map, append, count
in plain integers (flushed to Prometheus once per commit, not once per message).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bridge import failpoints
from bridge.mapping.mapper import Mapped, Mapper
from bridge.metrics import BridgeMetrics
from bridge.models import DeadLetter, PayloadExcerpt, Record
from bridge.mqtt.acks import PACKET_IDS
from bridge.sparkplug.parking import ParkingLimits
from bridge.sparkplug_flow import SparkplugFlow, SparkplugWork
from bridge.unmatched import UnmatchedTopics

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
    digest: bytes = b""  # of the payload, kept for messages stamped with their receive time
    sparkplug: SparkplugWork | None = None  # Sparkplug changes to commit with this message
    synthetic: bool = False  # no MQTT message: parked Sparkplug messages dead-lettered by age

    @property
    def stamped(self) -> bool:
        """True when a redelivery of this message must be recognised across a restart: a point
        carries its receive time (no payload timestamp), or the message is dead-lettered (its
        dead letter must be stored once)."""
        return bool(self.qos) and (
            self.dead is not None
            or any(r.ts_us == self.received_us for r in self.records)
            # a parked message: its receive time is its key among the parked ones
            or (self.sparkplug is not None and bool(self.sparkplug.changes.park))
        )


class Intake:
    """Maps messages and queues them for the commit loop, in receive order."""

    def __init__(
        self,
        mapper: Mapper,
        metrics: BridgeMetrics,
        *,
        wall_clock: Callable[[], float] = time.time,
        parking: ParkingLimits = ParkingLimits(),  # noqa: B008  # frozen
    ) -> None:
        # Sparkplug alias tables and parked DATA: updated at receive time and in receive
        # order, because the DATA messages that follow a BIRTH are mapped before its commit;
        # stored by the commit of the message that changed them (bridge/sparkplug_flow.py).
        # Every mapper the intake is given (a reload makes a new one) works on these tables.
        self.sparkplug = SparkplugFlow(parking)
        self.mapper = mapper
        self._m = metrics
        self._wall = wall_clock
        self._pending: deque[Pending] = deque()
        # High-water mark of messages waiting for a commit, taken as each one arrives: the
        # receive window bounds it, and sampling from outside cannot see it reliably (a commit
        # may empty the queue between any two looks).
        self.most_pending = 0
        self._ready = asyncio.Event()
        self.accepting = True
        # Messages received whose PUBACK the broker has not read yet, by packet id. A broker
        # resends exactly these after a reconnect (DUP=1, same packet id), and it cannot have
        # reused an id whose PUBACK it never read; so a DUP whose id, topic and payload match an
        # entry is that message, and reusing its receive time keeps its record id, so the spool
        # stores it once even when the payload carries no timestamp. A PUBACK written is not one
        # read (it may die in a socket buffer): entries go only when a fence after the PUBACK
        # has passed (acks_read). Indexed by packet id: the receive time (0: no entry) and a
        # signature of topic and payload digest. Fixed memory (1 MB): a drain through mosquitto
        # fills all 65,535 ids (its PINGRESP comes behind the whole flood, so no fence passes),
        # where a dict of tuples held 14 MB of small objects.
        self._unacked_us = array("q", bytes(8 * PACKET_IDS))
        self._unacked_sig = array("q", bytes(8 * PACKET_IDS))
        self._acked_since_commit: list[tuple[int, int]] = []
        # Packet id -> receive time of its row in the spool's unacked table.
        self._persisted: dict[int, int] = {}
        self._forget_all = False  # the session was lost: the next commit clears the table
        self.unmatched = UnmatchedTopics()
        self._sparkplug_skipped: dict[tuple[str, str], int] = {}
        self._births: dict[tuple[str, str], int] = {}
        self._last_us = 0
        self._received = 0
        self._unmatched = 0
        self._points: dict[str, int] = {}
        self._ignored: dict[str, int] = {}
        self._replaced: dict[str, int] = {}
        self._skipped: dict[str, int] = {}
        self._failures: dict[tuple[str, str], int] = {}

    @property
    def mapper(self) -> Mapper:
        """The rules in force; setting new ones (a reload) keeps the Sparkplug aliases."""
        return self._mapper

    @mapper.setter
    def mapper(self, mapper: Mapper) -> None:
        mapper.aliases = self.sparkplug.aliases
        self._mapper = mapper

    def _account(
        self,
        mapped: Mapped,
        topic: str,
        payload: bytes,
        received_us: int,
        redelivered: bool = False,
    ) -> DeadLetter | None:
        """Count what a message became; its dead letter, if it has one to store."""
        dead = None
        rule = mapped.rule or ""
        if mapped.ignored:
            self._ignored[rule] = self._ignored.get(rule, 0) + 1
        if mapped.skipped_readings:
            self._skipped[rule] = self._skipped.get(rule, 0) + mapped.skipped_readings
        if mapped.replaced_timestamps:
            self._replaced[rule] = self._replaced.get(rule, 0) + mapped.replaced_timestamps
        if mapped.failures:
            first = mapped.failures[0]
            if first.reason == "unmatched":
                self._unmatched += 1
                self.unmatched.add(topic, received_us)
            for f in mapped.failures:
                key = (rule, f.reason)
                self._failures[key] = self._failures.get(key, 0) + 1
            detail = "; ".join(str(f) for f in mapped.failures)
            if mapped.records:
                detail = f"partially mapped ({mapped.points} point(s) kept): {detail}"
            if not redelivered:
                # A redelivery's first copy is committed (or waits ahead of it, in order), and
                # its dead letter with it: store it once.
                dead = DeadLetter(
                    first.reason, detail[:_DETAIL_CAP], topic, payload, rule, received_us
                )
        if mapped.records:
            self._points[rule] = self._points.get(rule, 0) + mapped.points
        for reason, n in mapped.skipped_values.items():
            self._sparkplug_skipped[rule, reason] = (
                self._sparkplug_skipped.get((rule, reason), 0) + n
            )
        for birth in mapped.births:
            kind = "NBIRTH" if birth.device is None else "DBIRTH"
            self._births[rule, kind] = self._births.get((rule, kind), 0) + 1
        return dead

    def __len__(self) -> int:
        return len(self._pending)

    def receive(  # noqa: PLR0917  # the MessageSink signature, called per message
        self, topic: str, payload: bytes, mid: int, qos: int, dup: bool, generation: int
    ) -> None:
        """The MQTT sink: map one message and queue it."""
        if not self.accepting:
            return  # shutting down: left unacknowledged, the broker keeps it for the session
        # Strictly increasing receive times: two identical plain payloads can never share a
        # record id (which would store the second as a redelivery of the first).
        received_us = max(int(self._wall() * 1_000_000), self._last_us + 1)
        self._last_us = received_us
        digest = b""
        redelivered = False
        if qos:
            # Stable across restarts (hash() is salted per process): entries are persisted. A
            # payload streamed past (an excerpt) was hashed whole as it went by.
            if isinstance(payload, PayloadExcerpt):
                digest = payload.digest
            else:
                digest = hashlib.blake2b(payload, digest_size=8).digest()
            # hash() is salted per process, and the table lives in this process only.
            sig = hash((topic, digest))
            if dup:
                earlier = self._unacked_us[mid]
                if earlier and self._unacked_sig[mid] == sig:
                    received_us = earlier
                    redelivered = True
            self._unacked_us[mid] = received_us
            self._unacked_sig[mid] = sig
        mapped = self._mapper.map(topic, payload, received_us)
        self._received += 1
        dead = self._account(mapped, topic, payload, received_us, redelivered)
        records = mapped.records
        work = None
        flow = self.sparkplug
        if flow.busy(mapped):
            work = flow.handle(
                mapped, topic, payload, received_us, self._mapper, redelivered=redelivered
            )
        for waiting, again in work.replayed if work is not None else ():
            # A parked message mapped at last: its records go with this (BIRTH) message.
            records = records + again.records
            late = self._account(again, waiting.topic, waiting.payload, waiting.received_us)
            if late is not None and work is not None:
                work.dead.append(late)
        self._pending.append(
            Pending(mid, qos, generation, topic, payload, received_us, records, dead, digest, work)
        )
        self.most_pending = max(self.most_pending, len(self._pending))
        failpoints.hit("after_receive_before_commit")
        self._ready.set()

    async def expiry_loop(self, interval: float = 1.0) -> None:
        """Dead-letter parked Sparkplug messages past their age, also while no message comes
        in to find them: a commit of their dead letters (no MQTT message, nothing to ack)."""
        while True:
            await asyncio.sleep(interval)
            self.expire_parked()

    def expire_parked(self) -> None:
        """One round of :meth:`expiry_loop`."""
        if not self.accepting or not self.sparkplug.parking.count:
            return
        work = self.sparkplug.expire(int(self._wall() * 1_000_000))
        if work is None:
            return
        self._pending.append(
            Pending(0, 0, -1, "", b"", 0, [], None, sparkplug=work, synthetic=True)
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

    def acks_read(self, acks: list[tuple[int, int]]) -> None:
        """The broker has read the PUBACKs of these (packet id, receive time) (a fence after
        them passed): it will not redeliver those messages and may reuse their ids. Forget
        them, and have the next commit drop their rows. An entry newer than the message
        acknowledged (its id already reused) is another message's and stays."""
        self._m.mqtt_puback_fences.inc()
        unacked = self._unacked_us
        for mid, received_us in acks:
            if 0 < unacked[mid] <= received_us:
                unacked[mid] = 0
            row = self._persisted.get(mid)
            if row is not None and row <= received_us:
                del self._persisted[mid]
                self._acked_since_commit.append((mid, received_us))

    def take_acked(self) -> tuple[bool, list[tuple[int, int]]]:
        """(forget all, (packet id, receive time) the broker has read the PUBACK of) since the
        last call, for the next commit to drop from the spool; hand them back with
        :meth:`untake_acked` if that commit fails."""
        acked, self._acked_since_commit = self._acked_since_commit, []
        forget, self._forget_all = self._forget_all, False
        return forget, acked

    def untake_acked(self, forget: bool, acked: list[tuple[int, int]]) -> None:
        """The commit that should have recorded these failed."""
        self._acked_since_commit[:0] = acked
        self._forget_all = self._forget_all or forget

    def persisted(self, rows: list[tuple[int, int]]) -> None:
        """These (packet id, receive time) now have a row in the spool's unacked table."""
        self._persisted.update(rows)

    def restore_unacked(self, entries: dict[int, tuple[str, bytes, int]]) -> None:
        """Receive times an earlier run committed whose PUBACK the broker may not have read
        (at start)."""
        for mid, (topic, digest, received_us) in entries.items():
            self._unacked_us[mid] = received_us
            self._unacked_sig[mid] = hash((topic, digest))
        self._persisted.update({mid: e[2] for mid, e in entries.items()})

    def session_lost(self) -> None:
        """The broker has no session: nothing will be redelivered."""
        self._unacked_us = array("q", bytes(8 * PACKET_IDS))
        self._acked_since_commit.clear()
        self._persisted.clear()
        self._forget_all = True

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
        for rule, n in self._ignored.items():
            m.messages_ignored.labels(rule).inc(n)
        self._ignored.clear()
        for rule, n in self._replaced.items():
            m.timestamps_replaced.labels(rule).inc(n)
        self._replaced.clear()
        for rule, n in self._skipped.items():
            m.readings_skipped.labels(rule).inc(n)
        self._skipped.clear()
        for (rule, reason), n in self._sparkplug_skipped.items():
            m.sparkplug_values_skipped.labels(rule, reason).inc(n)
        self._sparkplug_skipped.clear()
        for (rule, kind), n in self._births.items():
            m.sparkplug_births.labels(rule, kind).inc(n)
        self._births.clear()
        for (rule, event), n in self.sparkplug.events.items():
            m.sparkplug_session_events.labels(rule, event).inc(n)
        self.sparkplug.events.clear()
        for rule, n in self.sparkplug.parked_total.items():
            m.sparkplug_parked.labels(rule).inc(n)
        self.sparkplug.parked_total.clear()
        m.sparkplug_parked_messages.set(self.sparkplug.parking.count)
