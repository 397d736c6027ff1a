"""What the dead letters hold in the spool file, and the arithmetic of their budget.

Dead letters have a budget of their own (``dead_letters.*``), apart from ``spool.max_bytes``,
which caps the points waiting for delivery: a flood of bad messages must never make the bridge
withhold acknowledgements for good ones. So the spool needs the dead letters' share of its
pages, and :class:`Held` keeps it, with their number and the receive time of the oldest:

- exactly, from SQLite's ``dbstat`` table (the pages of the table and its index, partly empty
  pages included, as ``spool.max_bytes`` counts them), when the spool is opened, after every
  prune and whenever another process changed the file (``dead-letters purge`` or
  ``requeue``);
- in between, by adding an estimate for each dead letter written, generous on purpose (see
  :func:`row_cost`): an estimate too low would count dead-letter pages as waiting data, and
  the bridge measures again within a second.

Where SQLite was built without ``dbstat`` the estimate is summed over the table instead.
The budget's limits are applied by :class:`~bridge.spool.deadletters.DeadLetters`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.models import DeadLetter, Pruned

__all__ = ["PRUNE_REASONS", "PRUNE_TO", "Held", "Pruned", "columns_size", "cost_sql", "row_cost"]

PRUNE_REASONS = ("max_age", "max_count", "max_bytes", "disk_full")
PRUNE_TO = 0.9  # a prune takes the oldest down to 90 % of a limit, so it runs in batches

# Bytes of a dead letter's cell beside its columns: cell pointer, varints, record header, the
# two integers; rounded up. And its entry in the (reason, at_us) index, whose pages fill about
# half when several reasons interleave.
_CELL_OVERHEAD = 48
_INDEX_ENTRY = 80
_PAGES_PER_WRITE = 3

_TABLES = ("dead_letters", "dead_letters_reason")
_COST_SQL = (
    "length(payload) + length(CAST(topic AS BLOB)) + length(CAST(rule AS BLOB)) + "
    "length(CAST(detail AS BLOB)) + 2 * length(CAST(reason AS BLOB))"
)


def row_cost(size: int, page_size: int = 4096) -> int:
    """Estimated bytes of pages taken by a dead letter whose columns hold ``size`` bytes.

    Rows are appended in id order, so a table page holds as many whole rows as fit: a row of
    2.1 KB takes a page of 4 KiB to itself. A row too large for a page keeps a part in it and
    spills the rest into overflow pages, counted here as whole pages, the first one too.
    """
    if size + _CELL_OVERHEAD > page_size - 35:
        overflow = (size + page_size - 5) // (page_size - 4)
        return (overflow + 1) * page_size + _INDEX_ENTRY
    per_page = (page_size - 8) // (size + _CELL_OVERHEAD)
    return (page_size + per_page - 1) // per_page + _INDEX_ENTRY


def cost_sql(page_size: int) -> str:
    """:func:`row_cost` as an SQL expression over a ``dead_letters`` row."""
    s = f"({_COST_SQL})"
    per_page = f"({page_size - 8} / ({s} + {_CELL_OVERHEAD}))"
    return (
        f"(CASE WHEN {s} + {_CELL_OVERHEAD} > {page_size - 35} "
        f"THEN (({s} + {page_size - 5}) / {page_size - 4} + 1) * {page_size} "
        f"ELSE ({page_size} + {per_page} - 1) / {per_page} END + {_INDEX_ENTRY})"
    )


def columns_size(reason: str, rule: str, topic: str, payload_len: int, detail: str) -> int:
    """Bytes in the columns of a dead letter (as :data:`_COST_SQL` counts them)."""
    return (
        payload_len
        + len(topic.encode("utf-8", "surrogatepass"))
        + len(rule.encode("utf-8", "surrogatepass"))
        + len(detail.encode("utf-8", "surrogatepass"))
        + 2 * len(reason.encode("utf-8", "surrogatepass"))
    )


@dataclass(slots=True)
class Held:
    """The dead letters in a spool file: how many, their bytes of pages, the oldest.

    ``exact`` is False while ``bytes`` includes estimates (see the module docstring).
    """

    count: int = 0
    bytes: int = 0
    oldest_at_us: int | None = None
    exact: bool = True
    page_size: int = 4096
    measured: int = 0  # ``bytes`` at the last measure

    def measure(self, db: sqlite3.Connection) -> None:
        """Re-read everything from the file: a scan of the table and of its pages."""
        count, oldest = db.execute("SELECT COUNT(*), MIN(at_us) FROM dead_letters").fetchone()
        self.count = int(count)
        self.oldest_at_us = None if oldest is None else int(oldest)
        self.page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        self.bytes = self.measured = _pages_bytes(db, self.page_size)
        self.exact = True

    def wrote(self, dead: Sequence[DeadLetter], now_us: int, payload_cap: int) -> None:
        """Count dead letters a transaction just stored (their receive time, or ``now_us``
        without one; payloads cut to ``payload_cap``), by estimate: each row, and once after a
        measure a page each for the table, its index and their interior pages, of which only
        the last can be partly filled (rows are appended)."""
        if dead and self.exact:
            self.bytes += _PAGES_PER_WRITE * self.page_size
        for d in dead:
            size = columns_size(
                d.reason, d.rule, d.topic, min(len(d.payload), payload_cap), d.detail
            )
            at_us = d.received_us or now_us
            self.count += 1
            self.bytes += row_cost(size, self.page_size)
            if self.oldest_at_us is None or at_us < self.oldest_at_us:
                self.oldest_at_us = at_us
            self.exact = False


def _pages_bytes(db: sqlite3.Connection, page_size: int) -> int:
    marks = ",".join("?" * len(_TABLES))
    try:
        # Aggregated: one row per table, so the scan reads the pages but returns two rows.
        row = db.execute(
            f"SELECT COALESCE(SUM(pgsize), 0) FROM dbstat('main', 1) WHERE name IN ({marks})",  # noqa: S608
            _TABLES,
        ).fetchone()
        return int(row[0])
    except sqlite3.OperationalError:  # SQLite built without SQLITE_ENABLE_DBSTAT_VTAB
        row = db.execute(
            f"SELECT COALESCE(SUM({cost_sql(page_size)}), 0) FROM dead_letters"  # noqa: S608
        ).fetchone()
        return int(row[0])
