"""The intake's Sparkplug B state: alias tables and parked DATA, kept in receive order.

The intake maps every message as it arrives (:mod:`bridge.intake`), so this state changes at
receive time, and what each message changed travels with it to its group commit
(:class:`~bridge.sparkplug.parking.SparkplugChanges`), to be written in that transaction before
its PUBACK (:mod:`bridge.spool.sparkplug` argues why nothing is lost by a crash in between).

- A BIRTH's aliases are already in the tables when the mapper returns.
- DATA with an alias no BIRTH defined is parked whole (:mod:`bridge.sparkplug.parking`) and
  stored; a later BIRTH of its edge node maps the node's parked messages again, in receive
  order: their records and the removal of their rows go in the BIRTH's commit. Messages still
  unknown after it stay parked.
- A parked message pushed out by a bound (count, bytes or age per edge node) is dead-lettered
  with reason ``sparkplug_unknown_alias`` in the commit of the message that found it, never
  dropped. Ages are checked as messages arrive, and every second without them.

- Each live message's ``seq`` and ``bdSeq`` go through :class:`~bridge.sparkplug.sessions.
  SessionTracker` (gaps, deaths, stale deaths, births after a death), counted by rule.

Seams for the host mode (issue 17, item 4): :attr:`SparkplugFlow.on_unknown_alias` is called
with (group, node) whenever a message is parked, :attr:`SparkplugFlow.on_seq_gap` at a gap:
that is where a host would ask the edge node for a rebirth (NCMD ``Node Control/Rebirth``),
rate-limited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.mapping.mapper import Mapped, Mapper
from bridge.mapping.sparkplug_rule import UNKNOWN_ALIAS
from bridge.models import DeadLetter
from bridge.settings import MappingSettings
from bridge.sparkplug.aliases import AliasTables
from bridge.sparkplug.parking import Parked, Parking, ParkingLimits, SparkplugChanges
from bridge.sparkplug.sessions import SessionTracker


def parking_limits(settings: MappingSettings) -> ParkingLimits:
    """The bounds of parked messages from the ``mapping.sparkplug_park_*`` settings."""
    return ParkingLimits(
        max_messages=settings.sparkplug_park_max_messages,
        max_bytes=settings.sparkplug_park_max_bytes,
        max_age_us=round(settings.sparkplug_park_max_age_s * 1_000_000),
    )


@dataclass(slots=True)
class SparkplugWork:
    """What one received message did to the Sparkplug state: the spool changes, the parked
    messages mapped again (with what they became), and those dead-lettered by a bound."""

    changes: SparkplugChanges = field(default_factory=SparkplugChanges)
    replayed: list[tuple[Parked, Mapped]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes or self.replayed or self.dead)


class SparkplugFlow:
    """Alias tables and parked messages of the running bridge."""

    def __init__(self, limits: ParkingLimits = ParkingLimits()) -> None:  # noqa: B008  # frozen
        self.aliases = AliasTables()
        self.parking = Parking(limits)
        self.sessions = SessionTracker()
        self.on_unknown_alias: Callable[[str, str], None] | None = None
        self.on_seq_gap: Callable[[str, str], None] | None = None
        self.events: dict[tuple[str, str], int] = {}  # session events by (rule, event)
        self.parked_total: dict[str, int] = {}  # messages parked, by rule (to count)

    def busy(self, mapped: Mapped) -> bool:
        """Whether :meth:`handle` has anything to do for this message (cheap)."""
        return bool(mapped.births or mapped.park or mapped.seen or self.parking.count)

    def handle(  # one message and what the intake knows of it
        self,
        mapped: Mapped,
        topic: str,
        payload: bytes,
        received_us: int,
        mapper: Mapper,
        *,
        redelivered: bool = False,
    ) -> SparkplugWork | None:
        """Park, replay and expire around one mapped message; None when nothing changed.
        A recognised redelivery (DUP) is not tracked again: its seq was seen already."""
        work = SparkplugWork()
        parking = self.parking
        if mapped.seen is not None and not redelivered:  # replays are out of order
            for event in self.sessions.observe(mapped.seen):
                key = (mapped.rule or "", event)
                self.events[key] = self.events.get(key, 0) + 1
                if event == "seq_gap" and self.on_seq_gap is not None:
                    self.on_seq_gap(mapped.seen.group, mapped.seen.node)
        if mapped.park is not None:
            group, node = mapped.park
            message = Parked(group, node, received_us, topic, bytes(payload), mapped.rule or "")
            if message not in parking:  # a redelivery of a parked message is kept once
                work.changes.park.append(message)
                rule = message.rule
                self.parked_total[rule] = self.parked_total.get(rule, 0) + 1
            for old in parking.park(message):
                self._dead(work, old, "the per-node bound of parked messages was reached")
            if self.on_unknown_alias is not None:
                self.on_unknown_alias(group, node)
        for birth in mapped.births:
            work.changes.births.append(birth)
            for waiting in parking.take(birth.group, birth.node):
                again = mapper.map(waiting.topic, waiting.payload, waiting.received_us)
                if again.park is not None:  # still unknown: waits on, in order, its row kept
                    for old in parking.park(waiting):
                        self._dead(work, old, "the per-node bound of parked messages was reached")
                    continue
                work.changes.unpark.append((waiting.group, waiting.node, waiting.received_us))
                work.replayed.append((waiting, again))
        self._expire(work, received_us)
        return work or None

    def expire(self, now_us: int) -> SparkplugWork | None:
        """Dead-letter the parked messages past their age (when no message comes to do it)."""
        work = SparkplugWork()
        self._expire(work, now_us)
        return work or None

    def _expire(self, work: SparkplugWork, now_us: int) -> None:
        for old in self.parking.expire(now_us):
            self._dead(work, old, "no BIRTH defined its aliases within the parking time")

    @staticmethod
    def _dead(work: SparkplugWork, message: Parked, why: str) -> None:
        work.changes.unpark.append((message.group, message.node, message.received_us))
        work.dead.append(
            DeadLetter(
                UNKNOWN_ALIAS,
                f"parked for a BIRTH of {message.group}/{message.node}: {why}",
                message.topic,
                message.payload,
                message.rule,
                message.received_us,
            )
        )
