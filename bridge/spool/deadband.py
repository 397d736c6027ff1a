"""Deadbands in the spool: the last sent value of every device and metric under a deadband,
and the screening of a commit's records against it.

The state lives in the ``deadband_state`` table and is written in the same transaction as the
records it let through, before their MQTT acknowledgement (the intake writer calls
:meth:`DeadbandGate.screen` before and :meth:`DeadbandGate.store` inside that transaction):
a crash keeps both or neither, so a restart neither resends every value nor loses a change.
The decisions themselves are :func:`bridge.deadband.decide`'s.

A record of which some points were held back keeps the id of the whole message. After a crash
between the commit and the PUBACKs, a redelivered message is decided again; a point the first
decision held back may now be older than a value sent after it in the same commit, and pass.
With the whole message's id the redelivery still meets its stored (or delivered) record and is
ignored as a whole: no point is sent twice. (A message of which every point was held back left
no record, so such a point can then go out as an extra one; never a lost one.)

Only this connection writes the table and the spool runs one operation at a time, so reading
the state before the transaction and writing it inside is consistent.

The table stays bounded: a row lives until twice its heartbeat after the last point that
moved it (by receive time); :meth:`DeadbandGate.prune` deletes older rows, which a device
that keeps publishing refreshes at least once a heartbeat. Losing a row costs one extra point
(the next value is sent), never a change.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import Counter
from collections.abc import Sequence

from bridge.deadband import Sent, decide
from bridge.models import Record
from bridge.spool.file import SpoolFile

_CHUNK = 400  # (device, metric) pairs per lookup: well below SQLite's 32766 variables

# One state row: (device_id, metric, value, ts_us, keep_until_us).
StateRow = tuple[str, str, float, int, int]


@dataclasses.dataclass(slots=True)
class Screened:
    """What a commit's deadband records became."""

    records: list[Record]  # to store: only the points that left their band
    held_back: Counter[str]  # points held back, by rule
    state: dict[tuple[str, str], StateRow]  # rows to write with the records


class DeadbandGate:
    """Decides which points of deadband rules are sent, against the stored state."""

    def __init__(self, file: SpoolFile) -> None:
        self._file = file

    @property
    def _db(self) -> sqlite3.Connection:
        return self._file.conn

    def prune_stale(self, now_us: int) -> int:
        """Delete the rows kept past their time, in a transaction of its own (none when
        there is nothing to delete); returns how many."""
        if not self.stale(now_us):
            return 0
        with self._file.transaction("prune", sync=False):
            return self.prune(now_us)

    def screen(self, records: Sequence[Record]) -> Screened:
        """The records with their held-back points removed (and those with none left
        dropped), in order; records without a deadband pass as they are. Points are decided
        one after the other, so several values of one metric in one commit see each other."""
        last = self._load(
            {(r.device_id, m) for r in records if r.deadband is not None for m in r.metrics}
        )
        rows: dict[tuple[str, str], StateRow] = {}
        held: Counter[str] = Counter()
        out: list[Record] = []
        for r in records:
            bands = r.deadband
            if bands is None:
                out.append(r)
                continue
            kept: dict[str, float] = {}
            for metric, value in r.metrics.items():
                band = bands.of(metric)
                if band is None:
                    kept[metric] = value
                    continue
                key = (r.device_id, metric)
                before = last.get(key)
                send, after = decide(before, value, r.ts_us, band)
                if not send:
                    held[bands.rule] += 1
                    continue
                kept[metric] = value
                if after is not None and after != before:
                    last[key] = after
                    keep_until = r.received_us + 2 * band.heartbeat_us
                    rows[key] = (r.device_id, metric, after.value, after.ts_us, keep_until)
            if len(kept) == len(r.metrics):
                out.append(r)
            elif kept:
                # The id of the whole message: its redelivery is stored once (or recognised as
                # delivered) even if the points decided differently the second time.
                out.append(dataclasses.replace(r, metrics=kept, rid=r.record_id))
        return Screened(out, held, rows)

    def store(self, rows: Sequence[StateRow]) -> None:
        """Write the new last-sent values (in the caller's transaction)."""
        self._db.executemany(
            "INSERT INTO deadband_state (device_id, metric, value, ts_us, keep_until_us) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id, metric) DO UPDATE SET "
            "value = excluded.value, ts_us = excluded.ts_us, "
            "keep_until_us = max(keep_until_us, excluded.keep_until_us)",
            rows,
        )

    def prune(self, now_us: int) -> int:
        """Delete the rows kept past their time (in the caller's transaction); returns how
        many."""
        return self._db.execute(
            "DELETE FROM deadband_state WHERE keep_until_us < ?", (now_us,)
        ).rowcount

    def stale(self, now_us: int) -> bool:
        """Whether :meth:`prune` has anything to do (a read: no write transaction for
        nothing)."""
        row = self._db.execute(
            "SELECT 1 FROM deadband_state WHERE keep_until_us < ? LIMIT 1", (now_us,)
        ).fetchone()
        return row is not None

    def _load(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Sent]:
        found: dict[tuple[str, str], Sent] = {}
        pairs = sorted(keys)
        for start in range(0, len(pairs), _CHUNK):
            chunk = pairs[start : start + _CHUNK]
            marks = ",".join(["(?, ?)"] * len(chunk))
            flat = [x for pair in chunk for x in pair]
            # A join from the keys, not "(device_id, metric) IN (VALUES …)": SQLite 3.40 scans
            # the whole table for that form (27x slower at 100,000 series), and looks each key
            # up by the primary key for this one (CROSS JOIN fixes the order).
            rows = self._db.execute(
                "SELECT s.device_id, s.metric, s.value, s.ts_us "  # noqa: S608
                f"FROM (VALUES {marks}) AS k CROSS JOIN deadband_state AS s "
                "ON s.device_id = k.column1 AND s.metric = k.column2",
                flat,
            ).fetchall()
            for device, metric, value, ts_us in rows:
                found[(device, metric)] = Sent(float(value), int(ts_us))
        return found
