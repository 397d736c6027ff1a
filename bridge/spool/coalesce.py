"""Coalescing windows in the spool: running aggregates folded in with each group commit, and
turned into records once their window has closed.

The aggregates live in the ``coalesce_state`` table and are updated in the same transaction
that precedes the MQTT acknowledgement (:func:`fold`, called by the intake writer), so they are
as durable as records. A window is sent after ``mapping.coalesce_grace_s``, stamped with the
window start.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from bridge.models import Record
from bridge.spool.file import SpoolFile
from bridge.spool.schema import INSERT_RECORD, record_row


def fold(db: sqlite3.Connection, records: Sequence[Record]) -> None:
    """Add the points of coalescing records to their windows' aggregates (in the caller's
    transaction)."""
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


class Coalescer:
    """Closes the windows of a spool file."""

    def __init__(self, file: SpoolFile) -> None:
        self._file = file

    def flush(self, now_us: int, grace_us: int) -> int:
        """Turn windows that ended more than ``grace_us`` ago into records (one per device and
        window, stamped with the window start); returns the points added."""
        file = self._file
        db = file.conn
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
        with file.transaction("write"):
            db.executemany(INSERT_RECORD, [record_row(r) for r in records])
            db.executemany(
                "DELETE FROM coalesce_state WHERE device_id = ? AND metric = ? AND bucket_us = ?"
                " AND fn = ?",
                [(d, m, b, f) for d, m, b, f, *_ in rows],
            )
        added = sum(len(r.metrics) for r in records)
        file.depth_records += len(records)
        file.depth_points += added
        if file.oldest_received_us is None:
            file.refresh_oldest()
        file.refresh_size()
        return added
