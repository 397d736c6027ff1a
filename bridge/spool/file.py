"""The spool file: its lock, its SQLite connection, its transactions and what it holds.

Everything the spool's jobs share lives here: the one connection (WAL mode, ``synchronous`` as
configured), the exclusive lock that keeps a second bridge out, the disk reserve, the counters
that the metrics and the delivery loop read (points waiting, bytes used, the oldest receive
time), and the transaction helper that translates SQLite's errors once. A damaged file is never
written to or deleted: it is moved aside and a new spool is started.

All methods are blocking and must run on one thread (see :mod:`bridge.spool.facade`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from bridge.errors import SpoolError, SpoolFull, SpoolLocked
from bridge.models import DeadLetter
from bridge.settings import SpoolSettings
from bridge.spool import schema
from bridge.spool.dlbudget import Held
from bridge.spool.reserve import DiskReserve
from bridge.spool.unswept import Unswept

log = logging.getLogger(__name__)

IN_CHUNK = 900  # seqs per "IN (...)" list: below SQLite's historic 999-variable limit


class SpoolFile:
    """One spool database, opened with :meth:`open` (locked) or :meth:`open_shared`."""

    def __init__(self, settings: SpoolSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.path = settings.path
        self.clock = clock
        self.reserve = DiskReserve(
            self.path.with_name(self.path.name + ".reserve"), settings.reserve_bytes
        )
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self.moved_aside: Path | None = None
        # What the spool holds, kept current by every write so reads need no query.
        self.depth_records = 0
        self.depth_points = 0
        self.oldest_received_us: int | None = None
        self.unswept = Unswept()  # settled, still in ``records``: waiting no more
        self.used_bytes = 0
        self.delivered_points_total = 0
        self.dropped_points_total = 0
        self.held_records = 0  # kept aside by the fair share (spool/fairshare.py)
        self.held_points = 0
        # The dead letters' share of used_bytes: they have their own budget (dlbudget.py).
        self.dead_letters = Held()
        self._data_version = 0
        # Whether transaction() left the connection at the relaxed level; None: not known.
        self._relaxed: bool | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Lock, open (moving a corrupt file aside) and load the counters."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.path.parent}: {exc}") from exc
        self._lock()
        self.reserve.ensure()
        with self._closed_on_failure():
            try:
                self._attach()
                healthy = _healthy(self.conn)
            except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
                log.error("spool %s cannot be read: %s", self.path, exc)
                healthy = False
            if not healthy:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                self._move_aside()
                self._attach()
            schema.install(self.conn, self.path)
            self.load_counters()

    def open_shared(self) -> None:
        """Open an existing spool beside a running bridge, for the ``dead-letters`` tools.

        Takes no lock and never moves a file aside: SQLite's own locking serialises the
        writes, and the bridge notices them through :meth:`external_changes`.

        Raises:
            SpoolError: no spool at the path, or it cannot be read.
        """
        if not self.path.exists():
            raise SpoolError(f"no spool at {self.path} (check spool.path)")
        with self._closed_on_failure():
            self._attach()
            if not _healthy(self.conn):
                raise SpoolError(f"spool {self.path} failed its integrity check")
            schema.install(self.conn, self.path)
            self.load_counters()

    def _attach(self) -> None:
        """Connect to the file; the connection starts at the configured ``synchronous``."""
        self._db = _connect(self.path, self.settings)
        self._relaxed = False

    @contextlib.contextmanager
    def _closed_on_failure(self) -> Iterator[None]:
        """Opening failed: close what was opened (and the lock), SQLite's error translated."""
        try:
            yield
        except sqlite3.Error as exc:
            self.close()
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the database and release the lock (idempotent)."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot create lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SpoolLocked(
                f"spool {self.path} is in use by another metriqo-bridge (pid {holder}); "
                "each instance needs its own spool path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _move_aside(self) -> None:
        # Never delete a damaged spool: it may hold the only copy of readings worth recovering.
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while any(Path(str(target) + sfx).exists() for sfx in ("", "-wal", "-shm")):
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(target) + suffix))
        self.moved_aside = target
        log.error(
            "spool %s was corrupt; moved aside to %s and started a new one", self.path, target
        )

    @property
    def conn(self) -> sqlite3.Connection:
        """The open connection (SpoolError when closed)."""
        if self._db is None:
            raise SpoolError("spool is not open")
        return self._db

    # -- transactions ----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, what: str, *, sync: bool = True) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE … COMMIT``, rolled back on any error and translated once.

        ``sync=False`` commits without waiting for the disk (``synchronous=NORMAL``). Only for
        what may be lost on a power cut without losing a reading: the settlements of delivered
        records and their sweeps. A lost settlement re-sends identical points after a restart
        (a lost sweep only leaves its records settled); and the next synced commit (every
        intake commit is one) makes it durable too, as the WAL is written in order.

        The level is switched before ``BEGIN`` only when it changes (a drain runs several
        settlements per intake commit, and each statement on the spool's thread waits for the
        interpreter lock: performance.md, round 15). Every row this connection writes goes
        through here (:meth:`reclaim` moves no row), so none commits at a level left relaxed.

        Raises:
            SpoolFull: the disk is full (intake treats that as back-pressure; the deletes
                that would free space retry after releasing the reserve, see :meth:`freeing`).
            SpoolError: any other SQLite failure (the caller must not acknowledge after it).
        """
        db = self.conn
        configured = self.settings.synchronous
        relaxed = not sync and configured != "NORMAL"
        try:
            if self._relaxed is not relaxed:
                self._relaxed = None  # not known until the switch has gone through
                db.execute(f"PRAGMA synchronous={'NORMAL' if relaxed else configured}")
                self._relaxed = relaxed
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            if _is_full(exc):
                raise SpoolFull(f"disk full while writing the spool: {exc}") from exc
            raise SpoolError(f"spool {what} failed: {exc}") from exc
        except BaseException:
            self._rollback()  # never leave a transaction open: every later write would fail
            raise

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")

    def freeing(self, write: Callable[[], None]) -> None:
        """Run a write that frees space (a delete): on a full disk, release the reserve and
        try once more, so delivery can go on and intake can resume. Still full → SpoolFull."""
        try:
            write()
        except SpoolFull:
            if not self.reserve.release():
                raise
            write()
        if self.reserve.missing:
            self.reclaim()

    def reclaim(self) -> None:
        """Give the disk space of deleted points back to the filesystem: free pages out of the
        database file, then the WAL copied in and truncated. Best effort, for a full disk."""
        with contextlib.suppress(sqlite3.Error):
            # executescript steps the pragma to the end; execute() would free a single page.
            self.conn.executescript("PRAGMA incremental_vacuum;")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def add_to_meta(self, db: sqlite3.Connection, key: str, n: int) -> None:
        """Add ``n`` to a persistent counter, inside the caller's transaction."""
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (key, n),
        )

    # -- what it holds ---------------------------------------------------------------------

    @property
    def data_bytes(self) -> int:
        """Bytes in use but for the dead letters' share: what ``spool.max_bytes`` caps."""
        return max(0, self.used_bytes - self.dead_letters.bytes)

    @property
    def held_bytes(self) -> int:
        """The held points' share of ``data_bytes`` at the average size of a waiting point."""
        if not self.held_points:
            return 0
        waiting = self.depth_points + self.held_points
        return int(self.data_bytes * self.held_points / waiting)

    @property
    def full(self) -> bool:
        """True when the spool has reached its size cap. Neither dead letters nor held points
        count: each has a budget of its own, so they can never refuse a quiet device's data."""
        return self.data_bytes - self.held_bytes >= self.settings.max_bytes

    def dead_letters_written(self, dead: Sequence[DeadLetter], payload_cap: int) -> None:
        """Count dead letters a transaction stored (after :meth:`refresh_size`), measured
        whenever an estimate could decide "full": the cap is never applied by a guess."""
        self.dead_letters.wrote(dead, int(self.clock() * 1_000_000), payload_cap)
        self._measure_near_the_cap()

    def refresh_size(self) -> None:
        """Re-read the bytes in use (pages minus free pages)."""
        db = self.conn
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        self.used_bytes = int((pages - free) * size)
        self._measure_near_the_cap()

    def _measure_near_the_cap(self) -> None:
        held = self.dead_letters
        if not held.exact and self.used_bytes - held.measured >= self.settings.max_bytes:
            held.measure(self.conn)

    def refresh_oldest(self) -> None:
        """Re-read the receive time of the oldest waiting record (settled ones wait no more)."""
        self.oldest_received_us = self.unswept.oldest_waiting(self.conn)

    def load_counters(self) -> None:
        """Re-read every counter from the database."""
        db = self.conn
        self.unswept.load(db, self.clock())
        n_rec, n_pts = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n), 0) FROM records "
            "WHERE seq NOT IN (SELECT seq FROM settled)"
        ).fetchone()
        self.depth_records, self.depth_points = int(n_rec), int(n_pts)
        h_rec, h_pts = db.execute("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM held").fetchone()
        self.held_records, self.held_points = int(h_rec), int(h_pts)
        self.delivered_points_total = int(self.meta_get("delivered_points") or 0)
        self.dropped_points_total = int(self.meta_get("dropped_points") or 0)
        self._data_version = int(db.execute("PRAGMA data_version").fetchone()[0])
        schema.count_devices(db)
        self.dead_letters.measure(db)
        self.refresh_oldest()
        self.refresh_size()

    def external_changes(self) -> int:
        """Reload the counters if another connection (a ``dead-letters requeue``) wrote to the
        spool since the last call; returns the points it added (0 if none)."""
        version = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
        if version == self._data_version:
            return 0
        before = self.depth_points
        self.load_counters()
        return self.depth_points - before

    def meta_get(self, key: str) -> str | None:
        """Read a small persistent value (e.g. the MQTT client id last used)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        """Write a small persistent value (synced: see :meth:`transaction`)."""
        with self.transaction("meta") as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


# Pages of new spool files. Every commit writes each page it touches to the WAL whole, and a
# group commit or a settled request touches a handful: 1 KiB pages write about 40 % fewer
# bytes per point than SQLite's 4 KiB (flash wear on an edge gateway), at the same CPU.
PAGE_SIZE = 1024
# WAL bytes between automatic checkpoints, at most. SQLite counts this limit in pages (1,000
# by default: every MiB with 1 KiB pages), and each checkpoint writes every page the WAL
# changed since the last one, however often it changed: the hot pages (the ends of the tables,
# the counters, the header) and, in a backlog, the pages of records delivered within the same
# interval are written to the database file once for more transactions. 1 -> 4 MiB: 582 ->
# 493 bytes written per point in a live flow; 4 -> 16 MiB: 285-291 -> 262-265 in a backlog
# drain, 361-370 -> 350-356 in a live flow at 2,000 msg/s, p99 latency unchanged
# (docs/design/performance.md, round 9).
WAL_CHECKPOINT_BYTES = 16 << 20
# checkpoint_bytes keeps the interval within half the disk reserve, because a checkpoint may
# grow the database file by as much as the WAL holds and on a full disk that growth comes out
# of the reserve; but never under this floor, so a reserve under 2 MiB checkpoints every MiB
# rather than after every few transactions.
MIN_WAL_CHECKPOINT_BYTES = 1 << 20


def checkpoint_bytes(reserve_bytes: int) -> int:
    """WAL bytes between checkpoints for a spool with a disk reserve of ``reserve_bytes``:
    :data:`WAL_CHECKPOINT_BYTES`, or half the reserve where that is less (not under
    :data:`MIN_WAL_CHECKPOINT_BYTES`); with no reserve (0), :data:`WAL_CHECKPOINT_BYTES`."""
    if reserve_bytes <= 0:
        return WAL_CHECKPOINT_BYTES
    return max(MIN_WAL_CHECKPOINT_BYTES, min(WAL_CHECKPOINT_BYTES, reserve_bytes // 2))


def due(now: float, planned: float, every: float) -> bool:
    """Whether a job run every ``every`` seconds and next planned at ``planned`` is due at
    ``now``: also when ``planned`` is further off than ``every`` (the clock was set back since
    it was planned; waiting for it would put the job off for as long)."""
    return not now < planned <= now + every


def _connect(path: Path, settings: SpoolSettings) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves, one per group commit.
    new = not path.exists() or path.stat().st_size == 0
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        if new:
            # Lets a full disk get back the pages of delivered points (see reclaim). Only
            # possible on an empty file; older spools keep their pages (a damaged file is
            # never written to: it is moved aside as it is).
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        checkpoint = checkpoint_bytes(settings.reserve_bytes) // page_size
        db.execute(f"PRAGMA wal_autocheckpoint={checkpoint}")
        db.execute(f"PRAGMA synchronous={settings.synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        # The devices' totals (schema.TEMP_DEVICES) live in the temporary database: in memory,
        # never written to disk.
        db.execute("PRAGMA temp_store=MEMORY")
        # Debian's SQLite (and so the container image's) is built with SECURE_DELETE: every
        # page a settlement frees was overwritten with zeros and written to the WAL, then again
        # by the checkpoint. FAST still zeroes deleted rows in the pages a transaction writes
        # anyway, not pages that only go to the free list: 431 -> 399 bytes written per point
        # in `bench disk` (docs/design/performance.md, round 13).
        db.execute("PRAGMA secure_delete=FAST")
        db.execute("PRAGMA journal_size_limit=67108864")  # shrink the WAL after checkpoints
    except BaseException:
        # A file that is not a database fails here, before the spool holds the connection to
        # close it: close it now, or its descriptor stays open until collected.
        db.close()
        raise
    return db


def _healthy(db: sqlite3.Connection) -> bool:
    try:
        row = db.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as exc:
        log.error("spool integrity check failed: %s", exc)
        return False
    if row is None or row[0] != "ok":
        log.error("spool integrity check failed: %s", row[0] if row else "no result")
        return False
    return True


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc)
