"""What the API accepted, kept for ``devices`` and ``verify``: a table of the devices delivered
for (``delivered_devices``: last delivery time, newest point time, points) and an audit of the
accepted points per device, metric and minute of their timestamp (``delivery_audit``: count,
sum, min and max).

Both are written in the transaction that deletes the accepted records: the sweep of the
settled records (:mod:`bridge.spool.settler`; a partial settlement deletes its record at
once), as one appended row of ``audit_log``: the accepted (device, timestamp, metrics, and
the time of their settlement), read from the records, in JSON compressed with zlib; one row
for a sweep's many settlements compresses better and writes fewer pages than one each
(305 -> 268 bytes written per point in `bench disk`). Every :data:`FOLD_EVERY` log rows or
:data:`FOLD_BYTES` (and before a prune or a pick) the log is folded into the two tables, in
the transaction of the write that reached the count: one upsert per key for all of them.
Upserting each delete's keys instead (a batch of 25 devices' records is 100 keys) took two
thirds of the delete's CPU and rewrote the same audit pages in every delete; the log costs one
insert. Readers (``devices``, ``verify``) fold what is still in the log, and the settled
records not swept out yet, into what they read, in one read transaction. A crash keeps the
delete and its log row together, or neither (settled records are then swept again; records
not settled are sent again, and the audit counts a replayed point once more: like the API,
which stores it twice).

Both stay bounded (:meth:`DeliveryAudit.prune`, from housekeeping about once a minute): audit
rows of minutes older than ``spool.audit_retention_s`` (by the points' timestamps, so a
backlog delivered late is audited only if its points are younger than that) are deleted, and
the oldest minutes beyond ``spool.audit_max_rows`` (about 100 bytes each, counted in
``spool.max_bytes`` like everything in the file but dead letters); beyond
``spool.max_delivered_devices`` the least recently delivered devices are evicted and counted
(``meta.delivered_devices_evicted``). Losing either costs only what ``devices`` and
``verify`` can show, never a reading.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.spool.file import SpoolFile, due
from bridge.spool.schema import json_available

MINUTE_US = 60_000_000
_PRUNE_EVERY_S = 60.0
EVICTED_KEY = "delivered_devices_evicted"
# The log is folded at this many rows (one per settlement: at 100 messages a settlement,
# 6,400 messages) or this many bytes, whichever comes first: its bytes count in the cap.
FOLD_EVERY = 64
FOLD_BYTES = 128 << 10


AuditKey = tuple[str, str, int]  # device, metric, minute_us
# The settled records not swept out yet (spool/settler.py), as the sweep audits them.
_SETTLED_ROWS = (
    "SELECT r.device_id, r.ts_us, r.metrics, s.at_us FROM settled s "
    "JOIN records r ON r.seq = s.seq ORDER BY s.seq"
)
# The same as the log's JSON ([device, ts_us, metrics, at_us] each) and the newest at_us,
# built by SQLite: no record decoded and encoded again in Python (about 1 us a record).
_SETTLED_JSON = (
    "SELECT json_group_array(json_array(device_id, ts_us, json(CAST(metrics AS TEXT)), at_us)),"
    " MAX(at_us) FROM (SELECT r.device_id, r.ts_us, r.metrics, s.at_us FROM settled s "
    "JOIN records r ON r.seq = s.seq ORDER BY s.seq)"
)


@dataclass(slots=True)
class Tally:
    """Count, sum, min and max of the accepted values of one key."""

    n: int
    total: float
    lo: float
    hi: float

    def merge(self, other: Tally) -> None:
        self.n += other.n
        self.total += other.total
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)


@dataclass(slots=True)
class DeviceTally:
    """Accepted points of one device: how many, when first and last (bridge clock), the
    newest point timestamp."""

    points: int
    first_us: int
    last_us: int
    last_ts_us: int


@dataclass(slots=True)
class Folded:
    """The audit log folded: per key and per device."""

    keys: dict[AuditKey, Tally]
    devices: dict[str, DeviceTally]
    last_id: int = 0


def fold_log(
    rows: Iterable[tuple[int, int, bytes]], settled: Iterable[tuple[str, int, str, int]] = ()
) -> Folded:
    """Fold ``audit_log`` rows (id, at_us, body), in id order, then the ``settled`` records
    not swept out yet (device, ts_us, metrics as stored, at_us), which their sweep will log."""
    # The values of each key are gathered in a list and tallied once per key by the builtins:
    # a method call per point was most of a fold, which runs on the spool's thread
    # with the interpreter lock held. sum() adds in the same order, so the totals are the same.
    values: dict[tuple[str, int], dict[str, list[float]]] = {}
    devices: dict[str, DeviceTally] = {}
    rows = list(rows)  # bounded: the log is folded at FOLD_EVERY rows or FOLD_BYTES
    for accepted in _accepted(rows, settled):
        for device, ts_us, metrics, at_us in accepted:
            series = values.setdefault((device, ts_us - ts_us % MINUTE_US), {})
            for metric, value in metrics.items():
                found = series.get(metric)
                if found is None:
                    series[metric] = [value]
                else:
                    found.append(value)
            dev = devices.get(device)
            if dev is None:
                devices[device] = DeviceTally(len(metrics), at_us, at_us, ts_us)
            else:
                dev.points += len(metrics)
                dev.last_us = at_us
                dev.last_ts_us = max(dev.last_ts_us, ts_us)
    keys = {
        (device, metric, minute): Tally(len(v), sum(v), min(v), max(v))
        for (device, minute), series in values.items()
        for metric, v in series.items()
    }
    return Folded(keys, devices, rows[-1][0] if rows else 0)


def _accepted(
    rows: Iterable[tuple[int, int, bytes]], settled: Iterable[tuple[str, int, str, int]]
) -> Iterator[list[Sequence[Any]]]:
    """Each log row's records, then the settled ones, as (device, ts_us, metrics, at_us):
    tuples, or the JSON lists a sweep's row holds as they are (not copied into tuples)."""
    for _log_id, row_at_us, body in rows:
        accepted = orjson.loads(zlib.decompress(body))
        # A sweep's row has each settlement's time (it spans many), a settlement's not.
        if accepted and len(accepted[0]) == 3:
            accepted = [(d, t, m, row_at_us) for d, t, m in accepted]
        yield accepted
    yield [
        (device, ts_us, orjson.loads(metrics), at_us) for device, ts_us, metrics, at_us in settled
    ]


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One row of the audit: the accepted points of a device and metric in one minute."""

    device_id: str
    metric: str
    minute_us: int
    n: int
    total: float
    lo: float
    hi: float


@dataclass(frozen=True, slots=True)
class DeliveredDevice:
    """One device the bridge delivered for."""

    device_id: str
    points: int
    first_us: int
    last_us: int
    last_ts_us: int


def minute_of(ts_us: int) -> int:
    """The start of the UTC minute of a timestamp (epoch µs)."""
    return ts_us - ts_us % MINUTE_US


class DeliveryAudit:
    """The delivered-devices table and the audit of accepted points (module docstring)."""

    def __init__(self, file: SpoolFile) -> None:
        self._file = file
        self._next_prune = 0.0
        self._logged: int | None = None  # rows in audit_log; counted at the first record
        self._logged_bytes = 0
        self._json: bool | None = None  # whether SQLite has the JSON functions

    def record(
        self,
        db: sqlite3.Connection,
        records: Iterable[tuple[str, int, dict[str, float]]],
        at_us: int,
    ) -> None:
        """Add accepted records (device, ts_us, metrics), in the caller's transaction.

        Skipped while the disk is full (the spool gave its reserve back): the delete that frees
        space must not grow the file; those points are then missing from the audit (``verify``
        does not check them), never from the API."""
        if self._file.reserve.missing:
            return
        accepted = list(records)
        if accepted:
            # Compressed (level 1: ~40 us for 100 records): a third of the pages to write,
            # twice (WAL, then checkpoint): 462 -> 390 bytes written per point in round 5.
            self._append(db, zlib.compress(orjson.dumps(accepted), 1), at_us)

    def record_settled(self, db: sqlite3.Connection) -> None:
        """Add the settled records (the ``settled`` table), each with the time of its
        settlement, in the caller's transaction: the sweep's, which deletes them. Skipped
        while the disk is full, as :meth:`record`."""
        if self._file.reserve.missing:
            return
        if self._json is None:
            self._json = json_available(db)
        if self._json:
            text, last_us = db.execute(_SETTLED_JSON).fetchone()
            if last_us is not None:
                self._append(db, zlib.compress(text.encode(), 1), int(last_us))
            return
        rows = db.execute(_SETTLED_ROWS).fetchall()
        if rows:
            accepted = [(d, t, orjson.loads(m), a) for d, t, m, a in rows]
            self._append(db, zlib.compress(orjson.dumps(accepted), 1), int(rows[-1][3]))

    def _append(self, db: sqlite3.Connection, body: bytes, at_us: int) -> None:
        db.execute("INSERT INTO audit_log (at_us, body) VALUES (?, ?)", (at_us, body))
        if self._logged is None:
            rows, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM audit_log"
            ).fetchone()
            self._logged, self._logged_bytes = int(rows), int(size)
        else:
            self._logged += 1
            self._logged_bytes += len(body)
        if self._logged >= FOLD_EVERY or self._logged_bytes >= FOLD_BYTES:
            self.fold(db)

    def fold(self, db: sqlite3.Connection) -> None:
        """Fold the log into the two tables, in the caller's write transaction."""
        folded = fold_log(db.execute("SELECT id, at_us, body FROM audit_log ORDER BY id"))
        self._logged = self._logged_bytes = 0
        if not folded.last_id:
            return
        db.executemany(
            "INSERT INTO delivery_audit (minute_us, device_id, metric, n, total, lo, hi) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (minute_us, device_id, metric) DO UPDATE SET "
            "n = n + excluded.n, total = total + excluded.total, lo = min(lo, excluded.lo), "
            "hi = max(hi, excluded.hi)",
            [(mi, d, m, t.n, t.total, t.lo, t.hi) for (d, m, mi), t in folded.keys.items()],
        )
        db.executemany(
            "INSERT INTO delivered_devices (device_id, points, first_us, last_us, last_ts_us) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "points = points + excluded.points, last_us = excluded.last_us, "
            "last_ts_us = max(last_ts_us, excluded.last_ts_us)",
            [(d, t.points, t.first_us, t.last_us, t.last_ts_us) for d, t in folded.devices.items()],
        )
        db.execute("DELETE FROM audit_log WHERE id <= ?", (folded.last_id,))

    def fold_now(self) -> None:
        """Fold the log in a transaction of its own (before a pick; at the cap, for room)."""
        file = self._file
        if file.reserve.missing or self._logged == 0:
            return  # folding may add rows: not while the disk is full
        with file.transaction("audit fold", sync=False):
            self.fold(file.conn)

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction, so that the tables and the log are read as of one moment (a
        fold by the bridge between the two reads would count the log twice, or not at all)."""
        db = self._file.conn
        if db.in_transaction:
            yield db
            return
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def prune_due(self, now: float) -> bool:
        """Whether :meth:`prune` is due (about once a minute, and at once after the clock was
        set back)."""
        return due(now, self._next_prune, _PRUNE_EVERY_S)

    def prune(self, now_us: int) -> tuple[int, int]:
        """Delete audit rows past their retention or over their cap and evict the least
        recently delivered devices beyond theirs, in one transaction; returns (audit rows,
        devices) deleted."""
        file = self._file
        self._next_prune = now_us / 1_000_000 + _PRUNE_EVERY_S
        settings = file.settings
        cutoff = now_us - int(settings.audit_retention_s * 1_000_000)
        db = file.conn
        with file.transaction("prune", sync=False):
            if not file.reserve.missing:
                self.fold(db)  # the caps count every row
            pruned = db.execute(
                "DELETE FROM delivery_audit WHERE minute_us < ?", (cutoff,)
            ).rowcount
            rows = int(db.execute("SELECT COUNT(*) FROM delivery_audit").fetchone()[0])
            if rows > settings.audit_max_rows:
                pruned += db.execute(
                    "DELETE FROM delivery_audit WHERE (minute_us, device_id, metric) IN ("
                    "SELECT minute_us, device_id, metric FROM delivery_audit "
                    "ORDER BY minute_us LIMIT ?)",
                    (rows - settings.audit_max_rows,),
                ).rowcount
            count = int(db.execute("SELECT COUNT(*) FROM delivered_devices").fetchone()[0])
            excess = count - settings.max_delivered_devices
            evicted = 0
            if excess > 0:
                evicted = db.execute(
                    "DELETE FROM delivered_devices WHERE device_id IN (SELECT device_id FROM "
                    "delivered_devices ORDER BY last_us, device_id LIMIT ?)",
                    (excess,),
                ).rowcount
                file.add_to_meta(db, EVICTED_KEY, evicted)
        return int(pruned), int(evicted)

    # -- reading (devices, verify) ---------------------------------------------------------

    def _logged_rows(self, db: sqlite3.Connection) -> Folded:
        """The log and the settled records still to be logged, folded (for the readers)."""
        return fold_log(
            db.execute("SELECT id, at_us, body FROM audit_log ORDER BY id").fetchall(),
            db.execute(_SETTLED_ROWS).fetchall(),
        )

    def devices(self) -> list[DeliveredDevice]:
        """Every device in the table, by id."""
        with self._snapshot() as db:
            rows = db.execute(
                "SELECT device_id, points, first_us, last_us, last_ts_us FROM delivered_devices"
            ).fetchall()
            logged = self._logged_rows(db).devices
        found = {
            str(d): DeliveredDevice(str(d), int(p), int(f), int(la), int(t))
            for d, p, f, la, t in rows
        }
        for device, t in logged.items():
            old = found.get(device)
            if old is None:
                found[device] = DeliveredDevice(
                    device, t.points, t.first_us, t.last_us, t.last_ts_us
                )
            else:
                found[device] = DeliveredDevice(
                    device,
                    old.points + t.points,
                    old.first_us,
                    t.last_us,
                    max(old.last_ts_us, t.last_ts_us),
                )
        return [found[d] for d in sorted(found)]

    def evicted(self) -> int:
        """Devices evicted from the table so far (over the cap)."""
        return int(self._file.meta_get(EVICTED_KEY) or 0)

    def rows(self, since_us: int, until_us: int, devices: Sequence[str] = ()) -> list[AuditRow]:
        """Audit rows with ``since_us <= minute < until_us`` (of ``devices`` if given), by
        device, metric and minute."""
        sql = (
            "SELECT device_id, metric, minute_us, n, total, lo, hi FROM delivery_audit "
            "WHERE minute_us >= ? AND minute_us < ?"
        )
        args: list[object] = [since_us, until_us]
        if devices:
            sql += f" AND device_id IN ({','.join('?' * len(devices))})"
            args.extend(devices)
        with self._snapshot() as db:
            rows = db.execute(sql, args).fetchall()
            logged = self._logged_rows(db).keys
        found = {
            (str(d), str(m), int(mi)): Tally(int(n), float(t), float(lo), float(hi))
            for d, m, mi, n, t, lo, hi in rows
        }
        wanted = set(devices)
        for key, t in logged.items():
            device, _metric, minute = key
            if not since_us <= minute < until_us or (wanted and device not in wanted):
                continue
            old = found.get(key)
            if old is None:
                found[key] = Tally(t.n, float(t.total), float(t.lo), float(t.hi))
            else:
                old.merge(t)
        return [
            AuditRow(d, m, mi, t.n, float(t.total), float(t.lo), float(t.hi))
            for (d, m, mi), t in sorted(found.items())
        ]

    def pick(self, since_us: int, until_us: int, r: float) -> AuditRow | None:
        """One row with ``since_us <= minute < until_us``: a minute at random (position ``r``
        in [0, 1) between the first and the last audited), then a random row of it. Uses the
        minute index only: cheap at any table size. Folds the log first (a write)."""
        self.fold_now()
        db = self._file.conn
        lo, hi = db.execute(
            "SELECT MIN(minute_us), MAX(minute_us) FROM delivery_audit "
            "WHERE minute_us >= ? AND minute_us < ?",
            (since_us, until_us),
        ).fetchone()
        if lo is None:
            return None
        target = int(lo) + int(r * (int(hi) - int(lo) + 1))
        (minute,) = db.execute(
            "SELECT minute_us FROM delivery_audit WHERE minute_us >= ? ORDER BY minute_us LIMIT 1",
            (min(target, int(hi)),),
        ).fetchone()
        found = db.execute(
            "SELECT device_id, metric, minute_us, n, total, lo, hi FROM delivery_audit "
            "WHERE minute_us = ? ORDER BY random() LIMIT 1",
            (minute,),
        ).fetchone()
        d, m, mi, n, t, low, high = found
        return AuditRow(str(d), str(m), int(mi), int(n), float(t), float(low), float(high))
