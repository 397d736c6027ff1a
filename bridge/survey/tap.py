"""``tap``: messages through the real mapper and the sender's batcher, and nothing sent.

Each message becomes an outcome (points, or why not); records are packed into request bodies
as the delivery loop packs them: in arrival order, at most ``max_points`` points a request,
records of one device and time merged (:func:`bridge.batcher.take_batch`). A full request is
released as soon as it is full, the rest when the tap ends (the bridge would send it after
``batch.linger_s``). Coalescing rules are shown before folding: the spool folds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.batcher import take_batch
from bridge.limits import MAX_POINTS_PER_REQUEST
from bridge.mapping.mapper import Mapper
from bridge.models import Record, SpooledRecord

Body = list[dict[str, object]] | dict[str, object]  # api.body: array, or object


@dataclass(frozen=True, slots=True)
class TapOutcome:
    """What the bridge would do with one message."""

    topic: str
    retained: bool
    rule: str | None
    records: tuple[Record, ...]
    failures: tuple[tuple[str, str], ...]
    ignored: bool

    @property
    def verdict(self) -> str:
        """``mapped``, ``partial``, ``ignored``, ``unmatched`` or ``dead_letter``."""
        if self.ignored:
            return "ignored"
        if not self.failures:
            return "mapped"
        if self.failures[0][0] == "unmatched":
            return "unmatched"
        return "partial" if self.records else "dead_letter"


@dataclass(slots=True)
class Tap:
    """The mapper and the batcher, holding records until a request is full."""

    mapper: Mapper
    max_points: int = MAX_POINTS_PER_REQUEST
    single_object: bool = False  # api.body: object: one object per request
    counts: dict[str, int] = field(default_factory=dict)
    points: int = 0
    requests: int = 0
    _pending: list[SpooledRecord] = field(default_factory=list)
    _pending_points: int = 0
    _seq: int = 0

    def take(self, topic: str, payload: bytes, received_us: int, retained: bool) -> TapOutcome:
        """Map one message and hold its records for the next request."""
        mapped = self.mapper.map(topic, payload, received_us)
        outcome = TapOutcome(
            topic,
            retained,
            mapped.rule,
            tuple(mapped.records),
            tuple((f.reason, f.detail) for f in mapped.failures),
            mapped.ignored,
        )
        self.counts[outcome.verdict] = self.counts.get(outcome.verdict, 0) + 1
        for r in mapped.records:
            self._seq += 1
            self._pending.append(
                SpooledRecord(self._seq, r.device_id, r.ts_us, dict(r.metrics), r.received_us)
            )
            self._pending_points += len(r.metrics)
            self.points += len(r.metrics)
        return outcome

    def full_requests(self) -> list[Body]:
        """Bodies of the requests that are full now."""
        return self._release(final=False)

    def flush(self) -> list[Body]:
        """Bodies of every request still held (the tap ends)."""
        return self._release(final=True)

    def _release(self, *, final: bool) -> list[Body]:
        out: list[Body] = []
        while self._pending and (final or self._full()):
            batch = take_batch(self._pending, self.max_points, single_object=self.single_object)
            objects = batch.body_objects()
            out.append(objects[0] if self.single_object else objects)
            self._pending = self._pending[len(batch.records) :]
            self._pending_points -= batch.points
        self.requests += len(out)
        return out

    def _full(self) -> bool:
        # A request is full when the next record would not fit in it: records keep arriving,
        # so one that would still fit is held (the bridge waits batch.linger_s for more).
        batch = take_batch(self._pending, self.max_points, single_object=self.single_object)
        return len(batch.records) < len(self._pending) or batch.points >= self.max_points
