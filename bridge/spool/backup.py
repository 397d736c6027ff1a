"""An online copy of the spool, consistent even beside a running bridge.

SQLite's online backup copies the database as of one read transaction, so the copy is whole
even while the bridge commits and deletes (copying the file with ``cp`` while it runs can
produce a torn copy: the WAL holds pages the main file does not). The copy is written beside
the destination, checked and synced, then renamed into place, so it is never half-written.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from bridge.errors import SpoolError


def backup(source: Path, dest: Path) -> str:
    """Copy ``source`` to ``dest``; returns a one-line summary of what the copy holds.

    Raises:
        SpoolError: the copy could not be made or failed its integrity check (``dest`` is
            left as it was).
    """
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(source)
        try:
            src.execute("PRAGMA busy_timeout=5000")
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # all pages in one step: one consistent snapshot
                summary = _summary(dst)
            finally:
                dst.close()
        finally:
            src.close()
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, dest)
    except (sqlite3.Error, OSError) as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise SpoolError(str(exc)) from exc
    return summary


def _summary(db: sqlite3.Connection) -> str:
    check = db.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"the copy failed its integrity check: {check}")
    # Settled records (layout 6) wait for nothing: only their sweep is still to come.
    settled = db.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'settled'"
    ).fetchone()
    records, points = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(n), 0) FROM records "
        "WHERE seq NOT IN (SELECT seq FROM settled)"
        if settled
        else "SELECT COUNT(*), COALESCE(SUM(n), 0) FROM records"
    ).fetchone()
    dead = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    return (
        f"{points} waiting point(s) in {records} record(s), {dead} dead letter(s), "
        f"layout version {version}"
    )
