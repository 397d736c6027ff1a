"""The spool's tables, its layout version and migrations, and the codec of a record row.

The layout version lives in SQLite's ``user_version``. A newer bridge that changes the layout
raises it and migrates older files at open; an older bridge refuses a newer file instead of
misreading it. 0 means a new file or one from before versions were recorded (layout 1).
Layout 2: record ids begin with the timestamp (see :func:`bridge.models.record_id`).
Layout 3: the ``held`` records and the ``devices`` totals of the fair share
(:mod:`bridge.spool.fairshare`); an older bridge would not see held points, so it refuses.
Layout 4: the delivered ids in the order of delivery, the audit by minute first.
Layout 5: the ``devices`` totals leave the file for the connection's temporary database
(:data:`TEMP_DEVICES`); an older bridge would find no totals, so it refuses.
Layout 6: the ``settled`` records, delivered but not yet swept out of ``records``
(:data:`SETTLED`); an older bridge would send them again, so it refuses.
Tables that an older bridge may safely ignore are added without a new version: every open
creates the missing ones (``coalesce_state``; ``deadband_state``, whose loss only means the
next value of each metric is sent; ``sparkplug_aliases``, which an older bridge without
Sparkplug rules never reads; ``delivered_devices`` and ``delivery_audit``, whose loss only
narrows what ``devices`` and ``verify`` can show; ``audit_log``, the same).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson

from bridge.errors import SpoolTooNew
from bridge.models import Record, SpooledRecord, record_id

log = logging.getLogger(__name__)

SCHEMA_VERSION = 6
_MIGRATE_CHUNK = 10_000

# In the order of delivery (``id``), which is the order they are forgotten in. Layout 3 kept
# them in an index by time as well as by id; a rowid table is appended to without rebalancing
# its last page against its neighbours, as an index is at nearly every settlement: 493 -> 459
# bytes written per point in a live flow (docs/design/performance.md, round 5).
DELIVERED_IDS = """CREATE TABLE IF NOT EXISTS delivered_ids (
    id INTEGER PRIMARY KEY,
    rid BLOB NOT NULL UNIQUE,
    at_us INTEGER NOT NULL
);"""
# By minute first: a fold updates the rows of the last minute or two of every device that
# sent, which lie together. Layout 3 kept them by device first, so that a fold wrote a page
# for nearly every device and metric, each in the middle of that series' history, plus an
# index by minute: with 2,000 devices and 50 minutes of points, 2,479 -> 644 bytes written
# per point (docs/design/performance.md, round 5). Every reader selects by minute.
DELIVERY_AUDIT = """CREATE TABLE IF NOT EXISTS delivery_audit (
    minute_us INTEGER NOT NULL,   -- start of the point timestamps' minute (UTC)
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    n INTEGER NOT NULL,
    total REAL NOT NULL,
    lo REAL NOT NULL,
    hi REAL NOT NULL,
    PRIMARY KEY (minute_us, device_id, metric)
) WITHOUT ROWID;"""
# Records whose acceptance is counted and that still lie in ``records``: a settlement adds
# their seqs here (with the time, for the delivered ids) instead of deleting each record and
# inserting its id into ``delivered_ids`` at once; a sweep does both for the records of many
# settlements in one transaction (spool/settler.py). A settlement then writes the pages of
# this table's end instead of a delete's pages in the middle of ``records``, its id index, the
# free list and ``delivered_ids``' index: 399 -> 305 bytes written per point in `bench disk`
# (docs/design/performance.md, round 14). Every reader of waiting records leaves these out
# (spool/unswept.py).
SETTLED = """CREATE TABLE IF NOT EXISTS settled (
    seq INTEGER PRIMARY KEY,
    at_us INTEGER NOT NULL
);"""
# Tables layout 4 made anew: its first column (where layout 3's differs), the statement, the
# columns copied across, and the order they are copied in.
_LAYOUT4 = (
    ("delivered_ids", "id", DELIVERED_IDS, "rid, at_us", "at_us"),
    (
        "delivery_audit",
        "minute_us",
        DELIVERY_AUDIT,
        "minute_us, device_id, metric, n, total, lo, hi",
        "minute_us, device_id, metric",
    ),
)

SCHEMA = (
    """
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
"""
    + DELIVERED_IDS
    + SETTLED
    + """
-- Running aggregates of coalescing rules, one row per device, metric and window. Updated in the
-- same transaction that precedes the MQTT acknowledgement, so they are as durable as records;
-- a closed window is turned into a record by Coalescer.flush().
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
-- The last value sent of every device and metric under a deadband (spool/deadband.py),
-- written in the transaction of the records it let through. A row is kept until
-- ``keep_until_us`` (receive time + 2 heartbeats), then pruned: losing it costs one point.
CREATE TABLE IF NOT EXISTS deadband_state (
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    ts_us INTEGER NOT NULL,
    keep_until_us INTEGER NOT NULL,
    PRIMARY KEY (device_id, metric)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deadband_state_keep ON deadband_state (keep_until_us);
-- What the API accepted (spool/audit.py), written in the settlement transaction: the
-- devices delivered for, and count/sum/min/max per device, metric and minute. Both bounded.
CREATE TABLE IF NOT EXISTS delivered_devices (
    device_id TEXT PRIMARY KEY,
    points INTEGER NOT NULL,
    first_us INTEGER NOT NULL,    -- first accepted at (bridge clock)
    last_us INTEGER NOT NULL,     -- last accepted at (bridge clock)
    last_ts_us INTEGER NOT NULL   -- newest point timestamp accepted
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivered_devices_last ON delivered_devices (last_us);
"""
    + DELIVERY_AUDIT
    + """
-- The accepted (device, timestamp, metrics) of each settlement transaction as zlib-compressed
-- JSON, not yet folded into the two tables above (spool/audit.py): one insert per delete
-- instead of an upsert per key, folded every few dozen.
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY,
    at_us INTEGER NOT NULL,
    body BLOB NOT NULL
);
-- Receive times of committed messages stamped with them (no timestamp in the payload), by
-- MQTT packet id, until their PUBACK is known sent: a redelivery after a crash gets the same
-- time, so the same record id, and is stored once. At most one row per packet id.
-- Records of a device over its fair share while the spool is near its cap: committed and
-- acknowledged like any record, not handed to delivery until released into ``records``
-- (oldest first, with new seqs) as room frees (spool/fairshare.py).
CREATE TABLE IF NOT EXISTS held (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rid BLOB NOT NULL UNIQUE,
    device_id TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    metrics BLOB NOT NULL,
    n INTEGER NOT NULL,
    received_us INTEGER NOT NULL
);
-- The alias tables of Sparkplug B edge nodes, written in the commit of the BIRTH that defines
-- them (spool/sparkplug.py). device is '' for a node's own metrics; alias NULL for a metric
-- born without one.
CREATE TABLE IF NOT EXISTS sparkplug_aliases (
    grp TEXT NOT NULL,
    node TEXT NOT NULL,
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    alias INTEGER,
    datatype INTEGER,
    PRIMARY KEY (grp, node, device, name)
) WITHOUT ROWID;
-- Sparkplug DATA waiting for the BIRTH that defines its aliases, whole, by edge node and
-- receive time (spool/sparkplug.py, sparkplug/parking.py).
CREATE TABLE IF NOT EXISTS sparkplug_parked (
    grp TEXT NOT NULL,
    node TEXT NOT NULL,
    received_us INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    rule TEXT NOT NULL,
    PRIMARY KEY (grp, node, received_us)
) WITHOUT ROWID;
-- Receive times of receive-stamped messages whose PUBACK the broker is not known to have read
-- (a PINGREQ fence after it has not passed): a redelivery after a crash reuses them.
CREATE TABLE IF NOT EXISTS unacked (
    mid INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    digest BLOB NOT NULL,
    received_us INTEGER NOT NULL
);
"""
)

# Points waiting per device, for the fair share and fair batches: a device's total without
# scanning the records. Kept in the connection's temporary database, not in the file: its
# rows are derived (rebuilt from the records at every open, :func:`count_devices`), and as a
# table of the file every group commit and settlement wrote its pages to the WAL and
# checkpointed them again. Layouts 3 and 4 kept it there (layout 5 drops it): 13 % fewer
# bytes per point with 2,000 devices (docs/design/performance.md, round 11). The temporary
# triggers keep it in the transaction that changes the records; another connection's writes
# (a ``dead-letters requeue``) do not fire them, so the spool rebuilds it when it sees such
# writes (:meth:`~bridge.spool.file.SpoolFile.external_changes`). ``head`` is at most the seq
# of the device's oldest waiting record.
TEMP_DEVICES = """
CREATE TEMP TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    points INTEGER NOT NULL DEFAULT 0,
    held INTEGER NOT NULL DEFAULT 0,
    head INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TEMP TRIGGER IF NOT EXISTS records_devices_in AFTER INSERT ON main.records BEGIN
    INSERT INTO devices (device_id, points, head) VALUES (NEW.device_id, NEW.n, NEW.seq)
    ON CONFLICT (device_id) DO UPDATE SET
        head = CASE WHEN points <= 0 THEN excluded.head ELSE head END,
        points = points + excluded.points;
END;
CREATE TEMP TRIGGER IF NOT EXISTS records_devices_out AFTER DELETE ON main.records
WHEN NOT EXISTS (SELECT 1 FROM main.settled WHERE seq = OLD.seq) BEGIN
    UPDATE devices SET points = points - OLD.n WHERE device_id = OLD.device_id;
    DELETE FROM devices WHERE device_id = OLD.device_id AND points <= 0 AND held <= 0;
END;
CREATE TEMP TRIGGER IF NOT EXISTS settled_devices_in AFTER INSERT ON main.settled BEGIN
    UPDATE devices SET points = points - (SELECT n FROM main.records WHERE seq = NEW.seq)
    WHERE device_id = (SELECT device_id FROM main.records WHERE seq = NEW.seq);
    DELETE FROM devices
    WHERE device_id = (SELECT device_id FROM main.records WHERE seq = NEW.seq)
    AND points <= 0 AND held <= 0;
END;
CREATE TEMP TRIGGER IF NOT EXISTS held_devices_in AFTER INSERT ON main.held BEGIN
    INSERT INTO devices (device_id, held) VALUES (NEW.device_id, NEW.n)
    ON CONFLICT (device_id) DO UPDATE SET held = held + excluded.held;
END;
CREATE TEMP TRIGGER IF NOT EXISTS held_devices_out AFTER DELETE ON main.held BEGIN
    UPDATE devices SET held = held - OLD.n WHERE device_id = OLD.device_id;
    DELETE FROM devices WHERE device_id = OLD.device_id AND points <= 0 AND held <= 0;
END;
"""
# The tables and triggers of layouts 3 and 4 that layout 5 keeps in the temporary database.
_LAYOUT5_DROPPED = (
    "DROP TRIGGER IF EXISTS main.records_devices_in",
    "DROP TRIGGER IF EXISTS main.records_devices_out",
    "DROP TRIGGER IF EXISTS main.held_devices_in",
    "DROP TRIGGER IF EXISTS main.held_devices_out",
    "DROP TABLE IF EXISTS main.devices",
)


def count_devices(db: sqlite3.Connection) -> None:
    """(Re)build the temporary ``devices`` totals from the records and held points in the
    file, in one transaction (another connection may be writing)."""
    db.execute("BEGIN")
    try:
        db.execute("DELETE FROM temp.devices")
        # An upsert per row in seq order, not GROUP BY: that sorts every row first, in
        # memory here (temp_store), megabytes for a spool of millions of points.
        db.execute(
            "INSERT INTO temp.devices (device_id, points, head) "
            "SELECT device_id, n, seq FROM main.records "
            "WHERE seq NOT IN (SELECT seq FROM main.settled) ORDER BY seq "
            "ON CONFLICT (device_id) DO UPDATE SET points = points + excluded.points"
        )
        db.execute(
            "INSERT INTO temp.devices (device_id, held) "
            "SELECT device_id, n FROM main.held WHERE true "
            "ON CONFLICT (device_id) DO UPDATE SET held = held + excluded.held"
        )
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


RECORD_COLUMNS = "seq, device_id, ts_us, metrics, received_us"
INSERT_RECORD = (
    "INSERT OR IGNORE INTO records (rid, device_id, ts_us, metrics, n, received_us) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
# Rows per multi-row INSERT: 6 x 128 = 768 variables, below SQLite's historic limit of 999.
INSERT_ROWS = 128


def insert_records(db: sqlite3.Connection, rows: Sequence[RecordRow]) -> int:
    """``INSERT OR IGNORE`` the rows, many to a statement; returns how many were inserted.

    Python's sqlite3 gives the interpreter lock back around every statement step and takes it
    again after: ``executemany`` steps once per row, and while the event loop thread is busy
    each retake can wait for it. A statement of 128 rows is one step."""
    inserted = 0
    for start in range(0, len(rows), INSERT_ROWS):
        chunk = rows[start : start + INSERT_ROWS]
        sql = INSERT_RECORD + ", (?, ?, ?, ?, ?, ?)" * (len(chunk) - 1)
        inserted += db.execute(sql, [v for row in chunk for v in row]).rowcount
    return inserted


RecordRow = tuple[bytes, str, int, bytes, int, int]


def record_row(r: Record) -> RecordRow:
    """The ``records`` row of a record: (rid, device_id, ts_us, metrics, n, received_us)."""
    return (
        r.record_id,
        r.device_id,
        r.ts_us,
        orjson.dumps(r.metrics),
        len(r.metrics),
        r.received_us,
    )


def sweep_settled(db: sqlite3.Connection) -> None:
    """Within the caller's transaction: the settled records' ids into ``delivered_ids`` (in
    the order they were settled), the records out of ``records`` (the devices' totals left
    them at settlement, so the trigger skips them), and ``settled`` emptied."""
    db.execute(
        "INSERT OR REPLACE INTO delivered_ids (rid, at_us) "
        "SELECT r.rid, s.at_us FROM settled s JOIN records r ON r.seq = s.seq ORDER BY s.seq"
    )
    db.execute("DELETE FROM records WHERE seq IN (SELECT seq FROM settled)")
    db.execute("DELETE FROM settled")


def forget_delivered(db: sqlite3.Connection, now_us: int, window_s: float) -> None:
    """Forget the ids delivered more than ``window_s`` before ``now_us``: those ahead of the
    first one delivered since, in the order of delivery (a scan of only the ids forgotten).
    An id stamped more than ``window_s`` after ``now_us`` (by a clock set ahead, then back)
    holds no others."""
    window_us = int(window_s * 1_000_000)
    db.execute(
        "DELETE FROM delivered_ids WHERE id < COALESCE("
        "(SELECT id FROM delivered_ids WHERE at_us BETWEEN ?1 AND ?2 ORDER BY id LIMIT 1), "
        "(SELECT MAX(id) + 1 FROM delivered_ids))",
        (now_us - window_us, now_us + window_us),
    )


def json_available(db: sqlite3.Connection) -> bool:
    """Whether this SQLite has the JSON functions (built in since 3.38, an option before)."""
    try:
        db.execute("SELECT json_quote('x')").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


def spooled(row: tuple[int, str, int, bytes | str, int]) -> SpooledRecord:
    """A :class:`SpooledRecord` from a row of :data:`RECORD_COLUMNS`. The metrics are JSON,
    as a BLOB from the bridge's own writes, or as TEXT where another program wrote the row
    (a BLOB column keeps the type a value came with)."""
    seq, device, ts_us, metrics, received_us = row
    return SpooledRecord(seq, device, ts_us, orjson.loads(metrics), received_us)


def install(db: sqlite3.Connection, path: Path) -> None:
    """Create missing tables and bring an older layout up to :data:`SCHEMA_VERSION`.

    Raises:
        SpoolTooNew: the file has a newer layout; it is left untouched.
    """
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise SpoolTooNew(
            f"spool {path} has layout version {found}, written by a newer "
            f"metriqo-bridge (this one knows up to {SCHEMA_VERSION}); it was left untouched. "
            "Run the newer version until the spool is empty, or point spool.path elsewhere"
        )
    db.executescript(SCHEMA)
    if found < SCHEMA_VERSION:
        if found < 2:
            _migrate_record_ids(db, path)
        if found < 3:
            _layout3(db)
        if found < 4:
            _layout4(db)
        if found < 5:
            with _upgrade(db, 5):
                for statement in _LAYOUT5_DROPPED:
                    db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    db.executescript(TEMP_DEVICES)


@contextlib.contextmanager
def _upgrade(db: sqlite3.Connection, version: int) -> Iterator[None]:
    """One step of the layout: its changes and the new ``version`` in one transaction, or
    neither."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute(f"PRAGMA user_version={version}")
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def _migrate_record_ids(db: sqlite3.Connection, path: Path) -> None:
    """Layout 1 -> 2: recompute every waiting record's id in the new form, in one
    transaction and in chunks (memory stays flat for a spool of millions of records). The
    ids of delivered records are forgotten: they cannot be recomputed, so a message the
    broker redelivers right after the upgrade may be delivered a second time."""
    count = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    forgotten = db.execute("SELECT COUNT(*) FROM delivered_ids").fetchone()[0]
    if not count and not forgotten:
        return
    log.info(
        "spool %s: updating the layout to version %d (%d waiting record(s))",
        path,
        SCHEMA_VERSION,
        count,
    )
    with _upgrade(db, 2):  # the ids and the version, atomically
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


def _layout3(db: sqlite3.Connection) -> None:
    """Layout 2 -> 3: the ``held`` table (made by :data:`SCHEMA`) and the devices' totals, which
    layout 5 keeps outside the file (:data:`TEMP_DEVICES`): only the version changes."""
    with _upgrade(db, 3):
        pass


def _layout4(db: sqlite3.Connection) -> None:
    """Layout 3 -> 4: the delivered ids in the order of delivery (:data:`DELIVERED_IDS`) and the
    audit by minute first (:data:`DELIVERY_AUDIT`), their rows copied into the new tables, in
    one transaction with the new layout version. A table already in its new form (a file
    created by this layout) is left as it is."""
    with _upgrade(db, 4):
        for table, first, create, columns, order in _LAYOUT4:
            found = db.execute(f"PRAGMA table_info({table})").fetchone()
            if found is not None and found[1] == first:
                continue
            old = f"{table}_layout3"
            db.execute(f"ALTER TABLE {table} RENAME TO {old}")
            db.execute(create)
            db.execute(
                f"INSERT INTO {table} ({columns}) "  # noqa: S608 (constants only)
                f"SELECT {columns} FROM {old} ORDER BY {order}"
            )
            db.execute(f"DROP TABLE {old}")  # and its indexes
