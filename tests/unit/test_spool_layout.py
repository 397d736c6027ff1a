"""Spool layout versions: record ids that sort by time (layout 2), the migration of a layout 1
spool, whose ids were a plain hash, at open, and the devices' totals that layout 5 keeps out of
the file."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from bridge.models import Record, record_id
from bridge.settings import SpoolSettings
from bridge.spool.schema import SCHEMA_VERSION
from bridge.spool.store import Spool
from tests.support.clock import FakeClock

T0_US = 1_731_657_600_000_000
NOW_S = 1_731_657_700.0


def _rec(i: int, device: str = "d1") -> Record:
    return Record(device, T0_US + i * 1_000_000, {"a": float(i), "b": 2.0}, T0_US + i * 1000)


# The two tables layout 4 changed, as layout 3 made them.
_LAYOUT3_TABLES = (
    "DROP TABLE delivered_ids;"
    "CREATE TABLE delivered_ids (rid BLOB PRIMARY KEY, at_us INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX delivered_ids_at ON delivered_ids (at_us);"
    "DROP TABLE delivery_audit;"
    "CREATE TABLE delivery_audit (device_id TEXT NOT NULL, metric TEXT NOT NULL,"
    " minute_us INTEGER NOT NULL, n INTEGER NOT NULL, total REAL NOT NULL, lo REAL NOT NULL,"
    " hi REAL NOT NULL, PRIMARY KEY (device_id, metric, minute_us)) WITHOUT ROWID;"
    "CREATE INDEX delivery_audit_minute ON delivery_audit (minute_us);"
)


def _layout1_id(r: Record) -> bytes:
    """A record id as layout 1 made it: a 16-byte hash, unrelated to time."""
    h = hashlib.blake2b(digest_size=16)
    h.update(r.device_id.encode())
    h.update(b"\x00%d\x00" % r.ts_us)
    h.update("\x00".join(sorted(r.metrics)).encode())
    return h.digest()


def test_record_ids_sort_by_time_and_stay_deterministic() -> None:
    """Ids of later readings sort after earlier ones (also across devices and before 1970),
    and the same device, time and metric names give the same id whatever the values."""
    times = [-5_000_000, 0, 1, T0_US, T0_US + 1, 2**62]
    ids = [record_id("dev", t, {"x": 1.0}) for t in times]
    assert ids == sorted(ids)
    assert len({len(i) for i in ids}) == 1
    assert record_id("a", T0_US, {"x": 1.0}) < record_id("b", T0_US + 1, {"x": 1.0})
    assert record_id("a", T0_US, {"x": 1.0, "y": 2.0}) == record_id("a", T0_US, {"y": 9, "x": 0})
    assert record_id("a", T0_US, {"x": 1.0}) != record_id("b", T0_US, {"x": 1.0})
    assert record_id("a", T0_US, {"x": 1.0}) != record_id("a", T0_US, {"z": 1.0})


def test_a_layout1_spool_is_migrated_at_open(tmp_path: Path) -> None:
    """Every waiting record gets its id in the new form (so a redelivery of it is still
    recognised), the old delivered-id memory is dropped, and nothing waiting is lost."""
    path = tmp_path / "spool.db"
    spool = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    spool.open()
    records = [_rec(i, device=f"d{i % 3}") for i in range(25)]
    spool.writer.commit(records, [])
    spool.close()
    db = sqlite3.connect(path)
    db.executescript(_LAYOUT3_TABLES)
    for r in records:
        db.execute("UPDATE records SET rid = ? WHERE rid = ?", (_layout1_id(r), r.record_id))
    db.execute("INSERT INTO delivered_ids VALUES (?, ?)", (b"\x01" * 16, T0_US))
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()

    spool = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    spool.open()
    try:
        db = spool.file.conn
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        stored = dict(db.execute("SELECT ts_us, rid FROM records").fetchall())
        assert stored == {r.ts_us: r.record_id for r in records}
        assert db.execute("SELECT COUNT(*) FROM delivered_ids").fetchone()[0] == 0
        # A redelivery of a waiting message is recognised against the migrated ids.
        result = spool.writer.commit([records[7]], [])
        assert result.points_duplicate == 2
        assert [r.ts_us for r in spool.outbox.fetch(0, 100)] == [r.ts_us for r in records]
        assert spool.file.depth_points == 50
        # Each device's total of the records already waiting, counted at open.
        totals = dict(db.execute("SELECT device_id, points FROM devices").fetchall())
        assert totals == {"d0": 18, "d1": 16, "d2": 16}
    finally:
        spool.close()


def test_a_new_spool_starts_at_the_current_layout(tmp_path: Path) -> None:
    spool = Spool(SpoolSettings(tmp_path / "new.db", reserve_bytes=0), clock=FakeClock(NOW_S))
    spool.open()
    try:
        assert spool.file.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        spool.close()


def test_a_layout3_spool_keeps_its_delivered_ids_and_audit_in_the_new_order(tmp_path: Path) -> None:
    """Layout 3 kept the delivered ids by id and by time, and the audit by device first;
    layout 4 keeps the ids in one table in the order of delivery and the audit by minute
    first. The ids survive the upgrade, oldest first, and still turn a redelivery away; the
    audit rows survive and are still added to."""
    path = tmp_path / "spool.db"
    spool = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    spool.open()
    spool.close()
    delivered = [_rec(i) for i in range(5)]
    db = sqlite3.connect(path)
    db.executescript(_LAYOUT3_TABLES + "PRAGMA user_version=3;")
    # Inserted out of time order: the new table takes them by delivery time.
    for i in (3, 0, 4, 1, 2):
        db.execute("INSERT INTO delivered_ids VALUES (?, ?)", (delivered[i].record_id, T0_US + i))
    minute = delivered[0].ts_us // 60_000_000 * 60_000_000
    for device, metric in (("d2", "a"), ("d1", "b"), ("d1", "a")):
        db.execute(
            "INSERT INTO delivery_audit VALUES (?, ?, ?, 1, 5.0, 5.0, 5.0)",
            (device, metric, minute),
        )
    db.commit()
    db.close()

    spool = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    spool.open()
    try:
        db = spool.file.conn
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        rows = db.execute("SELECT rid, at_us FROM delivered_ids ORDER BY id").fetchall()
        assert rows == [(r.record_id, T0_US + i) for i, r in enumerate(delivered)]
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
        assert not names & {"delivered_ids_at", "delivery_audit_minute"}
        assert not any(n.endswith("_layout3") for n in names)
        audit = db.execute("SELECT * FROM delivery_audit").fetchall()
        assert audit == [
            (minute, d, m, 1, 5.0, 5.0, 5.0) for d, m in (("d1", "a"), ("d1", "b"), ("d2", "a"))
        ]
        result = spool.writer.commit([delivered[2], _rec(9)], [])
        assert (result.points_duplicate, spool.file.depth_records) == (2, 1)
        spool.outbox.delivered([r.seq for r in spool.outbox.fetch(0, 100)])
        spool.outbox.sweep()  # the delivered record into the audit's log
        spool.audit.fold_now()
        added = db.execute(
            "SELECT n, total FROM delivery_audit "
            "WHERE minute_us = ? AND device_id = 'd1' AND metric = 'a'",
            (minute,),
        ).fetchone()
        assert added == (2, 5.0 + _rec(9).metrics["a"])
    finally:
        spool.close()


# The devices' totals as layouts 3 and 4 kept them: a table of the file, kept by triggers.
_LAYOUT4_DEVICES = """
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    points INTEGER NOT NULL DEFAULT 0,
    held INTEGER NOT NULL DEFAULT 0,
    head INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TRIGGER records_devices_in AFTER INSERT ON records BEGIN
    INSERT INTO devices (device_id, points, head) VALUES (NEW.device_id, NEW.n, NEW.seq)
    ON CONFLICT (device_id) DO UPDATE SET
        head = CASE WHEN points <= 0 THEN excluded.head ELSE head END,
        points = points + excluded.points;
END;
CREATE TRIGGER records_devices_out AFTER DELETE ON records BEGIN
    UPDATE devices SET points = points - OLD.n WHERE device_id = OLD.device_id;
    DELETE FROM devices WHERE device_id = OLD.device_id AND points <= 0 AND held <= 0;
END;
CREATE TRIGGER held_devices_in AFTER INSERT ON held BEGIN
    INSERT INTO devices (device_id, held) VALUES (NEW.device_id, NEW.n)
    ON CONFLICT (device_id) DO UPDATE SET held = held + excluded.held;
END;
CREATE TRIGGER held_devices_out AFTER DELETE ON held BEGIN
    UPDATE devices SET held = held - OLD.n WHERE device_id = OLD.device_id;
    DELETE FROM devices WHERE device_id = OLD.device_id AND points <= 0 AND held <= 0;
END;
INSERT INTO devices (device_id, points, head)
    SELECT device_id, SUM(n), MIN(seq) FROM records GROUP BY device_id;
PRAGMA user_version=4;
"""


def _file_tables(path: Path) -> set[str]:
    """The tables and triggers in the spool file itself, as another connection sees them."""
    db = sqlite3.connect(path)
    try:
        return {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
    finally:
        db.close()


# A layout 2 spool: from before the fair share (no held records, no device totals).
_LAYOUT2 = "DROP TABLE held; PRAGMA user_version=2;"


def _older_spool(tmp_path: Path, records: int, older: str) -> Path:
    """A spool of ``records`` records from two devices, made older by the SQL ``older``."""
    path = tmp_path / "spool.db"
    spool = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    spool.open()
    spool.writer.commit([_rec(i, device=f"d{i % 2}") for i in range(records)], [])
    spool.close()
    db = sqlite3.connect(path)
    db.executescript(older)
    db.close()
    return path


@pytest.mark.parametrize("older", [_LAYOUT2, _LAYOUT4_DEVICES], ids=["layout2", "layout4"])
def test_an_older_spool_gets_its_device_totals_at_open(tmp_path: Path, older: str) -> None:
    """A spool from before the fair share (layout 2) or one that kept the devices' totals in
    the file (layouts 3 and 4) is upgraded in place: no totals' table or triggers are left in
    the file, each device's total is counted from the records waiting, then kept by every
    commit and delete, and never written to the file."""
    path = _older_spool(tmp_path, 9, older)
    assert ("devices" in _file_tables(path)) == (older == _LAYOUT4_DEVICES)

    spool = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    spool.open()
    try:
        db = spool.file.conn
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert not _file_tables(path) & {
            "devices",
            "records_devices_in",
            "records_devices_out",
            "held_devices_in",
            "held_devices_out",
        }
        assert dict(db.execute("SELECT device_id, points FROM devices")) == {"d0": 10, "d1": 8}
        spool.outbox.delivered([r.seq for r in spool.outbox.fetch(0, 100) if r.device_id == "d1"])
        spool.writer.commit([_rec(20, device="d2")], [])
        assert dict(db.execute("SELECT device_id, points FROM devices")) == {"d0": 10, "d2": 2}
        assert "devices" not in _file_tables(path)
    finally:
        spool.close()


def test_device_totals_follow_writes_of_another_connection(tmp_path: Path) -> None:
    """Another connection's writes (a ``dead-letters requeue`` beside the running bridge) do not
    fire the bridge's triggers: the spool counts the totals again when it notices them."""
    path = tmp_path / "spool.db"
    spool = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    spool.open()
    try:
        spool.writer.commit([_rec(i, device="d1") for i in range(3)], [])
        db = spool.file.conn
        other = sqlite3.connect(path, isolation_level=None)
        other.execute(
            "INSERT INTO records (rid, device_id, ts_us, metrics, n, received_us) "
            "VALUES (?, 'd9', ?, '{\"a\": 1.0}', 1, ?)",
            (b"\x02" * 16, T0_US, T0_US),
        )
        other.execute("DELETE FROM records WHERE seq = (SELECT MIN(seq) FROM records)")
        other.execute(
            "INSERT INTO held (rid, device_id, ts_us, metrics, n, received_us) "
            "VALUES (?, 'd1', ?, '{\"a\": 1.0, \"b\": 2.0}', 2, ?)",
            (b"\x03" * 16, T0_US, T0_US),
        )
        other.close()
        assert dict(db.execute("SELECT device_id, points FROM devices")) == {"d1": 6}
        assert spool.file.external_changes() == -1  # one point of d9 in, two of d1 out
        totals = db.execute("SELECT device_id, points, held FROM devices").fetchall()
        assert sorted(totals) == [("d1", 4, 2), ("d9", 1, 0)]
        head = db.execute("SELECT head FROM devices WHERE device_id = 'd1'").fetchone()[0]
        assert head == min(r.seq for r in spool.outbox.fetch(0, 100) if r.device_id == "d1")
    finally:
        spool.close()


def test_a_layout5_spool_gets_the_settled_records_table_at_open(tmp_path: Path) -> None:
    """Layout 5 deleted each record at its settlement: it has no ``settled`` table. Opened,
    the file gets one and layout 6, and what waited still waits, delivered as before."""
    path = _older_spool(tmp_path, 6, "DROP TABLE settled; PRAGMA user_version=5;")
    assert "settled" not in _file_tables(path)

    spool = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    spool.open()
    try:
        db = spool.file.conn
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert "settled" in _file_tables(path)
        assert (spool.file.depth_records, spool.file.depth_points) == (6, 12)
        spool.outbox.delivered([r.seq for r in spool.outbox.fetch(0, 100) if r.device_id == "d1"])
        assert [r.device_id for r in spool.outbox.fetch(0, 100)] == ["d0"] * 3
        assert dict(db.execute("SELECT device_id, points FROM devices")) == {"d0": 6}
        assert (spool.file.depth_records, spool.file.delivered_points_total) == (3, 6)
    finally:
        spool.close()
