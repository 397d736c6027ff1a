"""The record types that flow from the mapper through the spool to the API, in one place.

Plain frozen dataclasses, and one named tuple (:class:`SpooledRecord`, which delivery makes
for every record it reads), with no behaviour beyond their own identity: the mapper makes
:class:`Record` and :class:`DeadLetter`, the spool stores them and hands back
:class:`SpooledRecord`, :class:`CommitResult` (with the dead letters it :class:`Pruned`) and
:class:`DeadLetterRow`. A payload too large to
keep reaches them as a :class:`PayloadExcerpt`.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class PayloadExcerpt(bytes):
    """The first bytes of a payload over ``mqtt.max_payload_bytes``, all the bridge keeps of it:
    the MQTT wire streams such a payload past instead of buffering it (:mod:`bridge.mqtt.wire`).

    It is ``bytes`` (the kept head) so it travels where any payload does; the mapper sees
    :attr:`size` and dead-letters it as ``too_large``, and the spool records :attr:`size` as the
    dead letter's payload size.

    Attributes:
        size: the length of the whole payload, in bytes.
        digest: 8-byte BLAKE2b of the whole payload, hashed as it streamed past (the intake
            recognises a redelivery by it).
    """

    size: int
    digest: bytes

    def __new__(cls, head: bytes, size: int, digest: bytes) -> PayloadExcerpt:
        self = super().__new__(cls, head)
        self.size = size
        self.digest = digest
        return self


def payload_size(payload: bytes) -> int:
    """The size of the payload as received: the whole one's for an excerpt."""
    return payload.size if isinstance(payload, PayloadExcerpt) else len(payload)


@dataclass(frozen=True, slots=True)
class Coalesce:
    """Fold a rule's points into one per metric and time window before sending.

    Attributes:
        window_us: window length; windows are aligned to the Unix epoch.
        function: ``last``, ``avg``, ``min``, ``max``, ``sum`` or ``count``.
    """

    window_us: int
    function: str


@dataclass(frozen=True, slots=True)
class Deadband:
    """When a metric's new value is worth a data point (:mod:`bridge.deadband` decides).

    Attributes:
        kind: ``absolute`` (moved by more than ``band``), ``relative`` (by more than
            ``band`` times the last sent value's magnitude) or ``on_change`` (changed at all).
        band: the band (0 for ``on_change``).
        heartbeat_us: a value is sent anyway once this much measurement time has passed
            since the last sent one.
    """

    kind: str
    band: float
    heartbeat_us: int


@dataclass(frozen=True, slots=True)
class Deadbands:
    """The deadbands of one rule: a rule-wide one and per-metric overrides.

    Attributes:
        rule: the rule's name (the label of the held-back counter).
        default: the band of every metric without its own (None: those are always sent).
        metrics: metric name → its own band.
    """

    rule: str
    default: Deadband | None
    metrics: tuple[tuple[str, Deadband], ...] = ()

    def of(self, metric: str) -> Deadband | None:
        """The band that decides ``metric`` (None: always sent)."""
        for name, band in self.metrics:
            if name == metric:
                return band
        return self.default


@dataclass(frozen=True, slots=True)
class Record:
    """Metric values of one device at one timestamp: one object of an API request.

    Attributes:
        device_id: the API's device identifier.
        ts_us: measurement time, epoch microseconds UTC.
        metrics: metric name → finite float; each entry is one data point.
        received_us: when the bridge received the message (epoch µs), for delivery lag.
        coalesce: the rule's coalescing window, if any (the spool folds the points).
        deadband: the rule's deadbands, if any (the spool holds back values that stayed
            within them).
        rid: the record id, when it is not that of these metrics: a record the deadband
            trimmed keeps the id of the whole message, so a redelivery of it is recognised
            whatever the second decision keeps (:mod:`bridge.spool.deadband`).
    """

    device_id: str
    ts_us: int
    metrics: dict[str, float]
    received_us: int
    coalesce: Coalesce | None = None
    deadband: Deadbands | None = None
    rid: bytes | None = None

    @property
    def record_id(self) -> bytes:
        """Deterministic id: a redelivered message maps to the same id and is stored once.

        Built from what identifies the points (device, timestamp, metric names) so that the
        point id of each value, ``device_id/metric@timestamp``, is implied by it.
        """
        if self.rid is not None:
            return self.rid
        return record_id(self.device_id, self.ts_us, self.metrics)


def record_id(device_id: str, ts_us: int, metrics: dict[str, float]) -> bytes:
    """16 bytes: the timestamp (8, big-endian, so ids sort by time) then a hash of device,
    timestamp and sorted metric names (8).

    Time first because the spool indexes these ids: data arrives roughly in time order and
    leaves oldest first, so its index then grows at one end and shrinks at the other. A plain
    hash put every insert and every delete on a random index page; with a 100,000-record
    backlog that made commits 5x and deletes 7x slower (bridge spool layout 1 -> 2).
    """
    h = hashlib.blake2b(
        device_id.encode("utf-8", "surrogatepass")
        + b"\x00%d\x00" % ts_us
        + sorted_names(tuple(metrics)),
        digest_size=8,
    )
    return ((ts_us + _TS_OFFSET) & _TS_MASK).to_bytes(8, "big") + h.digest()


@functools.lru_cache(maxsize=1024)
def sorted_names(names: tuple[str, ...]) -> bytes:
    """Metric names sorted, joined by NUL and encoded, as record ids and request keys hash
    them. A flow carries a handful of metric sets, each in one order, so the bytes of the
    recent ones are kept instead of sorted and encoded again for every record."""
    return "\x00".join(sorted(names)).encode("utf-8", "surrogatepass")


_TS_OFFSET = 1 << 63  # signed microseconds to an unsigned key that sorts the same way
_TS_MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message (or part of one) the bridge could not deliver, kept with its reason.

    Attributes:
        reason: bounded label, e.g. ``invalid_json`` or ``api_rejected``.
        detail: human-readable explanation (never contains secrets).
        topic: MQTT topic, or "" for records rejected by the API.
        payload: the original bytes (truncated to a cap by the spool).
        rule: the mapping rule name, or "" when none matched.
        received_us: receive time, epoch microseconds.
    """

    reason: str
    detail: str
    topic: str
    payload: bytes
    rule: str
    received_us: int


class SpooledRecord(NamedTuple):
    """A record as read back from the spool, with its position (``seq``).

    A named tuple rather than a frozen dataclass like the others: delivery makes one per
    record it fetches, and a frozen dataclass's ``__init__`` (a Python function setting each
    field through ``object.__setattr__``) costs 1.6 µs a record, a tuple made from the fetched
    row (``SpooledRecord._make``) 0.3 µs. Change a record with ``_replace``."""

    seq: int
    device_id: str
    ts_us: int
    metrics: dict[str, float]
    received_us: int

    @property
    def points(self) -> int:
        """Data points in this record."""
        return len(self.metrics)


@dataclass(frozen=True, slots=True)
class Pruned:
    """Dead letters pruned, by why (one of :data:`~bridge.spool.dlbudget.PRUNE_REASONS`)
    and by their own reason."""

    counts: tuple[tuple[str, str, int], ...] = ()

    @classmethod
    def of(cls, counts: Mapping[tuple[str, str], int]) -> Pruned:
        """From a mapping of (why, reason) → number."""
        return cls(tuple((why, reason, n) for (why, reason), n in sorted(counts.items()) if n))

    @property
    def total(self) -> int:
        """Dead letters pruned in all."""
        return sum(n for _why, _reason, n in self.counts)

    def by_why(self) -> dict[str, int]:
        """Number pruned per limit (``max_age`` …)."""
        out: Counter[str] = Counter()
        for why, _reason, n in self.counts:
            out[why] += n
        return dict(out)

    def by_reason(self) -> dict[str, int]:
        """Number pruned per dead-letter reason (``invalid_json`` …)."""
        out: Counter[str] = Counter()
        for _why, reason, n in self.counts:
            out[reason] += n
        return dict(out)

    def __add__(self, other: Pruned) -> Pruned:
        merged: Counter[tuple[str, str]] = Counter()
        for why, reason, n in (*self.counts, *other.counts):
            merged[why, reason] += n
        return Pruned.of(merged)


@dataclass(frozen=True, slots=True)
class CommitResult:
    """Outcome of one group commit.

    ``points_dropped`` are waiting (never sent) points the drop-oldest policy deleted to make
    room for this commit; they are counted in the spool's meta table too.
    ``points_dropped_over_share`` is the part of them taken from a device over its fair share,
    and ``points_held`` the points of this commit held back for being over it (stored, not
    yet handed to delivery; not in ``points_inserted``). ``held_back`` are the points of this
    commit that stayed within their rule's deadband, per rule: not stored, on purpose
    (:mod:`bridge.deadband`). ``pruned`` are the dead letters
    pruned to make room for this commit or to keep their budget after it, counted at once.
    """

    records_inserted: int
    points_inserted: int
    records_duplicate: int
    points_duplicate: int
    dead_letters: int
    points_dropped: int = 0
    points_held: int = 0
    points_dropped_over_share: int = 0
    pruned: Pruned = field(default_factory=Pruned)
    held_back: tuple[tuple[str, int], ...] = ()  # (rule, points) within their deadband


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One stored dead letter, as the ``dead-letters`` commands show it."""

    id: int
    at_us: int
    reason: str
    rule: str
    topic: str
    payload: bytes
    payload_size: int
    detail: str
