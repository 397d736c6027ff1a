"""Pages written per transaction, by the table or index they belong to: what ``bench disk``
reports (:mod:`bridge.lab.bench.disk_mode`) to show where a spool's disk writes go.

Each transaction appends the pages it changed to the WAL, whole, one frame each; the frame's
header names the page. After each transaction the new frames are read and each page is given
to its b-tree by SQLite's ``dbstat`` (pages it does not list are the free list's and the
pointer map's). Automatic checkpoints are turned off on the connection for the census, so the
WAL keeps every frame: use a spool opened for the census alone.
"""

from __future__ import annotations

import sqlite3
import struct
from collections import Counter
from pathlib import Path

from bridge.spool.file import SpoolFile

_WAL_HEADER, _FRAME_HEADER = 32, 24
UNLISTED = "free list, pointer map"


class PageCensus:
    """Pages per transaction by b-tree, counted by kind of transaction (``take``)."""

    def __init__(self, file: SpoolFile) -> None:
        self._db = file.conn
        self._wal = Path(f"{file.path}-wal")
        self._offset = _WAL_HEADER
        self.pages: dict[str, Counter[str]] = {}
        self.transactions: Counter[str] = Counter()

    def start(self) -> bool:
        """Turn automatic checkpoints off and skip the frames written so far; False when this
        SQLite has no ``dbstat`` (then there is no census)."""
        try:
            self._db.execute("SELECT 1 FROM dbstat LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            return False
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._frames()
        return True

    def _frames(self) -> list[int]:
        if not self._wal.exists():
            return []
        data = self._wal.read_bytes()
        if len(data) < _WAL_HEADER:
            return []
        page_size = struct.unpack(">I", data[8:12])[0]
        pages = []
        while self._offset + _FRAME_HEADER + page_size <= len(data):
            pages.append(struct.unpack(">I", data[self._offset : self._offset + 4])[0])
            self._offset += _FRAME_HEADER + page_size
        return pages

    def take(self, kind: str) -> None:
        """Count the pages the transaction just committed wrote, under ``kind``."""
        pages = self._frames()
        owners = dict(self._db.execute("SELECT pageno, name FROM dbstat"))
        self.transactions[kind] += 1
        counted = self.pages.setdefault(kind, Counter())
        for page in pages:
            counted[owners.get(page, UNLISTED)] += 1

    def per_transaction(self) -> dict[str, dict[str, float]]:
        """For each kind, pages per transaction by b-tree, most first."""
        return {
            kind: {name: round(n / self.transactions[kind], 2) for name, n in c.most_common()}
            for kind, c in self.pages.items()
        }
