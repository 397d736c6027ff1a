"""DATA that arrives before the BIRTH defining its aliases: kept, in order, until that BIRTH.

An edge node's DATA can reach the bridge before the bridge has its BIRTH: the bridge subscribed
while the node was already up, or a device's DDATA raced its DBIRTH, or the alias belongs to a
BIRTH the bridge has not received yet. Such a message is **parked** whole (never partly mapped,
so its values keep their order) under its edge node, and mapped again, in receive order, when a
BIRTH of that node arrives. Parked messages are bounded per edge node by count and bytes, and by
age; what a bound pushes out is returned to the caller to dead-letter (reason
``sparkplug_unknown_alias``), never dropped.

Pure: this is the in-memory mirror of the spool's ``sparkplug_parked`` table, which the caller
writes in the commit of each message (see :mod:`bridge.spool.sparkplug`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from bridge.sparkplug.aliases import Birth


class Parked(NamedTuple):
    """A whole message waiting for its edge node's BIRTH; ``received_us`` identifies it
    within its node (receive times are unique, and a redelivery reuses its time)."""

    group: str
    node: str
    received_us: int
    topic: str
    payload: bytes
    rule: str


@dataclass(frozen=True, slots=True)
class ParkingLimits:
    """Per edge node: at most ``max_messages`` and ``max_bytes`` of payload; each message for
    at most ``max_age_us`` of receive time."""

    max_messages: int = 10_000
    max_bytes: int = 16 * 1024 * 1024
    max_age_us: int = 600_000_000


class Parking:
    """The parked messages of every edge node, oldest first."""

    def __init__(self, limits: ParkingLimits = ParkingLimits()) -> None:  # frozen
        self.limits = limits
        self._nodes: dict[tuple[str, str], deque[Parked]] = {}
        self._bytes: dict[tuple[str, str], int] = {}
        self.count = 0

    def __contains__(self, message: Parked) -> bool:
        queue = self._nodes.get((message.group, message.node), ())
        return any(p.received_us == message.received_us for p in queue)

    def park(self, message: Parked) -> list[Parked]:
        """Keep ``message`` (a redelivery of one kept already is kept once); returns the
        oldest of its node pushed out by the count or bytes bound."""
        key = (message.group, message.node)
        if message in self:
            return []
        queue = self._nodes.setdefault(key, deque())
        queue.append(message)
        self._bytes[key] = self._bytes.get(key, 0) + len(message.payload)
        self.count += 1
        out: list[Parked] = []
        lim = self.limits
        while len(queue) > lim.max_messages or (
            self._bytes[key] > lim.max_bytes and len(queue) > 1
        ):
            out.append(self._pop(key))
        return out

    def take(self, group: str, node: str) -> list[Parked]:
        """Every message of the node, oldest first, removed (to map again; park back those
        still unknown)."""
        key = (group, node)
        queue = self._nodes.pop(key, None)
        if queue is None:
            return []
        self.count -= len(queue)
        del self._bytes[key]
        return list(queue)

    def expire(self, now_us: int) -> list[Parked]:
        """Remove and return the messages parked longer than the age bound."""
        limit = now_us - self.limits.max_age_us
        out: list[Parked] = []
        for key in list(self._nodes):
            queue = self._nodes[key]
            while queue and queue[0].received_us < limit:
                out.append(self._pop(key))
        return out

    def oldest_us(self) -> int | None:
        """Receive time of the oldest parked message, if any."""
        return min((q[0].received_us for q in self._nodes.values() if q), default=None)

    def load(self, messages: Iterable[Parked]) -> None:
        """The stored messages (at start), in receive order."""
        for message in sorted(messages, key=lambda p: p.received_us):
            key = (message.group, message.node)
            self._nodes.setdefault(key, deque()).append(message)
            self._bytes[key] = self._bytes.get(key, 0) + len(message.payload)
            self.count += 1

    def _pop(self, key: tuple[str, str]) -> Parked:
        queue = self._nodes[key]
        message = queue.popleft()
        self._bytes[key] -= len(message.payload)
        self.count -= 1
        if not queue:
            del self._nodes[key]
            del self._bytes[key]
        return message


@dataclass(slots=True)
class SparkplugChanges:
    """What the messages of one commit change in the spool's Sparkplug tables, in receive
    order: alias tables from BIRTHs, messages parked, and parked messages done with (mapped
    again after their BIRTH, or dead-lettered by a bound) by (group, node, receive time)."""

    births: list[Birth] = field(default_factory=list)
    park: list[Parked] = field(default_factory=list)
    unpark: list[tuple[str, str, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.births or self.park or self.unpark)
