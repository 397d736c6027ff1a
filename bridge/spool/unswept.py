"""The settled records still in the spool file, as the connection's thread knows them.

A settlement counts records as delivered and leaves them in ``records`` with their seqs in the
``settled`` table (:data:`~bridge.spool.schema.SETTLED`); a sweep deletes them later, for many
settlements at once. Until then every reader of waiting records leaves them out, and this set
lets it do that without a query. It is rebuilt from the table at open.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

_STEP = 64  # records read per step over the settled front of the spool


class Unswept:
    """The seqs of the settled records not swept out yet."""

    def __init__(self) -> None:
        self.seqs: set[int] = set()
        self.top = 0  # the highest of them (0: none)
        self.since: float | None = None  # when the oldest was settled (wall clock)
        self._floor = 0  # every record at or below this seq is settled or gone

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seqs: Iterable[int], now: float) -> None:
        """Records whose settlement committed."""
        seqs = list(seqs)
        if seqs:
            if not self.seqs:
                self.since = now
            self.seqs.update(seqs)
            self.top = max(self.top, *seqs)

    def clear(self) -> None:
        """The settled records left ``records`` (their sweep committed)."""
        self.seqs.clear()
        self.top = 0
        self.since = None

    def load(self, db: sqlite3.Connection, now: float) -> None:
        """Read them from the ``settled`` table (at open, or after another writer)."""
        self.clear()
        self.add((int(seq) for (seq,) in db.execute("SELECT seq FROM settled")), now)

    def above(self, seq: int) -> int:
        """How many of them have a seq above ``seq``."""
        return sum(1 for s in self.seqs if s > seq) if self.top > seq else 0

    def oldest_waiting(self, db: sqlite3.Connection) -> int | None:
        """The receive time of the oldest record that is not settled, or None."""
        if not self.seqs:
            row = db.execute("SELECT received_us FROM records ORDER BY seq LIMIT 1").fetchone()
            return int(row[0]) if row else None
        # Settled records lie at the front when delivery goes oldest first: step over them
        # from where the last call stopped (seqs only grow, so that position stays true).
        floor = self._floor
        while True:
            rows = db.execute(
                "SELECT seq, received_us FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                (floor, _STEP),
            ).fetchall()
            for seq, received_us in rows:
                if seq not in self.seqs:
                    self._floor = floor
                    return int(received_us)
                floor = seq
            if len(rows) < _STEP:
                self._floor = floor
                return None
