"""What the API accepted, kept for ``devices`` and ``verify``: a table of the devices delivered
for (``delivered_devices``: last delivery time, newest point time, points) and an audit of the
accepted points per device, metric and minute of their timestamp (``delivery_audit``: count,
sum, min and max).

Both are written in the settlement transaction that deletes the accepted records
(:meth:`bridge.spool.outbox.Outbox.delivered`), from the rows it deletes: a batch is aggregated
in Python and costs one upsert per key, so a batch of 100 points of one device in one minute is
two small writes. A crash keeps the delete and the audit together, or neither (the records are
then sent again, and the audit counts a replayed point once more: like the API, which stores
it twice).

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bridge.spool.file import SpoolFile

MINUTE_US = 60_000_000
_PRUNE_EVERY_S = 60.0
EVICTED_KEY = "delivered_devices_evicted"


AuditKey = tuple[str, str, int]  # device, metric, minute_us


@dataclass(slots=True)
class Tally:
    """Count, sum, min and max of the accepted values of one key."""

    n: int
    total: float
    lo: float
    hi: float

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.lo = min(self.lo, value)
        self.hi = max(self.hi, value)


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


def tally(
    records: Iterable[tuple[str, int, dict[str, float]]],
) -> tuple[dict[AuditKey, Tally], dict[str, tuple[int, int]]]:
    """Per (device, metric, minute) tallies, and per device (points, newest timestamp), of
    accepted records given as (device, ts_us, metrics)."""
    keys: dict[AuditKey, Tally] = {}
    devices: dict[str, tuple[int, int]] = {}
    for device, ts_us, metrics in records:
        minute = minute_of(ts_us)
        for metric, value in metrics.items():
            key = (device, metric, minute)
            found = keys.get(key)
            if found is None:
                keys[key] = Tally(1, value, value, value)
            else:
                found.add(value)
        points, newest = devices.get(device, (0, ts_us))
        devices[device] = (points + len(metrics), max(newest, ts_us))
    return keys, devices


class DeliveryAudit:
    """The delivered-devices table and the audit of accepted points (module docstring)."""

    def __init__(self, file: SpoolFile) -> None:
        self._file = file
        self._next_prune = 0.0

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
        keys, devices = tally(records)
        if not keys and not devices:
            return
        db.executemany(
            "INSERT INTO delivery_audit (device_id, metric, minute_us, n, total, lo, hi) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (device_id, metric, minute_us) DO UPDATE SET "
            "n = n + excluded.n, total = total + excluded.total, lo = min(lo, excluded.lo), "
            "hi = max(hi, excluded.hi)",
            [(d, m, minute, t.n, t.total, t.lo, t.hi) for (d, m, minute), t in keys.items()],
        )
        db.executemany(
            "INSERT INTO delivered_devices (device_id, points, first_us, last_us, last_ts_us) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "points = points + excluded.points, last_us = excluded.last_us, "
            "last_ts_us = max(last_ts_us, excluded.last_ts_us)",
            [(d, points, at_us, at_us, newest) for d, (points, newest) in devices.items()],
        )

    def prune_due(self, now: float) -> bool:
        """Whether :meth:`prune` is due (about once a minute)."""
        return now >= self._next_prune

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
            pruned = db.execute(
                "DELETE FROM delivery_audit WHERE minute_us < ?", (cutoff,)
            ).rowcount
            rows = int(db.execute("SELECT COUNT(*) FROM delivery_audit").fetchone()[0])
            if rows > settings.audit_max_rows:
                pruned += db.execute(
                    "DELETE FROM delivery_audit WHERE (device_id, metric, minute_us) IN ("
                    "SELECT device_id, metric, minute_us FROM delivery_audit "
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

    def devices(self) -> list[DeliveredDevice]:
        """Every device in the table, by id."""
        rows = self._file.conn.execute(
            "SELECT device_id, points, first_us, last_us, last_ts_us FROM delivered_devices "
            "ORDER BY device_id"
        ).fetchall()
        return [DeliveredDevice(str(d), int(p), int(f), int(la), int(t)) for d, p, f, la, t in rows]

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
        rows = self._file.conn.execute(sql + " ORDER BY device_id, metric, minute_us", args)
        return [
            AuditRow(str(d), str(m), int(mi), int(n), float(t), float(lo), float(hi))
            for d, m, mi, n, t, lo, hi in rows.fetchall()
        ]

    def pick(self, since_us: int, until_us: int, r: float) -> AuditRow | None:
        """One row with ``since_us <= minute < until_us``: a minute at random (position ``r``
        in [0, 1) between the first and the last audited), then a random row of it. Uses the
        minute index only: cheap at any table size."""
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
