"""``metriqo-bridge backup DEST``: a consistent copy of the spool, safe beside a running bridge.

SQLite's online backup copies the database as of one read transaction, so the copy is whole
even while the bridge commits and deletes (copying the file with ``cp`` while it runs can
produce a torn copy: the WAL holds pages the main file does not). The copy is written beside
DEST, checked and synced, then renamed into place, so DEST is never half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from pathlib import Path

from bridge.settings import Settings

EX_NOINPUT = 66


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dest", type=Path, help="file to write the copy to")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")


def run(settings: Settings, dest: Path, *, force: bool) -> int:
    source = settings.spool.path
    if not source.is_file():
        print(f"metriqo-bridge backup: no spool at {source} (check spool.path)", file=sys.stderr)
        return EX_NOINPUT
    if dest.exists() and not force:
        print(f"metriqo-bridge backup: {dest} exists (use --force)", file=sys.stderr)
        return 2
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
        print(f"metriqo-bridge backup: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {source} to {dest}: {summary}")
    return 0


def _summary(db: sqlite3.Connection) -> str:
    check = db.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"the copy failed its integrity check: {check}")
    records, points = db.execute("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM records").fetchone()
    dead = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    return (
        f"{points} waiting point(s) in {records} record(s), {dead} dead letter(s), "
        f"layout version {version}"
    )
