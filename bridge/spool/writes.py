"""The intake side of the spool: the group commit that precedes every MQTT acknowledgement.

One durable transaction stores the records, the dead letters and the receive times of
receive-stamped messages of a whole group of messages; only after it returns may they be
acknowledged, so ``kill -9`` at any instant loses nothing the broker was told is safe. At the
size cap the spool makes room in this order: the delivered-id memory gives way first, then
(only with ``when_full: drop-oldest``) the oldest waiting points, those of a device over its
fair share first; otherwise the commit is refused with SpoolFull and intake withholds its
acknowledgements (back-pressure). Near the cap, the records of a device over its share are
held instead (:mod:`bridge.spool.fairshare`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from functools import partial

from bridge.errors import SpoolError, SpoolFull
from bridge.models import CommitResult, DeadLetter, Record, payload_size
from bridge.sparkplug.aliases import AliasRow
from bridge.sparkplug.parking import Parked, SparkplugChanges
from bridge.spool.coalesce import fold
from bridge.spool.deadband import DeadbandGate, Screened
from bridge.spool.fairshare import FairShare
from bridge.spool.file import IN_CHUNK, SpoolFile
from bridge.spool.outbox import Outbox
from bridge.spool.schema import insert_records, record_row
from bridge.spool.sparkplug import load_aliases, load_parked, store_changes

log = logging.getLogger(__name__)

# Delivered ids forgotten per transaction when making room (about 0.5 MB of WAL).
_FORGET_STEP = 8192

DEAD_LETTER_PAYLOAD_CAP = 65536  # bytes of payload kept per dead letter; the size is kept too

# Stamped message: (MQTT packet id, topic, payload digest, receive time).
Stamped = tuple[int, str, bytes, int]


class IntakeWriter:
    """Group commits into a spool file."""

    def __init__(
        self, file: SpoolFile, outbox: Outbox, fair: FairShare, deadbands: DeadbandGate
    ) -> None:
        self._file = file
        self._outbox = outbox
        self._fair = fair
        self._deadbands = deadbands

    def commit(
        self,
        records: Sequence[Record],
        dead: Sequence[DeadLetter],
        stamped: Sequence[Stamped] = (),
        acked: Sequence[tuple[int, int]] = (),
        *,
        forget_unacked: bool = False,
        sparkplug: Sequence[SparkplugChanges] = (),
    ) -> CommitResult:
        """Store records and dead letters in one durable transaction.

        ``stamped`` are the messages in this commit whose points carry their receive time;
        ``acked`` the (packet id, receive time) whose PUBACK the broker has read since the last
        commit (their entries are dropped, and older ones of the same id: the broker has reused
        it since; a newer one is another message's and stays); ``forget_unacked`` drops them
        all first (the broker lost the session). See the ``unacked`` table. ``sparkplug``:
        what the messages of this commit change in the Sparkplug alias tables and parked
        messages, in receive order (:mod:`bridge.spool.sparkplug`).

        Raises:
            SpoolFull: the cap is reached or the disk is full; nothing was written.
            SpoolError: any other write failure (the caller must stop: never ack after it).
        """
        file = self._file
        reserve = file.reserve
        if reserve.missing and not reserve.ensure(quiet=True):
            # Intake must never eat the space the deletes need: it waits for the reserve. On a
            # small disk the delivered-id memory alone can keep it out after a drain.
            file.reclaim()
            if not reserve.ensure(quiet=True) and not self._forget_when_idle(_reserve_back):
                raise SpoolFull("disk full: waiting for room to re-create the spool's reserve")
        dropped = fair_dropped = 0
        if file.full and not self._shrink_dedup_ids(_below_cap):
            if file.settings.when_full == "drop-oldest":
                dropped, fair_dropped = self._drop_oldest()
            if file.full:
                raise SpoolFull(
                    f"spool holds {file.data_bytes} bytes, cap {file.settings.max_bytes}"
                )
        db = file.conn
        before = file.depth_points
        records, folded, screened = self._split(records)
        fair = self._fair
        main, held = fair.route(records)  # SpoolFull: the held points' budget is used up
        with file.transaction("write"):
            if folded:
                fold(db, folded)
            if screened is not None and screened.state:
                self._deadbands.store(list(screened.state.values()))
            inserted, points, offered = self._insert(db, main)
            held_records, held_points = fair.insert_held(db, [record_row(r) for r in held])
            if forget_unacked:
                db.execute("DELETE FROM unacked")
            if acked:
                db.executemany("DELETE FROM unacked WHERE mid = ? AND received_us <= ?", acked)
            if stamped:
                db.executemany("INSERT OR REPLACE INTO unacked VALUES (?, ?, ?, ?)", stamped)
            if dead:
                self._insert_dead(db, dead)
            if sparkplug:
                store_changes(db, sparkplug)
        fair.count_received(records)
        file.depth_records += inserted
        file.depth_points += points
        file.held_records += held_records
        file.held_points += held_points
        if file.oldest_received_us is None and inserted:
            file.refresh_oldest()
        file.refresh_size()
        offered += sum(len(r.metrics) for r in held)
        if dead:  # their own budget, apart from the cap (see dlbudget.py)
            file.dead_letters_written(dead, DEAD_LETTER_PAYLOAD_CAP)
        return CommitResult(
            records_inserted=inserted + held_records,
            points_inserted=file.depth_points - before,
            records_duplicate=len(records) - inserted - held_records,
            points_duplicate=offered - points - held_points,
            dead_letters=len(dead),
            points_dropped=dropped,
            points_held=held_points,
            points_dropped_over_share=fair_dropped,
            held_back=tuple(sorted(screened.held_back.items())) if screened else (),
        )

    def _split(
        self, records: Sequence[Record]
    ) -> tuple[Sequence[Record], Sequence[Record], Screened | None]:
        """(records to store, coalescing records to fold, the deadband screening if any)."""
        folded: Sequence[Record] = ()
        if any(r.coalesce is not None for r in records):
            folded = [r for r in records if r.coalesce is not None]
            records = [r for r in records if r.coalesce is None]
        if not any(r.deadband is not None for r in records):
            return records, folded, None
        # Decided before the transaction and stored inside it: nothing else writes the state.
        screened = self._deadbands.screen(records)
        return screened.records, folded, screened

    @staticmethod
    def _insert(db: sqlite3.Connection, records: Sequence[Record]) -> tuple[int, int, int]:
        """Insert records that are neither stored nor recently delivered; returns (records
        inserted, points inserted, points offered).

        The recently delivered ids are looked up for the whole group in a few ``IN`` lists,
        not by a subquery per row: the same filter, in the same transaction, at about a
        third of the statement work per record. Only ids up to the newest delivered one are
        looked up: ids sort by time, and new readings, the common case, come after it (about
        0.4 of the commit's 10.6 us a message with 300,000 ids remembered).
        """
        top = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
        rows = [record_row(r) for r in records]
        newest = db.execute("SELECT MAX(rid) FROM delivered_ids").fetchone()[0]
        older = [row[0] for row in rows if newest is not None and row[0] <= newest]
        delivered: set[bytes] = set()
        for start in range(0, len(older), IN_CHUNK):
            chunk = older[start : start + IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            found = db.execute(
                f"SELECT rid FROM delivered_ids WHERE rid IN ({marks})",  # noqa: S608
                chunk,
            ).fetchall()
            delivered.update(rid for (rid,) in found)
        if delivered:
            rows = [row for row in rows if row[0] not in delivered]
        inserted = insert_records(db, rows)
        offered = sum(len(r.metrics) for r in records)
        if inserted == len(records):
            return inserted, offered, offered
        points = db.execute(
            "SELECT COALESCE(SUM(n), 0) FROM records WHERE seq > ?", (top,)
        ).fetchone()[0]
        return inserted, int(points), offered

    def _insert_dead(self, db: sqlite3.Connection, dead: Sequence[DeadLetter]) -> None:
        now_us = int(self._file.clock() * 1_000_000)
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
                    payload_size(d.payload),
                    d.detail,
                )
                for d in dead
            ],
        )

    def load_aliases(self) -> list[AliasRow]:
        """The Sparkplug alias tables as committed (at start)."""
        return load_aliases(self._file.conn)

    def load_parked(self) -> list[Parked]:
        """The Sparkplug messages parked until their BIRTH (at start)."""
        return load_parked(self._file.conn)

    def load_unacked(self) -> dict[int, tuple[str, bytes, int]]:
        """Packet id → (topic, digest, receive time) of stamped messages whose PUBACK the
        broker is not known to have read."""
        rows = self._file.conn.execute(
            "SELECT mid, topic, digest, received_us FROM unacked"
        ).fetchall()
        return {int(m): (str(t), bytes(d), int(r)) for m, t, d, r in rows}

    def forget_for_disk(self, need: int) -> bool:
        """The disk is full: forget delivered ids until a write of ``need`` bytes has room
        (:meth:`DiskReserve.disk_room`); True once it has. See :meth:`_forget_when_idle`."""
        return self._forget_when_idle(lambda file: _disk_room(file, need))

    def _forget_when_idle(self, done: Callable[[SpoolFile], bool]) -> bool:
        """On a full disk, forget delivered ids (:meth:`_shrink_dedup_ids`) only once nothing
        waits to be delivered: until then the deletes of delivered points make the room, and
        the ids of what was just sent still guard against redeliveries. After a long drain into
        a small disk the id memory can be most of the file; it would keep intake out until the
        dedup window's prune."""
        file = self._file
        if file.full or file.depth_records or file.held_points:
            return False
        return self._shrink_dedup_ids(done)

    def _shrink_dedup_ids(self, done: Callable[[SpoolFile], bool]) -> bool:
        """Make room by forgetting the older half of the delivered ids, until ``done`` (the
        spool below its cap, or the disk reserve back in place); True once it is.

        Those ids only guard against a redelivered message being sent twice; waiting readings
        matter more, so they never make the spool refuse new data.
        """
        file = self._file
        db = file.conn
        if file.unswept.seqs:
            # Settled records first: they wait for nothing, and a sweep forgets nothing.
            try:
                self._outbox.sweep()
            except SpoolError as exc:
                log.warning("could not sweep the settled records out: %s", exc)
            if done(file):
                return True
        # The audit's log first: folded, it takes less room and nothing is forgotten.
        try:
            self._outbox.audit.fold_now()
        except SpoolFull:
            pass  # folding can add rows: on a full disk it waits, the ids are forgotten first
        except SpoolError as exc:
            log.warning("could not fold the delivery audit's log: %s", exc)
        if done(file):
            return True
        forgotten, room = 0, False
        while count := db.execute("SELECT COUNT(*) FROM delivered_ids").fetchone()[0]:
            half = max(1, count // 2)
            try:
                # In steps, each its own transaction, which on a full disk may use the reserve
                # (SpoolFile.freeing): a delete needs room in the WAL too.
                for step in range(0, half, _FORGET_STEP):
                    file.freeing(partial(_forget_oldest, file, min(_FORGET_STEP, half - step)))
            except SpoolError as exc:
                log.warning("could not trim the delivered-id memory: %s", exc)
                return False
            forgotten += half
            if room := done(file):
                break
        if forgotten:
            log.info("spool or disk full: forgot %d delivered ids to make room", forgotten)
        return room

    def _drop_oldest(self) -> tuple[int, int]:
        """Delete the oldest waiting records until the spool is below its cap (with 2 %
        headroom, so the next commits do not drop again at once): those of the device furthest
        over its fair share first. Returns the points dropped, and how many of them were of a
        device over its share.

        Records handed to a request are skipped. The count goes to the meta table in the same
        transaction, so it survives restarts.
        """
        file = self._file
        db = file.conn
        # Settled records are not waiting (a failed sweep may have left some): never victims.
        handed_out = self._outbox.handed_out | file.unswept.seqs
        dropped = fair_dropped = 0
        target = file.settings.max_bytes * 0.98
        while file.data_bytes >= target and file.depth_records > len(self._outbox.handed_out):
            per_record = file.data_bytes / max(1, file.depth_records)
            want = max(16, int((file.data_bytes - target) / per_record) + 1)
            over = self._fair.drop_victims(want, handed_out)
            if over is not None:
                victims = over[1]
            else:
                rows = db.execute(
                    "SELECT seq, n FROM records ORDER BY seq LIMIT ?", (want + len(handed_out),)
                ).fetchall()
                victims = [(seq, n) for seq, n in rows if seq not in handed_out][:want]
            if not victims:
                break
            seqs = [seq for seq, _n in victims]
            points = sum(int(n) for _seq, n in victims)
            with file.transaction("drop"):
                for start in range(0, len(seqs), IN_CHUNK):
                    chunk = tuple(seqs[start : start + IN_CHUNK])
                    marks = ",".join("?" * len(chunk))
                    db.execute(f"DELETE FROM records WHERE seq IN ({marks})", chunk)  # noqa: S608
                file.add_to_meta(db, "dropped_points", points)
            file.depth_records -= len(seqs)
            file.depth_points -= points
            file.dropped_points_total += points
            dropped += points
            if over is not None:
                fair_dropped += points
                self._fair.dropped(over[0], points)
            file.refresh_size()
        if dropped:
            file.refresh_oldest()
        return dropped, fair_dropped


def _forget_oldest(file: SpoolFile, n: int) -> None:
    with file.transaction("forget delivered ids"):
        file.conn.execute(
            "DELETE FROM delivered_ids WHERE id IN "
            "(SELECT id FROM delivered_ids ORDER BY id LIMIT ?)",
            (n,),
        )


def _below_cap(file: SpoolFile) -> bool:
    file.refresh_size()
    return not file.full


def _reserve_back(file: SpoolFile) -> bool:
    """Give the freed pages back to the filesystem, then try the reserve again."""
    file.reclaim()
    file.refresh_size()
    return file.reserve.ensure(quiet=True)


def _disk_room(file: SpoolFile, need: int) -> bool:
    """Give the freed pages back to the filesystem, then see if a write of ``need`` fits."""
    file.reclaim()
    file.refresh_size()
    return file.reserve.free_disk_bytes() >= file.reserve.disk_room(need)
