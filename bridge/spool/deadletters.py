"""The dead letters kept in the spool: their budget, queries, purging and putting them back
into delivery.

Dead letters are written by the intake writer (bad payloads) and the outbox (points the API
refused). Their budget (``dead_letters.*``: bytes, number, age) is their own, apart from
``spool.max_bytes``; :meth:`DeadLetters.keep_within_budget` prunes the oldest beyond it and
:meth:`DeadLetters.prune_for_disk` makes room for data on a full disk, each pruned letter
counted (:meth:`DeadLetters.take_pruned`). The queries, ``purge`` and ``requeue`` serve the
``dead-letters`` commands beside a running bridge (the spool opened shared) and tests.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.errors import SpoolFull
from bridge.models import DeadLetterRow, Record
from bridge.settings import DeadLetterSettings
from bridge.spool.audit import DeliveryAudit
from bridge.spool.dlbudget import PRUNE_TO, Pruned, cost_sql
from bridge.spool.file import IN_CHUNK, SpoolFile
from bridge.spool.schema import INSERT_RECORD, record_row, sweep_settled

log = logging.getLogger(__name__)
_WALK = 1000  # rows per query when looking for the oldest dead letters holding some bytes


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters a query or requeue covers; empty fields match everything."""

    reasons: tuple[str, ...] = ()
    since_us: int | None = None
    until_us: int | None = None
    ids: tuple[int, ...] = ()
    after_id: int | None = None  # keyset paging: ids in (after_id, through_id]
    through_id: int | None = None

    def where(self) -> tuple[str, list[object]]:
        """SQL condition and parameters."""
        terms: list[str] = []
        args: list[object] = []
        if self.reasons:
            terms.append(f"reason IN ({','.join('?' * len(self.reasons))})")
            args.extend(self.reasons)
        if self.since_us is not None:
            terms.append("at_us >= ?")
            args.append(self.since_us)
        if self.until_us is not None:
            terms.append("at_us < ?")
            args.append(self.until_us)
        if self.ids:
            terms.append(f"id IN ({','.join('?' * len(self.ids))})")
            args.extend(self.ids)
        if self.after_id is not None:
            terms.append("id > ?")
            args.append(self.after_id)
        if self.through_id is not None:
            terms.append("id <= ?")
            args.append(self.through_id)
        return (" AND ".join(terms) or "1"), args


class DeadLetters:
    """The dead letters of a spool file, kept within ``budget``."""

    def __init__(
        self,
        file: SpoolFile,
        budget: DeadLetterSettings | None = None,
        audit: DeliveryAudit | None = None,
    ) -> None:
        self._file = file
        self._audit = audit or DeliveryAudit(file)  # for the sweep before a requeue
        self.budget = budget or DeadLetterSettings()
        self._pruned: Counter[tuple[str, str]] = Counter()

    # -- the budget ----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Measure what the dead letters hold again, exactly (after a write of another kind)."""
        self._file.dead_letters.measure(self._file.conn)

    def keep_within_budget(self) -> None:
        """Prune the oldest dead letters beyond ``max_age_s``, ``max_count`` or ``max_bytes``.

        Cheap when nothing is over: it compares counters. A prune takes a limit down to
        90 % of it, so it runs in batches. On a full disk it gives up until the next call.
        """
        file = self._file
        held = file.dead_letters
        budget = self.budget
        try:
            cutoff = int((file.clock() - budget.max_age_s) * 1_000_000)
            if held.oldest_at_us is not None and held.oldest_at_us < cutoff:
                self._prune("max_age", "at_us < ?", cutoff)
            if held.count > budget.max_count:
                n = held.count - int(budget.max_count * PRUNE_TO)
                row = file.conn.execute(
                    "SELECT id FROM dead_letters ORDER BY id LIMIT 1 OFFSET ?", (n - 1,)
                ).fetchone()
                if row is not None:
                    self._prune("max_count", "id <= ?", int(row[0]))
            if held.bytes > budget.max_bytes and not held.exact:
                self.refresh()
            if held.bytes > budget.max_bytes:
                boundary = self._oldest_holding(held.bytes - int(budget.max_bytes * PRUNE_TO))
                self._prune("max_bytes", "id <= ?", boundary)
        except SpoolFull as exc:
            log.warning("could not prune dead letters now (%s); trying again shortly", exc)

    def keep_disk_room(self, need: int) -> None:
        """Prune the oldest dead letters before the disk is full, if it has less room than
        :meth:`prune_for_disk` makes: on a full disk even the deletes need room (in the WAL,
        and in the database file for the checkpoint that makes it small again)."""
        file, reserve = self._file, self._file.reserve
        if file.dead_letters.count and reserve.free_disk_bytes() < reserve.disk_room(need):
            self.prune_for_disk(need)

    def prune_for_disk(self, need: int) -> bool:
        """The disk is full: prune the oldest dead letters so that a write of ``need`` bytes
        fits; True if some were pruned.

        Prunes until the filesystem has the room :meth:`DiskReserve.disk_room` asks for — and an
        eighth of the dead letters at least, so a flood does not come back here at every
        commit. It deletes in steps of a quarter of the reserve (at least 256 KiB), each given
        back to the filesystem before the next, because on a full disk even a delete needs room
        in the WAL (smaller steps when one does not fit). Nothing to do when the spool is at
        ``spool.max_bytes`` rather than out of disk (dead letters are not counted there).
        """
        file = self._file
        held = file.dead_letters
        if not held.count or file.full:
            return False
        room = file.reserve.disk_room(need)
        at_least = held.bytes // 8
        step = max(256 << 10, file.reserve.size // 4)
        freed = 0
        while held.count and (freed < at_least or file.reserve.free_disk_bytes() < room):
            before = held.bytes
            try:
                self._prune("disk_full", "id <= ?", self._oldest_holding(step))
            except SpoolFull:
                if step < held.page_size:
                    break  # not even the oldest one can go
                step //= 4
                continue
            file.reclaim()
            freed += before - held.bytes
        file.refresh_size()
        return freed > 0

    def take_pruned(self) -> Pruned:
        """Dead letters pruned since the last call."""
        pruned = Pruned.of(self._pruned)
        self._pruned.clear()
        return pruned

    def _prune(self, why: str, cond: str, arg: int) -> None:
        file = self._file
        gone: Counter[str] = Counter()

        def delete() -> None:
            gone.clear()
            # Not synced: a prune lost in a power cut only brings those dead letters back.
            with file.transaction("prune", sync=False) as db:
                for (reason,) in db.execute(
                    f"DELETE FROM dead_letters WHERE {cond} RETURNING reason",  # noqa: S608
                    (arg,),
                ).fetchall():
                    gone[str(reason)] += 1

        file.freeing(delete)
        for reason, n in gone.items():
            self._pruned[why, reason] += n
        self.refresh()
        file.refresh_size()

    def _oldest_holding(self, want: int) -> int:
        """The id up to which the oldest dead letters take at least ``want`` bytes (by
        :func:`~bridge.spool.dlbudget.row_cost`); the newest id if all of them take less."""
        db = self._file.conn
        cost = cost_sql(self._file.dead_letters.page_size)
        after = total = 0
        while True:
            rows = db.execute(
                f"SELECT id, {cost} FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?",  # noqa: S608
                (after, _WALK),
            ).fetchall()
            if not rows:
                return after
            for row_id, size in rows:
                total += int(size)
                if total >= want:
                    return int(row_id)
            after = int(rows[-1][0])

    # -- queries -------------------------------------------------------------------------------

    def recent(self, limit: int = 1000) -> list[tuple[int, str, str, str, bytes, str]]:
        """(at_us, reason, rule, topic, payload, detail) of the newest dead letters."""
        rows = self._file.conn.execute(
            "SELECT at_us, reason, rule, topic, payload, detail FROM dead_letters "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [(int(a), str(b), str(c), str(d), bytes(e), str(f)) for a, b, c, d, e, f in rows]

    def count(self) -> int:
        """Number of dead letters kept."""
        return int(self._file.conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])

    def find(self, which: DeadLetterFilter, limit: int | None = None) -> list[DeadLetterRow]:
        """Dead letters matching ``which``, oldest first."""
        cond, args = which.where()
        rows = self._file.conn.execute(
            "SELECT id, at_us, reason, rule, topic, payload, payload_size, detail "  # noqa: S608
            f"FROM dead_letters WHERE {cond} ORDER BY id LIMIT ?",
            (*args, -1 if limit is None else limit),
        ).fetchall()
        return [
            DeadLetterRow(int(i), int(a), str(r), str(ru), str(t), bytes(p), int(n), str(d))
            for i, a, r, ru, t, p, n, d in rows
        ]

    def find_reasons(self, which: DeadLetterFilter, limit: int) -> list[tuple[int, str]]:
        """(id, reason) of dead letters matching ``which``, oldest first: :meth:`find` without
        reading the payloads."""
        cond, args = which.where()
        rows = self._file.conn.execute(
            f"SELECT id, reason FROM dead_letters WHERE {cond} ORDER BY id LIMIT ?",  # noqa: S608
            (*args, limit),
        ).fetchall()
        return [(int(i), str(r)) for i, r in rows]

    def newest_id(self) -> int:
        """The highest dead-letter id (0 when there are none)."""
        return int(
            self._file.conn.execute("SELECT COALESCE(MAX(id), 0) FROM dead_letters").fetchone()[0]
        )

    def counts(self, which: DeadLetterFilter) -> dict[str, int]:
        """Matching dead letters per reason."""
        cond, args = which.where()
        rows = self._file.conn.execute(
            f"SELECT reason, COUNT(*) FROM dead_letters WHERE {cond} "  # noqa: S608
            "GROUP BY reason ORDER BY reason",
            args,
        ).fetchall()
        return {str(r): int(n) for r, n in rows}

    def purge(self, ids: Sequence[int]) -> dict[str, int]:
        """Delete the dead letters ``ids`` in one transaction; returns how many went, per
        reason (ids already gone are not counted)."""
        file = self._file
        gone: Counter[str] = Counter()
        with file.transaction("purge") as db:
            for start in range(0, len(ids), IN_CHUNK):
                chunk = tuple(ids[start : start + IN_CHUNK])
                marks = ",".join("?" * len(chunk))
                for (reason,) in db.execute(
                    f"DELETE FROM dead_letters WHERE id IN ({marks}) RETURNING reason",  # noqa: S608
                    chunk,
                ).fetchall():
                    gone[str(reason)] += 1
        held = file.dead_letters
        held.count -= sum(gone.values())
        held.exact = False  # the bytes are measured again by whoever needs them
        return dict(gone)

    def requeue(self, ids: Sequence[int], records: Sequence[Record]) -> int:
        """In one transaction: store ``records`` for delivery and delete the dead letters
        ``ids`` they came from; returns the points stored.

        Unlike a group commit this skips the delivered-id check: the user asked for a resend.
        """
        file = self._file
        db = file.conn
        with file.transaction("requeue"):
            # Settled records keep their ids in ``records`` until a sweep: out with them first,
            # or a resend of one of them would be taken for a duplicate. Whatever this process
            # knows: a running bridge may have settled more since it looked.
            self._audit.record_settled(db)
            sweep_settled(db)
            top = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
            db.executemany(INSERT_RECORD, [record_row(r) for r in records])
            points = int(
                db.execute(
                    "SELECT COALESCE(SUM(n), 0) FROM records WHERE seq > ?", (top,)
                ).fetchone()[0]
            )
            for start in range(0, len(ids), IN_CHUNK):
                chunk = tuple(ids[start : start + IN_CHUNK])
                marks = ",".join("?" * len(chunk))
                db.execute(f"DELETE FROM dead_letters WHERE id IN ({marks})", chunk)  # noqa: S608
        file.load_counters()
        return points
