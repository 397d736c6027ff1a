"""Queries over the dead letters kept in the spool, and putting them back into delivery.

Used by the ``dead-letters`` commands beside a running bridge (the spool opened shared) and by
tests. Dead letters are written by the intake writer (bad payloads) and the outbox (points the
API refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.models import DeadLetterRow, Record
from bridge.spool.file import IN_CHUNK, SpoolFile
from bridge.spool.schema import INSERT_RECORD, record_row


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
    """The dead letters of a spool file."""

    def __init__(self, file: SpoolFile) -> None:
        self._file = file

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

    def requeue(self, ids: Sequence[int], records: Sequence[Record]) -> int:
        """In one transaction: store ``records`` for delivery and delete the dead letters
        ``ids`` they came from; returns the points stored.

        Unlike a group commit this skips the delivered-id check: the user asked for a resend.
        """
        file = self._file
        db = file.conn
        with file.transaction("requeue"):
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
