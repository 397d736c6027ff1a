"""The durable spool: SQLite in WAL mode between the MQTT acknowledgement and the API.

A message is acknowledged to the broker only after its records (or its dead letter) are committed
here, so ``kill -9`` at any instant loses nothing the broker was told is safe. Records are deleted
in the same transaction that counts their delivery. ``sqlite3`` is used only in this module.

All methods of :class:`Spool` are blocking and must run on one thread; :class:`AsyncSpool` gives
the event loop a single worker thread for them, since fsync must not stall the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

import orjson

from bridge.errors import SpoolError, SpoolLocked, SpoolTooNew
from bridge.logs import LogThrottle
from bridge.models import DeadLetter, Record, record_id

log = logging.getLogger(__name__)

Synchronous = Literal["FULL", "NORMAL", "EXTRA"]
WhenFull = Literal["back-pressure", "drop-oldest"]
DEAD_LETTER_PAYLOAD_CAP = 65536  # bytes of payload kept per dead letter; the size is kept too
_IN_CHUNK = 900  # seqs per "IN (...)" list: below SQLite's historic 999-variable limit

# The spool's layout, kept in SQLite's user_version. A newer bridge that changes the layout
# raises it and migrates older files at open; an older bridge refuses a newer file instead of
# misreading it. 0 means a new file or one from before versions were recorded (layout 1).
# 2: record ids begin with the timestamp (see points.record_id); layout 1 ids are recomputed.
SCHEMA_VERSION = 2
_MIGRATE_CHUNK = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: never reuse a delivered seq
    rid BLOB NOT NULL UNIQUE,               -- deterministic id: MQTT redeliveries are stored once
    device_id TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    metrics BLOB NOT NULL,
    n INTEGER NOT NULL,
    received_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us INTEGER NOT NULL,
    reason TEXT NOT NULL,
    rule TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    payload_size INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_reason ON dead_letters (reason, at_us);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
-- Ids of recently delivered records: a broker that redelivers a message after the bridge
-- delivered it (its PUBACK was lost in a broker restart) does not cause a second delivery.
CREATE TABLE IF NOT EXISTS delivered_ids (rid BLOB PRIMARY KEY, at_us INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivered_ids_at ON delivered_ids (at_us);
-- Running aggregates of coalescing rules, one row per device, metric and window. Updated in the
-- same transaction that precedes the MQTT acknowledgement, so they are as durable as records;
-- a closed window is turned into a record by flush_coalesced().
CREATE TABLE IF NOT EXISTS coalesce_state (
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    bucket_us INTEGER NOT NULL,
    window_us INTEGER NOT NULL,
    fn TEXT NOT NULL,
    n INTEGER NOT NULL,
    total REAL NOT NULL,
    lo REAL NOT NULL,
    hi REAL NOT NULL,
    last REAL NOT NULL,
    last_ts INTEGER NOT NULL,
    received_us INTEGER NOT NULL,
    PRIMARY KEY (device_id, metric, bucket_us, fn)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS coalesce_state_end ON coalesce_state (bucket_us);
-- Receive times of committed messages stamped with them (no timestamp in the payload), by
-- MQTT packet id, until their PUBACK is known sent: a redelivery after a crash gets the same
-- time, so the same record id, and is stored once. At most one row per packet id.
CREATE TABLE IF NOT EXISTS unacked (
    mid INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    digest BLOB NOT NULL,
    received_us INTEGER NOT NULL
);
"""


class SpoolFull(SpoolError):
    """The spool reached its size cap or the disk is full: stop acknowledging the broker."""


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """A record as read back from the spool, with its position."""

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
class CommitResult:
    """Outcome of one group commit.

    ``points_dropped`` are waiting (never sent) points the drop-oldest policy deleted to make
    room for this commit; they are counted in the spool's meta table too.
    """

    records_inserted: int
    points_inserted: int
    records_duplicate: int
    points_duplicate: int
    dead_letters: int
    points_dropped: int = 0


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


_Method = TypeVar("_Method", bound=Callable[..., None])


def _frees_space(method: _Method) -> _Method:
    """For writes that free space (deletes): on a full disk, release the reserve and try once
    more, so delivery can go on and intake can resume. Still full → SpoolFull to the caller."""

    @functools.wraps(method)
    def wrapper(self: Spool, *args: object, **kwargs: object) -> None:
        try:
            method(self, *args, **kwargs)
        except SpoolFull:
            if not self.release_reserve():
                raise
            method(self, *args, **kwargs)
        if self.reserve_missing:
            self._reclaim()

    return wrapper  # type: ignore[return-value]


class Spool:
    """Blocking SQLite spool. See the module docstring for the guarantees."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 1 << 30,
        synchronous: Synchronous = "FULL",
        dedup_window_s: float = 900.0,
        when_full: WhenFull = "back-pressure",
        reserve_bytes: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.dedup_window_s = dedup_window_s
        self.when_full = when_full
        # A file of this size beside the spool, given back to the filesystem when the disk is
        # full: in WAL mode even a DELETE needs new pages, so without it a full disk would
        # also stop the deletes that free space.
        self.reserve_bytes = reserve_bytes
        self.reserve_path = path.with_name(path.name + ".reserve")
        self._reserve_ok = False
        self._throttle = LogThrottle(30.0)
        self._next_prune = 0.0
        self.max_bytes = max_bytes
        self.synchronous = synchronous
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self.moved_aside: Path | None = None
        self.depth_records = 0
        self.depth_points = 0
        self.oldest_received_us: int | None = None
        self.used_bytes = 0
        self.delivered_points_total = 0
        self.dropped_points_total = 0
        # Seqs fetched for delivery and not yet deleted: drop-oldest never touches them, so a
        # point is either delivered or counted as dropped, never both.
        self._handed_out: set[int] = set()
        self._data_version = 0

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Lock, open (moving a corrupt file aside) and load the depth counters."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.path.parent}: {exc}") from exc
        self._lock()
        self.ensure_reserve()
        try:
            try:
                self._db = self._connect()
                healthy = self._healthy(self._db)
            except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
                log.error("spool %s cannot be read: %s", self.path, exc)
                healthy = False
            if not healthy:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                self._move_aside()
                self._db = self._connect()
            self._install_schema()
            self._load_counters()
        except sqlite3.Error as exc:
            self.close()
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def open_shared(self) -> None:
        """Open an existing spool beside a running bridge, for the ``dead-letters`` tools.

        Takes no lock and never moves a file aside: SQLite's own locking serialises the
        writes, and the bridge notices them through :meth:`external_changes`.

        Raises:
            SpoolError: no spool at the path, or it cannot be read.
        """
        if not self.path.exists():
            raise SpoolError(f"no spool at {self.path} (check spool.path)")
        try:
            self._db = self._connect()
            if not self._healthy(self._db):
                raise SpoolError(f"spool {self.path} failed its integrity check")
            self._install_schema()
            self._load_counters()
        except sqlite3.Error as exc:
            self.close()
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def ensure_reserve(self, *, quiet: bool = False) -> bool:
        """Create (or re-create after a release) the reserve file; False if the disk has no
        room for it now (logged unless ``quiet``), or none is configured."""
        if self.reserve_bytes <= 0:
            return False
        with contextlib.suppress(OSError):
            if self.reserve_path.stat().st_size >= self.reserve_bytes:
                self._reserve_ok = True
                return True
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)  # real blocks, not a sparse file
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()
            if not quiet:
                log.warning(
                    "cannot reserve %d bytes beside the spool (%s); retrying later",
                    self.reserve_bytes,
                    exc.strerror,
                )
            return False
        self._reserve_ok = True
        return True

    def release_reserve(self) -> bool:
        """Give the reserve back to the filesystem; False if there was none to give."""
        self._reserve_ok = False
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("cannot release the spool's disk reserve %s: %s", self.reserve_path, exc)
            return False
        self._throttle.log(
            log,
            logging.ERROR,
            "reserve",
            "disk full: released the %d-byte reserve beside the spool so delivered points can "
            "be deleted; free disk space (the reserve is re-created once there is room)",
            self.reserve_bytes,
        )
        return True

    @property
    def reserve_missing(self) -> bool:
        """True when a reserve is configured but not in place (released, or no room for it)."""
        return self.reserve_bytes > 0 and not self._reserve_ok

    def _reclaim(self) -> None:
        """Give the disk space of deleted points back to the filesystem: free pages out of the
        database file, then the WAL copied in and truncated. Best effort, for a full disk."""
        with contextlib.suppress(sqlite3.Error):
            # executescript steps the pragma to the end; execute() would free a single page.
            self._conn.executescript("PRAGMA incremental_vacuum;")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

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

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves, one per group commit.
        new = not self.path.exists() or self.path.stat().st_size == 0
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if new:
            # Lets a full disk get back the pages of delivered points (see _reclaim). Only
            # possible on an empty file; older spools keep their pages (a damaged file is never
            # written to: it is moved aside as it is).
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA journal_size_limit=67108864")  # shrink the WAL after checkpoints
        return db

    def _install_schema(self) -> None:
        db = self._conn
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise SpoolTooNew(
                f"spool {self.path} has layout version {found}, written by a newer "
                f"metriqo-bridge (this one knows up to {SCHEMA_VERSION}); it was left untouched. "
                "Run the newer version until the spool is empty, or point spool.path elsewhere"
            )
        db.executescript(_SCHEMA)
        if found < SCHEMA_VERSION:
            if found < 2:
                self._migrate_record_ids()
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _migrate_record_ids(self) -> None:
        """Layout 1 -> 2: recompute every waiting record's id in the new form, in one
        transaction and in chunks (memory stays flat for a spool of millions of records). The
        ids of delivered records are forgotten: they cannot be recomputed, so a message the
        broker redelivers right after the upgrade may be delivered a second time."""
        db = self._conn
        count = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        forgotten = db.execute("SELECT COUNT(*) FROM delivered_ids").fetchone()[0]
        if not count and not forgotten:
            return
        log.info(
            "spool %s: updating the layout to version %d (%d waiting record(s))",
            self.path,
            SCHEMA_VERSION,
            count,
        )
        with self._transaction("layout update"):
            after = 0
            while True:
                rows = db.execute(
                    "SELECT seq, device_id, ts_us, metrics FROM records WHERE seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (after, _MIGRATE_CHUNK),
                ).fetchall()
                if not rows:
                    break
                db.executemany(
                    "UPDATE records SET rid = ? WHERE seq = ?",
                    [(record_id(d, t, orjson.loads(m)), seq) for seq, d, t, m in rows],
                )
                after = rows[-1][0]
            db.execute("DELETE FROM delivered_ids")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")  # with the ids, atomically

    @staticmethod
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

    def _move_aside(self) -> None:
        # Never delete a damaged spool: it may hold the only copy of readings worth recovering.
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))
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

    def _load_counters(self) -> None:
        db = self._conn
        n_rec, n_pts = db.execute("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM records").fetchone()
        self.depth_records, self.depth_points = int(n_rec), int(n_pts)
        self.delivered_points_total = int(self.meta_get("delivered_points") or 0)
        self.dropped_points_total = int(self.meta_get("dropped_points") or 0)
        self._data_version = int(db.execute("PRAGMA data_version").fetchone()[0])
        self._refresh_oldest()
        self._refresh_size()

    def external_changes(self) -> int:
        """Reload the counters if another connection (a ``dead-letters requeue``) wrote to the
        spool since the last call; returns the points it added (0 if none)."""
        version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        if version == self._data_version:
            return 0
        before = self.depth_points
        self._load_counters()
        return self.depth_points - before

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError("spool is not open")
        return self._db

    # -- state -----------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        """True when the spool has reached its size cap."""
        return self.used_bytes >= self.max_bytes

    def _refresh_size(self) -> None:
        db = self._conn
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        self.used_bytes = int((pages - free) * size)

    def _refresh_oldest(self) -> None:
        row = self._conn.execute("SELECT received_us FROM records ORDER BY seq LIMIT 1").fetchone()
        self.oldest_received_us = int(row[0]) if row else None

    def load_unacked(self) -> dict[int, tuple[str, bytes, int]]:
        """Packet id → (topic, digest, receive time) of stamped messages not known acked."""
        rows = self._conn.execute("SELECT mid, topic, digest, received_us FROM unacked").fetchall()
        return {int(m): (str(t), bytes(d), int(r)) for m, t, d, r in rows}

    def meta_get(self, key: str) -> str | None:
        """Read a small persistent value (e.g. the MQTT client id last used)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        """Write a small persistent value."""
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- writes ----------------------------------------------------------------------------

    def commit(
        self,
        records: Sequence[Record],
        dead: Sequence[DeadLetter],
        stamped: Sequence[tuple[int, str, bytes, int]] = (),
        acked: Sequence[int] = (),
        *,
        forget_unacked: bool = False,
    ) -> CommitResult:
        """Store records and dead letters in one durable transaction.

        ``stamped`` are (packet id, topic, payload digest, receive time) of messages in this
        commit whose points carry their receive time; ``acked`` the packet ids whose PUBACK was
        sent since the last commit (their entries are dropped); ``forget_unacked`` drops them all
        first (the broker lost the session). See the ``unacked`` table.

        Raises:
            SpoolFull: the cap is reached or the disk is full; nothing was written.
            SpoolError: any other write failure (the caller must stop: never ack after it).
        """
        if self.reserve_missing and not self.ensure_reserve(quiet=True):
            # Intake must never eat the space the deletes need: it waits for the reserve.
            self._reclaim()
            if not self.ensure_reserve(quiet=True):
                raise SpoolFull("disk full: waiting for room to re-create the spool's reserve")
        dropped = 0
        if self.full and not self._shrink_dedup_ids():
            if self.when_full == "drop-oldest":
                dropped = self._drop_oldest()
            if self.full:
                raise SpoolFull(f"spool holds {self.used_bytes} bytes, cap {self.max_bytes}")
        db = self._conn
        before = self.depth_points
        folded: Sequence[Record] = ()
        if any(r.coalesce is not None for r in records):
            folded = [r for r in records if r.coalesce is not None]
            records = [r for r in records if r.coalesce is None]
        with self._transaction("write"):
            if folded:
                self._fold(db, folded)
            top = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
            cur = db.executemany(
                "INSERT OR IGNORE INTO records (rid, device_id, ts_us, metrics, n, received_us) "
                "SELECT ?1, ?2, ?3, ?4, ?5, ?6 "
                "WHERE NOT EXISTS (SELECT 1 FROM delivered_ids WHERE rid = ?1)",
                [_record_row(r) for r in records],
            )
            inserted = cur.rowcount if records else 0
            points_offered = sum(len(r.metrics) for r in records)
            if inserted == len(records):
                points = points_offered
            else:
                points = db.execute(
                    "SELECT COALESCE(SUM(n), 0) FROM records WHERE seq > ?", (top,)
                ).fetchone()[0]
            if forget_unacked:
                db.execute("DELETE FROM unacked")
            if acked:
                db.executemany("DELETE FROM unacked WHERE mid = ?", [(m,) for m in acked])
            if stamped:
                db.executemany("INSERT OR REPLACE INTO unacked VALUES (?, ?, ?, ?)", stamped)
            if dead:
                now_us = int(self._clock() * 1_000_000)
                db.executemany(
                    "INSERT INTO dead_letters (at_us, reason, rule, topic, payload, payload_size,"
                    " detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            d.received_us or now_us,
                            d.reason,
                            d.rule,
                            d.topic,
                            d.payload[:DEAD_LETTER_PAYLOAD_CAP],
                            len(d.payload),
                            d.detail,
                        )
                        for d in dead
                    ],
                )
        self.depth_records += inserted
        self.depth_points += points
        if self.oldest_received_us is None and inserted:
            self._refresh_oldest()
        self._refresh_size()
        return CommitResult(
            records_inserted=inserted,
            points_inserted=self.depth_points - before,
            records_duplicate=len(records) - inserted,
            points_duplicate=points_offered - points,
            dead_letters=len(dead),
            points_dropped=dropped,
        )

    @staticmethod
    def _fold(db: sqlite3.Connection, records: Sequence[Record]) -> None:
        rows = []
        for r in records:
            c = r.coalesce
            assert c is not None
            bucket = r.ts_us - r.ts_us % c.window_us
            for metric, v in r.metrics.items():
                rows.append(
                    (
                        r.device_id,
                        metric,
                        bucket,
                        c.window_us,
                        c.function,
                        v,
                        v,
                        v,
                        v,
                        r.ts_us,
                        r.received_us,
                    )
                )
        db.executemany(
            "INSERT INTO coalesce_state (device_id, metric, bucket_us, window_us, fn, n, total,"
            " lo, hi, last, last_ts, received_us) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (device_id, metric, bucket_us, fn) DO UPDATE SET n = n + 1,"
            " total = total + excluded.total, lo = min(lo, excluded.lo),"
            " hi = max(hi, excluded.hi),"
            " last = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last ELSE last END,"
            " last_ts = max(last_ts, excluded.last_ts),"
            " received_us = min(received_us, excluded.received_us)",
            rows,
        )

    def flush_coalesced(self, now_us: int, grace_us: int) -> int:
        """Turn windows that ended more than ``grace_us`` ago into records (one per device and
        window, stamped with the window start); returns the points added."""
        db = self._conn
        rows = db.execute(
            "SELECT device_id, metric, bucket_us, fn, n, total, lo, hi, last, received_us "
            "FROM coalesce_state WHERE bucket_us + window_us + ? <= ? "
            "ORDER BY bucket_us, device_id",
            (grace_us, now_us),
        ).fetchall()
        if not rows:
            return 0
        grouped: dict[tuple[str, int], tuple[dict[str, float], int]] = {}
        for device, metric, bucket, fn, n, total, lo, hi, last, received in rows:
            value = {"last": last, "avg": total / n, "min": lo, "max": hi, "sum": total}.get(
                fn, float(n)
            )
            metrics, first = grouped.get((device, bucket), ({}, received))
            metrics[metric] = value
            grouped[(device, bucket)] = (metrics, min(first, received))
        records = [Record(d, b, m, r) for (d, b), (m, r) in grouped.items()]
        with self._transaction("write"):
            db.executemany(
                "INSERT OR IGNORE INTO records (rid, device_id, ts_us, metrics, n, received_us) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [_record_row(r) for r in records],
            )
            db.executemany(
                "DELETE FROM coalesce_state WHERE device_id = ? AND metric = ? AND bucket_us = ?"
                " AND fn = ?",
                [(d, m, b, f) for d, m, b, f, *_ in rows],
            )
        added = sum(len(r.metrics) for r in records)
        self.depth_records += len(records)
        self.depth_points += added
        if self.oldest_received_us is None:
            self._refresh_oldest()
        self._refresh_size()
        return added

    def _shrink_dedup_ids(self) -> bool:
        """Make room by forgetting the older half of the delivered ids; True if no longer full.

        Those ids only guard against a redelivered message being sent twice; waiting readings
        matter more, so they never make the spool refuse new data.
        """
        db = self._conn
        count = db.execute("SELECT COUNT(*) FROM delivered_ids").fetchone()[0]
        if not count:
            return False
        try:
            db.execute(
                "DELETE FROM delivered_ids WHERE at_us <= "
                "(SELECT at_us FROM delivered_ids ORDER BY at_us LIMIT 1 OFFSET ?)",
                (count // 2,),
            )
        except sqlite3.Error as exc:
            log.warning("could not trim the delivered-id memory: %s", exc)
            return False
        log.info("spool at its cap: forgot %d of %d delivered ids to make room", count // 2, count)
        self._refresh_size()
        return not self.full

    def _drop_oldest(self) -> int:
        """Delete the oldest waiting records until the spool is below its cap (with 2 %
        headroom, so the next commits do not drop again at once); returns the points dropped.

        Records handed to a request are skipped. The count goes to the meta table in the same
        transaction, so it survives restarts.
        """
        db = self._conn
        dropped = 0
        target = self.max_bytes * 0.98
        while self.used_bytes >= target and self.depth_records > len(self._handed_out):
            per_record = self.used_bytes / max(1, self.depth_records)
            want = max(16, int((self.used_bytes - target) / per_record) + 1)
            rows = db.execute(
                "SELECT seq, n FROM records ORDER BY seq LIMIT ?", (want + len(self._handed_out),)
            ).fetchall()
            victims = [(seq, n) for seq, n in rows if seq not in self._handed_out][:want]
            if not victims:
                break
            seqs = [seq for seq, _n in victims]
            points = sum(int(n) for _seq, n in victims)
            with self._transaction("drop"):
                for start in range(0, len(seqs), _IN_CHUNK):
                    chunk = tuple(seqs[start : start + _IN_CHUNK])
                    marks = ",".join("?" * len(chunk))
                    db.execute(f"DELETE FROM records WHERE seq IN ({marks})", chunk)  # noqa: S608
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('dropped_points', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                    (points,),
                )
            self.depth_records -= len(seqs)
            self.depth_points -= points
            self.dropped_points_total += points
            dropped += points
            self._refresh_size()
        if dropped:
            self._refresh_oldest()
        return dropped

    @contextlib.contextmanager
    def _transaction(self, what: str, *, sync: bool = True) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE … COMMIT``, rolled back on any error and translated once.

        ``sync=False`` commits without waiting for the disk (``synchronous=NORMAL`` for this
        one transaction). Only for what may be lost on a power cut without losing a reading:
        deletes of delivered records. A lost delete re-sends identical points after a restart;
        and the next synced commit (every intake commit is one) makes it durable too, as the
        WAL is written in order.

        Raises:
            SpoolFull: the disk is full (intake treats that as back-pressure; the deletes
                that would free space retry after releasing the reserve, see _frees_space).
            SpoolError: any other SQLite failure (the caller must not acknowledge after it).
        """
        db = self._conn
        relaxed = not sync and self.synchronous != "NORMAL"
        try:
            if relaxed:
                db.execute("PRAGMA synchronous=NORMAL")
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
        finally:
            if relaxed:
                with contextlib.suppress(sqlite3.Error):
                    db.execute(f"PRAGMA synchronous={self.synchronous}")

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")

    def fetch(self, after_seq: int, limit: int) -> list[SpooledRecord]:
        """Up to ``limit`` records with ``seq > after_seq``, oldest first."""
        rows = self._conn.execute(
            "SELECT seq, device_id, ts_us, metrics, received_us FROM records "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [SpooledRecord(s, d, t, orjson.loads(m), r) for s, d, t, m, r in rows]

    def fetch_newest(self, limit: int) -> list[SpooledRecord]:
        """Up to ``limit`` of the newest records not handed out yet, newest first."""
        rows = self._conn.execute(
            "SELECT seq, device_id, ts_us, metrics, received_us FROM records "
            "ORDER BY seq DESC LIMIT ?",
            (limit + len(self._handed_out),),
        ).fetchall()
        fresh = [row for row in rows if row[0] not in self._handed_out][:limit]
        return [SpooledRecord(s, d, t, orjson.loads(m), r) for s, d, t, m, r in fresh]

    def hand_out(self, seqs: Sequence[int]) -> None:
        """Mark records as taken by a request until :meth:`delivered` or :meth:`reject`."""
        self._handed_out.update(seqs)

    @_frees_space
    def delivered(self, seqs: Sequence[int]) -> None:
        """Delete delivered records, remember their ids and count them, in one transaction.

        The delivery loop batches the seqs of several accepted requests into one call, so the
        fsync of this transaction is shared by all of them.
        """
        if not seqs:
            return
        db = self._conn
        now = self._clock()
        at_us = int(now * 1_000_000)
        points = rows = 0
        with self._transaction("delete", sync=False):
            for start in range(0, len(seqs), _IN_CHUNK):
                chunk = tuple(seqs[start : start + _IN_CHUNK])
                marks = ",".join("?" * len(chunk))
                n_rows, n_points = db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(n), 0) FROM records "  # noqa: S608
                    f"WHERE seq IN ({marks})",
                    chunk,
                ).fetchone()
                db.execute(
                    f"INSERT OR REPLACE INTO delivered_ids (rid, at_us) "  # noqa: S608
                    f"SELECT rid, ? FROM records WHERE seq IN ({marks})",
                    (at_us, *chunk),
                )
                db.execute(f"DELETE FROM records WHERE seq IN ({marks})", chunk)  # noqa: S608
                rows += int(n_rows)
                points += int(n_points)
            if now >= self._next_prune:
                self._next_prune = now + 60.0
                cutoff = int((now - self.dedup_window_s) * 1_000_000)
                db.execute("DELETE FROM delivered_ids WHERE at_us < ?", (cutoff,))
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('delivered_points', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                (points,),
            )
        self._handed_out.difference_update(seqs)
        self.depth_records -= rows
        self.depth_points -= points
        self.delivered_points_total += points
        self._refresh_oldest()
        self._refresh_size()

    @_frees_space
    def reject(self, seqs: Sequence[int], reason: str, detail: str) -> None:
        """Move records the API refused to the dead letters, in one transaction."""
        if not seqs:
            return
        db = self._conn
        marks = ",".join("?" * len(seqs))
        with self._transaction("delete"):
            rows = db.execute(
                f"SELECT device_id, ts_us, metrics, n, received_us FROM records "  # noqa: S608
                f"WHERE seq IN ({marks})",
                tuple(seqs),
            ).fetchall()
            db.executemany(
                "INSERT INTO dead_letters (at_us, reason, rule, topic, payload, payload_size,"
                " detail) VALUES (?1, ?2, '', '', ?3, length(?3), ?4)",
                [
                    (
                        received_us,
                        reason,
                        orjson.dumps(
                            {"device_id": device, "ts_us": ts, "metrics": orjson.loads(metrics)}
                        ),
                        detail,
                    )
                    for device, ts, metrics, _n, received_us in rows
                ],
            )
            db.execute(f"DELETE FROM records WHERE seq IN ({marks})", tuple(seqs))  # noqa: S608
        self._handed_out.difference_update(seqs)
        self.depth_records -= len(rows)
        self.depth_points -= sum(int(r[3]) for r in rows)
        self._refresh_oldest()
        self._refresh_size()

    @_frees_space
    def settle_partly(self, seq: int, refused: dict[str, float], reason: str, detail: str) -> None:
        """The API accepted some metrics of record ``seq`` and refused ``refused``: in one
        transaction dead-letter the refused ones (as a record of just those) and delete the
        record, counting the rest as delivered."""
        db = self._conn
        with self._transaction("delete"):
            row = db.execute(
                "SELECT rid, device_id, ts_us, n, received_us FROM records WHERE seq = ?", (seq,)
            ).fetchone()
            if row is None:
                return
            rid, device, ts_us, n, received_us = row
            if refused:
                payload = orjson.dumps({"device_id": device, "ts_us": ts_us, "metrics": refused})
                db.execute(
                    "INSERT INTO dead_letters (at_us, reason, rule, topic, payload, payload_size,"
                    " detail) VALUES (?, ?, '', '', ?, ?, ?)",
                    (received_us, reason, payload, len(payload), detail),
                )
            db.execute(
                "INSERT OR REPLACE INTO delivered_ids (rid, at_us) VALUES (?, ?)",
                (rid, int(self._clock() * 1_000_000)),
            )
            db.execute("DELETE FROM records WHERE seq = ?", (seq,))
            delivered = int(n) - len(refused)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('delivered_points', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                (delivered,),
            )
        self._handed_out.discard(seq)
        self.depth_records -= 1
        self.depth_points -= int(n)
        self.delivered_points_total += delivered
        self._refresh_oldest()
        self._refresh_size()

    # -- reads for tools and tests ---------------------------------------------------------

    def dead_letters(self, limit: int = 1000) -> list[tuple[int, str, str, str, bytes, str]]:
        """(at_us, reason, rule, topic, payload, detail) of the newest dead letters."""
        rows = self._conn.execute(
            "SELECT at_us, reason, rule, topic, payload, detail FROM dead_letters "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [(int(a), str(b), str(c), str(d), bytes(e), str(f)) for a, b, c, d, e, f in rows]

    def dead_letter_count(self) -> int:
        """Number of dead letters kept."""
        return int(self._conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])

    def find_dead_letters(
        self, which: DeadLetterFilter, limit: int | None = None
    ) -> list[DeadLetterRow]:
        """Dead letters matching ``which``, oldest first."""
        cond, args = which.where()
        rows = self._conn.execute(
            "SELECT id, at_us, reason, rule, topic, payload, payload_size, detail "  # noqa: S608
            f"FROM dead_letters WHERE {cond} ORDER BY id LIMIT ?",
            (*args, -1 if limit is None else limit),
        ).fetchall()
        return [
            DeadLetterRow(int(i), int(a), str(r), str(ru), str(t), bytes(p), int(n), str(d))
            for i, a, r, ru, t, p, n, d in rows
        ]

    def newest_dead_letter_id(self) -> int:
        """The highest dead-letter id (0 when there are none)."""
        return int(
            self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM dead_letters").fetchone()[0]
        )

    def dead_letter_counts(self, which: DeadLetterFilter) -> dict[str, int]:
        """Matching dead letters per reason."""
        cond, args = which.where()
        rows = self._conn.execute(
            f"SELECT reason, COUNT(*) FROM dead_letters WHERE {cond} "  # noqa: S608
            "GROUP BY reason ORDER BY reason",
            args,
        ).fetchall()
        return {str(r): int(n) for r, n in rows}

    def requeue(self, ids: Sequence[int], records: Sequence[Record]) -> int:
        """In one transaction: store ``records`` for delivery and delete the dead letters
        ``ids`` they came from; returns the points stored.

        Unlike :meth:`commit` this skips the delivered-id check: the user asked for a resend.
        """
        db = self._conn
        with self._transaction("requeue"):
            top = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
            db.executemany(
                "INSERT OR IGNORE INTO records (rid, device_id, ts_us, metrics, n, received_us) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [_record_row(r) for r in records],
            )
            points = int(
                db.execute(
                    "SELECT COALESCE(SUM(n), 0) FROM records WHERE seq > ?", (top,)
                ).fetchone()[0]
            )
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = tuple(ids[start : start + _IN_CHUNK])
                marks = ",".join("?" * len(chunk))
                db.execute(f"DELETE FROM dead_letters WHERE id IN ({marks})", chunk)  # noqa: S608
        self._load_counters()
        return points


def _record_row(r: Record) -> tuple[bytes, str, int, bytes, int, int]:
    return (
        r.record_id,
        r.device_id,
        r.ts_us,
        orjson.dumps(r.metrics),
        len(r.metrics),
        r.received_us,
    )


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc)


_P = ParamSpec("_P")
_T = TypeVar("_T")


class AsyncSpool:
    """Runs a :class:`Spool` on one dedicated thread so fsync never blocks the event loop."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-spool")

    async def __aenter__(self) -> AsyncSpool:
        await self.run(self.spool.open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.run(self.spool.close)
        self._pool.shutdown(wait=True)

    async def run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Call ``fn`` on the spool thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
