"""The fair share of the spool between devices, so that one runaway device cannot take the
room (or the delivery) of all the others.

Why it works here and not at the broker: PUBACKs go out in receive order and the broker's
in-flight window is shared by every topic, so withholding the acknowledgement of one device's
message stalls every device. The fair share therefore acts after the commit, inside the spool:

- A device is *over its share* when it holds more than ``OVER_SHARE_MARGIN`` times an equal
  share of the points waiting, counting at least two devices (so a device alone in the spool
  still leaves room for one yet to report). The ``devices`` table (in memory, kept by
  triggers: :data:`bridge.spool.schema.TEMP_DEVICES`) gives each device's total without
  scanning the records.
- ``back-pressure``: from ``spool.fair_share_at`` of ``max_bytes`` on, the records of a device
  over its share (and of any device that already has held records, which keeps its order) go
  to the ``held`` table: committed and acknowledged like any other, counted as held, and kept
  out of delivery. Held points have a budget of their own (``spool.held_max_bytes`` on top of
  ``max_bytes``), so the room above the threshold stays for the devices within their share.
  When the held budget is used up the commit is refused (SpoolFull): back-pressure for every
  device, as without the fair share, and nothing lost. :meth:`FairShare.release` moves held
  records back into ``records``, oldest first, whenever the spool is below the threshold.
- ``drop-oldest``: at the cap, room is made from the oldest waiting points of the device
  furthest over its share (its own oldest first); the oldest points of all only when no device
  is over its share.

Per-device figures for ``/debug/top-devices`` (points received in a recent window, points
dropped) are kept in bounded maps: a flood of distinct device ids cannot grow memory.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bridge.errors import SpoolFull
from bridge.models import Record
from bridge.spool.file import IN_CHUNK, SpoolFile

log = logging.getLogger(__name__)

OVER_SHARE_MARGIN = 1.5  # over its share: more than 1.5x an equal share of the waiting points
WINDOW_S = 60.0  # points received per device are counted over this window (and the previous)
TRACKED_DEVICES = 4096  # per window; devices beyond it are counted together as untracked
DROPPED_DEVICES = 1024  # devices whose dropped points are remembered (the largest kept)
TOP_DEVICES_CAP = 100  # the most devices /debug/top-devices lists
DEVICE_ID_CAP = 256  # characters of a device id shown
RELEASE_CHUNK = 5000  # held records moved back per call


@dataclass(frozen=True, slots=True)
class FairStatus:
    """What the fair share is doing, for metrics and the log line."""

    active: bool  # past the threshold (back-pressure) or at the cap (drop-oldest)
    devices: int  # devices with points waiting or held (0 while not active)
    over_share: int  # how many of them are over their share (0 while not active)
    held_points: int


class FairShare:
    """The fair-share decisions of one spool file (see the module docstring).

    Blocking; runs on the spool's thread like the rest of the spool.
    """

    def __init__(self, file: SpoolFile) -> None:
        self._file = file
        self._recent: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self._window_start = file.clock()
        self._previous_start = self._window_start
        self.untracked_points = 0  # this window's, of devices beyond TRACKED_DEVICES
        self._dropped: dict[str, int] = {}
        self.over_share = 0  # last counted by status()
        self._devices = (0, -1.0)  # (devices with points, when counted): a count per second

    # -- thresholds ------------------------------------------------------------------------

    @property
    def _holding(self) -> bool:
        s = self._file.settings
        return s.fair_share and s.when_full == "back-pressure"

    @property
    def threshold_bytes(self) -> int:
        """Bytes (held points not counted) from which devices over their share are held."""
        s = self._file.settings
        return int(s.max_bytes * s.fair_share_at) if self._holding else s.max_bytes

    def _counted_bytes(self) -> int:
        return self._file.data_bytes - self._file.held_bytes

    @property
    def active(self) -> bool:
        """True while a device over its share is held back or loses its own points first.

        Held points count as held back even when the estimate of their bytes, taken out of the
        counted bytes, puts the spool just under the threshold: otherwise the status flaps
        between commits right at it, and the report of the runaway says nothing."""
        file = self._file
        return file.settings.fair_share and (
            file.held_points > 0 or self._counted_bytes() >= self.threshold_bytes
        )

    def share_limit(self, db: sqlite3.Connection) -> float:
        """Points above which a device is over its share."""
        waiting = self._file.depth_points + self._file.held_points
        return OVER_SHARE_MARGIN * waiting / max(self.device_count(db), 2)

    def device_count(self, db: sqlite3.Connection) -> int:
        """Devices with points waiting or held, counted at most once a second (a count
        scans the devices table, and a commit near the cap asks for it every time)."""
        n, at = self._devices
        now = self._file.clock()
        if not 0 <= now - at < 1.0:
            n = int(db.execute("SELECT COUNT(*) FROM devices").fetchone()[0])
            self._devices = (n, now)
        return n

    # -- the commit ------------------------------------------------------------------------

    def count_received(self, records: Sequence[Record]) -> None:
        """Count the points of a commit per device, for the recent window."""
        now = self._file.clock()
        if now - self._window_start >= WINDOW_S:
            fresh = now - self._window_start < 2 * WINDOW_S
            self._previous = self._recent if fresh else {}
            self._previous_start = self._window_start if fresh else now
            self._recent = {}
            self._window_start = now
            self.untracked_points = 0
        recent = self._recent
        for r in records:
            n = len(r.metrics)
            if r.device_id in recent:
                recent[r.device_id] += n
            elif len(recent) < TRACKED_DEVICES:
                recent[r.device_id] = n
            else:
                self.untracked_points += n

    def route(self, records: Sequence[Record]) -> tuple[list[Record], list[Record]]:
        """Split a commit's records into (for delivery, held).

        Raises:
            SpoolFull: held records would exceed ``spool.held_max_bytes``; nothing written.
        """
        file = self._file
        past = self._holding and self._counted_bytes() >= self.threshold_bytes
        if not records or not (past or file.held_records):
            return list(records), []
        db = file.conn
        totals = self._totals(db, {r.device_id for r in records})
        limit = self.share_limit(db) if past else float("inf")
        held_devices = {d for d, (points, held) in totals.items() if held or points + held > limit}
        if not held_devices:
            return list(records), []
        main = [r for r in records if r.device_id not in held_devices]
        held = [r for r in records if r.device_id in held_devices]
        new_points = sum(len(r.metrics) for r in held)
        per_point = file.data_bytes / max(1, file.depth_points + file.held_points)
        budget = file.settings.held_budget
        if file.held_bytes + new_points * per_point > budget:
            heaviest = max(held_devices, key=lambda d: sum(totals[d]))
            raise SpoolFull(
                f"held points reached spool.held_max_bytes ({budget} bytes); device "
                f"{heaviest[:DEVICE_ID_CAP]!r} is over its share of the spool"
            )
        return main, held

    @staticmethod
    def _totals(db: sqlite3.Connection, devices: Iterable[str]) -> dict[str, tuple[int, int]]:
        """(points waiting, points held) of each device (0, 0 when it has none)."""
        wanted = list(devices)
        out = dict.fromkeys(wanted, (0, 0))
        for start in range(0, len(wanted), IN_CHUNK):
            chunk = tuple(wanted[start : start + IN_CHUNK])
            marks = ",".join("?" * len(chunk))
            for device, points, held in db.execute(
                f"SELECT device_id, points, held FROM devices WHERE device_id IN ({marks})",  # noqa: S608
                chunk,
            ):
                out[device] = (int(points), int(held))
        return out

    @staticmethod
    def insert_held(db: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> tuple[int, int]:
        """Insert ``record_row`` rows into ``held`` (inside the commit's transaction), skipping
        ids already waiting, held or recently delivered; returns (records, points) inserted."""
        if not rows:
            return 0, 0
        top = db.execute("SELECT COALESCE(MAX(seq), 0) FROM held").fetchone()[0]
        db.executemany(
            "INSERT OR IGNORE INTO held (rid, device_id, ts_us, metrics, n, received_us) "
            "SELECT ?1, ?2, ?3, ?4, ?5, ?6 "
            "WHERE NOT EXISTS (SELECT 1 FROM delivered_ids WHERE rid = ?1) "
            "AND NOT EXISTS (SELECT 1 FROM records WHERE rid = ?1)",
            rows,
        )
        count, points = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n), 0) FROM held WHERE seq > ?", (top,)
        ).fetchone()
        return int(count), int(points)

    # -- releasing held records ------------------------------------------------------------

    def release(self) -> int:
        """Move held records into ``records`` (new seqs, so each device stays in order),
        oldest first, as far as the room below the threshold allows; returns the points."""
        file = self._file
        room = self.threshold_bytes - self._counted_bytes()
        if not file.held_records or room <= 0:
            return 0
        per_record = file.data_bytes / max(1, file.depth_records + file.held_records)
        want = max(1, min(RELEASE_CHUNK, int(room / max(per_record, 1.0))))
        db = file.conn
        # A move, not a new reading: losing it in a power cut leaves the rows held, so the
        # commit need not wait for the disk (the next synced commit makes it durable anyway).
        with file.transaction("release", sync=False):
            row = db.execute(
                "SELECT seq FROM held ORDER BY seq LIMIT 1 OFFSET ?", (want - 1,)
            ).fetchone()
            last = (
                int(row[0]) if row else int(db.execute("SELECT MAX(seq) FROM held").fetchone()[0])
            )
            count, points = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(n), 0) FROM held WHERE seq <= ?", (last,)
            ).fetchone()
            top = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
            db.execute(
                "INSERT OR IGNORE INTO records (rid, device_id, ts_us, metrics, n, received_us) "
                "SELECT rid, device_id, ts_us, metrics, n, received_us FROM held "
                "WHERE seq <= ? ORDER BY seq",
                (last,),
            )
            moved, moved_points = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(n), 0) FROM records WHERE seq > ?", (top,)
            ).fetchone()
            db.execute("DELETE FROM held WHERE seq <= ?", (last,))
        file.held_records -= int(count)
        file.held_points -= int(points)
        file.depth_records += int(moved)
        file.depth_points += int(moved_points)
        if file.oldest_received_us is None:
            file.refresh_oldest()
        file.refresh_size()
        return int(moved_points)

    # -- drop-oldest -----------------------------------------------------------------------

    def drop_victims(
        self, want: int, handed_out: set[int]
    ) -> tuple[str, list[tuple[int, int]]] | None:
        """The device furthest over its share and its ``want`` oldest records not handed out
        ((seq, points) each), or None when no device is over its share."""
        if not self._file.settings.fair_share:
            return None
        db = self._file.conn
        row = db.execute(
            "SELECT device_id, points FROM devices ORDER BY points DESC LIMIT 1"
        ).fetchone()
        if row is None or int(row[1]) <= self.share_limit(db):
            return None
        device = str(row[0])
        rows = db.execute(
            "SELECT seq, n FROM records WHERE device_id = ? ORDER BY seq LIMIT ?",
            (device, want + len(handed_out)),
        ).fetchall()
        victims = [(int(seq), int(n)) for seq, n in rows if seq not in handed_out][:want]
        return (device, victims) if victims else None

    def dropped(self, device: str, points: int) -> None:
        """Remember points dropped from ``device`` (bounded: the smallest entry gives way)."""
        table = self._dropped
        if device not in table and len(table) >= DROPPED_DEVICES:
            smallest = min(table, key=table.__getitem__)
            if table[smallest] > points:
                return
            del table[smallest]
        table[device] = table.get(device, 0) + points

    # -- what it shows ---------------------------------------------------------------------

    def status(self) -> FairStatus:
        """Counts for the metrics; a query over the devices only while the share is active."""
        file = self._file
        db = file.conn
        active = self.active
        devices = over = 0
        if active:
            devices = self.device_count(db)
            over = int(
                db.execute(
                    "SELECT COUNT(*) FROM devices WHERE points + held > ?", (self.share_limit(db),)
                ).fetchone()[0]
            )
        self.over_share = over
        return FairStatus(active, devices, over, file.held_points)

    def top(self, limit: int) -> dict[str, object]:
        """The heaviest talkers: by points waiting (held included), then by points received
        recently; at most ``TOP_DEVICES_CAP``."""
        limit = max(1, min(limit, TOP_DEVICES_CAP))
        file = self._file
        db = file.conn
        rows = db.execute(
            "SELECT device_id, points, held FROM devices ORDER BY points + held DESC LIMIT ?",
            (limit,),
        ).fetchall()
        totals = {str(d): (int(p), int(h)) for d, p, h in rows}
        recent = self._received()
        talkers = sorted(recent, key=recent.__getitem__, reverse=True)[:limit]
        totals.update(self._totals(db, [d for d in talkers if d not in totals]))
        waiting = file.depth_points + file.held_points
        share_limit = self.share_limit(db)
        active = self.active
        entries = [
            {
                "device_id": device[:DEVICE_ID_CAP],
                "points_waiting": points + held,
                "points_held": held,
                "share_of_spool": round((points + held) / waiting, 4) if waiting else 0.0,
                "over_share": active and points + held > share_limit,
                "points_received_recently": recent.get(device, 0),
                "points_dropped": self._dropped.get(device, 0),
            }
            for device, (points, held) in totals.items()
        ]
        entries.sort(
            key=lambda e: (e["points_waiting"], e["points_received_recently"]), reverse=True
        )
        s = file.settings
        return {
            "fair_share": {
                "enabled": s.fair_share,
                "active": active,
                "spool_bytes": self._counted_bytes(),
                "threshold_bytes": self.threshold_bytes,
                "max_bytes": s.max_bytes,
                "held_bytes": file.held_bytes,
                "held_max_bytes": s.held_budget,
                "points_waiting": waiting,
                "points_held": file.held_points,
                "devices_waiting": self.device_count(db),
                "share_limit_points": round(share_limit, 1),
            },
            "window_s": round(file.clock() - self._previous_start, 1),
            "points_received_untracked": self.untracked_points,
            "devices": entries[:limit],
        }

    def _received(self) -> dict[str, int]:
        merged = dict(self._previous)
        for device, n in self._recent.items():
            merged[device] = merged.get(device, 0) + n
        return merged
