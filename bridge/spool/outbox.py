"""The delivery side of the spool: handing records out in batches, then settling each one
(the settling itself in :mod:`bridge.spool.settler`).

A record is handed out to a request and stays in the spool until the transaction that counts
its acceptance (:meth:`Outbox.delivered`) or moves it to the dead letters (:meth:`Outbox.reject`,
:meth:`Outbox.settle_partly`); settled records not swept out yet are never handed out again
(:class:`~bridge.spool.unswept.Unswept`). Handed-out records are never deleted by the
drop-oldest policy, so a point is either delivered or counted as dropped, never both. Oldest
first by default, a cursor marks what has been handed out; ``newest_first`` takes the newest
waiting records.

Fair batches: when one device holds more than half of the oldest-first batches while other
devices have points waiting, the batches are taken across devices instead
(:func:`~bridge.batcher.take_fair_batches`), each device's records read from its own oldest
waiting one on. Without an index by device (it would cost every commit), a device's records
are found by scanning forward from a position that only ever moves forward (the ``devices``
table's ``head``, the cursor, and what this outbox handed out of that device), so a drain scans
the records once per device it serves. A fair batch interrupted by a restart is rebuilt from
what waits then: the same points, possibly in other batches.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Sequence

import orjson

from bridge.batcher import Batch, dominant_device, take_batch, take_fair_batches
from bridge.models import SpooledRecord
from bridge.spool.audit import DeliveryAudit
from bridge.spool.file import SpoolFile
from bridge.spool.schema import RECORD_COLUMNS, json_available, spooled
from bridge.spool.settler import Settler

# The next ? records after a seq, as one JSON array: Python's sqlite3 gives up and retakes the
# interpreter lock at every statement step, and while the event loop is busy each retake can
# wait for it; one step instead of one per row. The stored metrics are JSON already and go in
# as they are.
_FETCH_JSON = (
    "SELECT '[' || group_concat('[' || seq || ',' || json_quote(device_id) || ',' || ts_us "
    "|| ',' || CAST(metrics AS TEXT) || ',' || received_us || ']') || ']' FROM ("
    "SELECT seq, device_id, ts_us, metrics, received_us FROM records WHERE seq > ? "
    "ORDER BY seq LIMIT ?)"
)

_record = SpooledRecord._make
_by_seq = operator.itemgetter(0)  # SpooledRecord.seq, without a Python call per record


def fetch_points(
    db: sqlite3.Connection, after: int, points: int, per_record: int
) -> tuple[list[SpooledRecord], int]:
    """The records after seq ``after`` that batches of ``points`` can take, and the one after
    them (to see that the last batch is full); and the points of the smallest. The rows asked
    for are estimated from ``per_record`` (the smallest of the last fetch), so one statement is
    usually enough. Needs the JSON functions (:func:`~bridge.spool.schema.json_available`)."""
    rows: list[SpooledRecord] = []
    total = 0
    while True:
        limit = (points - total) // per_record + 1
        (text,) = db.execute(_FETCH_JSON, (after, limit)).fetchone()
        if text is None:
            break
        got = list(map(_record, orjson.loads(text)))
        got.sort(key=_by_seq)  # an aggregate's order is not promised
        rows += got
        total += sum(len(r.metrics) for r in got)
        per_record = max(1, min(len(r.metrics) for r in got))
        if total > points or len(got) < limit:
            break
        after = got[-1].seq
    return rows, per_record


class Outbox:
    """Hands out and settles the records of a spool file."""

    def __init__(self, file: SpoolFile, audit: DeliveryAudit | None = None) -> None:
        self._file = file
        self.audit = audit or DeliveryAudit(file)  # what was accepted (spool/audit.py)
        # Seqs fetched for delivery and not yet settled (see the module docstring).
        self.handed_out: set[int] = set()
        self._cursor = 0  # every record up to this seq is handed out (or gone)
        self.fair = file.settings.fair_share
        # For fair batches: seq -> (device, points) of the records handed out, and where to
        # resume scanning for each device (every record of it below is handed out or gone).
        self._handed_info: dict[int, tuple[str, int]] = {}
        self._resume: dict[str, int] = {}
        self._json: bool | None = None  # whether SQLite has the JSON functions
        self._per_record = 1  # points of the smallest record last fetched
        self.settler = Settler(file, self.audit, self._settled)

    # -- handing out -----------------------------------------------------------------------

    def take_batches(
        self, count: int, max_points: int, *, single_object: bool, newest_first: bool
    ) -> list[Batch]:
        """The next batch (and up to ``count - 1`` more, if they are full), marked handed out.

        One call fills every free request slot: a partial batch after a full one waits for its
        linger, as a first one would.
        """
        if newest_first:
            rows = self.fetch_newest(max_points)
            if not rows:
                return []
            batch = take_batch(rows, max_points, single_object=single_object)
            batch = Batch(batch.records[::-1], batch.points)  # the body stays in time order
            self.hand_out(batch.seqs)
            return [batch]
        handed = self.handed_out
        ahead = sum(1 for seq in handed if seq > self._cursor)  # taken by fair batches
        # Settled after a fair batch and not swept out yet: fetch() leaves them out.
        settled_ahead = self._file.unswept.top > self._cursor
        want = max_points * count
        if self._json is None:
            self._json = json_available(self._file.conn)
        if not ahead and not settled_ahead and self._json:
            rows, self._per_record = fetch_points(
                self._file.conn, self._cursor, want, self._per_record
            )
        else:
            rows = [r for r in self.fetch(self._cursor, want + ahead) if r.seq not in handed]
        batches: list[Batch] = []
        start = 0
        while start < len(rows) and len(batches) < count:
            batch = take_batch(rows[start:], max_points, single_object=single_object)
            if batches and batch.points < max_points:
                break
            batches.append(batch)
            start += len(batch.records)
        if self.fair and batches and dominant_device(batches) is not None:
            fair = self._fair_batches(count, max_points, single_object=single_object)
            batches = fair or batches
        if batches:
            self.hand_out([seq for b in batches for seq in b.seqs])
            if self.fair:
                info = self._handed_info
                for b in batches:
                    info.update((r.seq, (r.device_id, r.points)) for r in b.records)
            for r in rows:  # the cursor moves over the prefix now handed out
                if r.seq not in handed:
                    break
                self._cursor = r.seq
        return batches

    def _fair_batches(self, count: int, max_points: int, *, single_object: bool) -> list[Batch]:
        """Batches taken across the devices with points waiting (see the module docstring);
        empty when no other device has points waiting beside the dominant one."""
        db = self._file.conn
        taken, unswept = self.handed_out, self._file.unswept.seqs
        inflight: dict[str, int] = {}
        for seq, (device, points) in list(self._handed_info.items()):
            if seq in self.handed_out:
                inflight[device] = inflight.get(device, 0) + points
            else:
                del self._handed_info[seq]
        waiting = [
            (max(int(head), self._resume.get(str(d), 0), self._cursor + 1), str(d))
            for d, points, head in db.execute("SELECT device_id, points, head FROM devices")
            if int(points) > inflight.get(str(d), 0)
        ]
        if len(waiting) < 2:
            return []
        waiting.sort()
        want = max_points * count
        lanes = waiting[:want]
        per = max(1, -(-want // len(lanes)))  # records per device: enough for its quanta
        queues = []
        for start, device in lanes:
            rows = db.execute(
                f"SELECT {RECORD_COLUMNS} FROM records WHERE device_id = ? AND seq >= ? "  # noqa: S608
                "ORDER BY seq LIMIT ?",
                (device, start, per),
            ).fetchall()
            queues.append(
                [spooled(row) for row in rows if row[0] not in taken and row[0] not in unswept]
            )
        batches = take_fair_batches(queues, count, max_points, single_object=single_object)
        if len(self._resume) > 4 * len(lanes) + 1024:
            self._resume.clear()  # bounded; positions are only an optimisation
        for b in batches:
            for r in b.records:
                self._resume[r.device_id] = max(self._resume.get(r.device_id, 0), r.seq + 1)
        return batches

    def fetch(self, after_seq: int, limit: int) -> list[SpooledRecord]:
        """Up to ``limit`` waiting records with ``seq > after_seq``, oldest first (settled
        records not swept out yet are left out)."""
        file = self._file
        skip = file.unswept.above(after_seq)
        rows = file.conn.execute(
            f"SELECT {RECORD_COLUMNS} FROM records WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
            (after_seq, limit + skip),
        ).fetchall()
        if not skip:
            return [spooled(row) for row in rows]
        unswept = file.unswept.seqs
        return [spooled(row) for row in rows if row[0] not in unswept][:limit]

    def fetch_newest(self, limit: int) -> list[SpooledRecord]:
        """Up to ``limit`` of the newest records not handed out yet, newest first."""
        taken, unswept = self.handed_out, self._file.unswept.seqs
        rows = self._file.conn.execute(
            f"SELECT {RECORD_COLUMNS} FROM records ORDER BY seq DESC LIMIT ?",  # noqa: S608
            (limit + len(taken) + len(unswept),),
        ).fetchall()
        return [spooled(row) for row in rows if row[0] not in taken and row[0] not in unswept][
            :limit
        ]

    def hand_out(self, seqs: Sequence[int]) -> None:
        """Mark records as taken by a request until they are settled."""
        self.handed_out.update(seqs)

    def _settled(self, seqs: Sequence[int]) -> None:
        """Forget records that left the spool, here and in the fair batches' table (which
        otherwise keeps one entry per record ever delivered while no device dominates)."""
        self.handed_out.difference_update(seqs)
        info = self._handed_info
        if info:
            for seq in seqs:
                info.pop(seq, None)

    # -- settling (spool/settler.py) -------------------------------------------------------

    def delivered(self, seqs: Sequence[int], points: Sequence[int] | None = None) -> None:
        """:meth:`Settler.delivered <bridge.spool.settler.Settler.delivered>`."""
        self.settler.delivered(seqs, points)

    def sweep(self) -> None:
        """:meth:`Settler.sweep <bridge.spool.settler.Settler.sweep>`."""
        self.settler.sweep()

    def reject(self, seqs: Sequence[int], reason: str, detail: str) -> None:
        """:meth:`Settler.reject <bridge.spool.settler.Settler.reject>`."""
        self.settler.reject(seqs, reason, detail)

    def settle_partly(self, seq: int, refused: dict[str, float], reason: str, detail: str) -> None:
        """:meth:`Settler.settle_partly <bridge.spool.settler.Settler.settle_partly>`."""
        self.settler.settle_partly(seq, refused, reason, detail)
