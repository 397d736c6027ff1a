"""Unit tests of the durable SQLite spool, each on a real database file in tmp_path."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from bridge.errors import SpoolError, SpoolFull, SpoolLocked
from bridge.models import DeadLetter, Record
from bridge.settings import SpoolSettings
from bridge.spool.deadletters import DeadLetterFilter
from bridge.spool.facade import AsyncSpool
from bridge.spool.store import Spool
from bridge.spool.writes import DEAD_LETTER_PAYLOAD_CAP
from tests.unit.clock import FakeClock

T0_US = 1_731_657_600_000_000  # 2024-11-15T08:00:00Z
NOW_S = 1_731_657_700.0  # the fake wall clock: 100 s after T0


def rec(i: int, n: int = 2, device: str = "d1") -> Record:
    """Record number ``i`` with ``n`` metrics, received ``i`` ms after T0."""
    return Record(
        device,
        T0_US + i * 1_000_000,
        {f"m{j}": float(i * 10 + j) for j in range(n)},
        T0_US + i * 1000,
    )


def dead(
    reason: str = "invalid_json", payload: bytes = b"{oops", received_us: int = T0_US
) -> DeadLetter:
    """A dead letter as the intake would write it."""
    return DeadLetter(reason, "detail text", "plant/a/b", payload, "rule-a", received_us)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """The spool file path (its directory does not exist yet)."""
    return tmp_path / "spool" / "bridge.db"


@pytest.fixture
def spool(path: Path) -> Iterator[Spool]:
    """An open spool with a fake wall clock, closed after the test."""
    s = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    s.open()
    yield s
    s.close()


def reopen(s: Spool) -> Spool:
    """Close ``s`` and open a new Spool on the same file."""
    s.close()
    again = Spool(SpoolSettings(s.file.path, reserve_bytes=0), clock=FakeClock(NOW_S))
    again.open()
    return again


def integrity(s: Spool) -> list[str]:
    """Rows of PRAGMA integrity_check."""
    return [str(row[0]) for row in s.file.conn.execute("PRAGMA integrity_check").fetchall()]


def test_open_creates_the_directory_the_database_and_a_lock_file(path: Path) -> None:
    """open() creates the parent directory, the database and a lock file holding our pid."""
    s = Spool(SpoolSettings(path, reserve_bytes=0))
    s.open()
    try:
        assert path.is_file()
        lock = path.with_name(path.name + ".lock")
        assert lock.read_text() == str(os.getpid())
        assert (s.file.depth_records, s.file.depth_points, s.file.oldest_received_us) == (
            0,
            0,
            None,
        )
        assert s.file.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        s.close()


def test_commit_then_fetch_returns_records_in_commit_order(spool: Spool) -> None:
    """Records come back oldest first with increasing seqs and their exact contents."""
    first = spool.writer.commit([rec(1), rec(2, n=3), rec(3)], [])
    second = spool.writer.commit([rec(4, n=1), rec(5)], [])
    assert (first.records_inserted, first.points_inserted) == (3, 7)
    assert (second.records_inserted, second.points_inserted) == (2, 3)
    got = spool.outbox.fetch(0, 100)
    assert [(r.device_id, r.ts_us, r.metrics, r.received_us) for r in got] == [
        (x.device_id, x.ts_us, x.metrics, x.received_us)
        for x in (rec(1), rec(2, n=3), rec(3), rec(4, n=1), rec(5))
    ]
    seqs = [r.seq for r in got]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    assert [r.points for r in got] == [2, 3, 2, 1, 2]
    assert [r.seq for r in spool.outbox.fetch(seqs[1], 2)] == seqs[2:4]
    assert spool.outbox.fetch(seqs[-1], 10) == []
    assert (spool.file.depth_records, spool.file.depth_points) == (5, 10)


def test_duplicate_record_ids_are_stored_once_and_counted(spool: Spool) -> None:
    """A record id already spooled (or repeated in one commit) is ignored and counted."""
    spool.writer.commit([rec(1, n=2), rec(2, n=3)], [])
    again = spool.writer.commit([rec(2, n=3), rec(3, n=4), rec(3, n=4)], [])
    assert again.records_inserted == 1
    assert again.points_inserted == 4
    assert again.records_duplicate == 2
    assert again.points_duplicate == 7
    assert (spool.file.depth_records, spool.file.depth_points) == (3, 9)
    assert len(spool.outbox.fetch(0, 10)) == 3


def test_duplicate_id_with_other_values_keeps_the_first_copy(spool: Spool) -> None:
    """Ids ignore values: a redelivery with another value keeps the first stored values."""
    spool.writer.commit([Record("d", T0_US, {"t": 1.0}, T0_US)], [])
    result = spool.writer.commit([Record("d", T0_US, {"t": 2.0}, T0_US + 5)], [])
    assert result.records_duplicate == 1
    assert [r.metrics for r in spool.outbox.fetch(0, 10)] == [{"t": 1.0}]


def test_delivered_deletes_records_and_counts_points_across_reopen(spool: Spool) -> None:
    """delivered() removes records and adds their points to a persistent delivered total."""
    spool.writer.commit([rec(1, n=2), rec(2, n=3), rec(3, n=4)], [])
    seqs = [r.seq for r in spool.outbox.fetch(0, 10)]
    spool.outbox.delivered(seqs[:2])
    assert spool.file.delivered_points_total == 5
    assert (spool.file.depth_records, spool.file.depth_points) == (1, 4)
    assert [r.seq for r in spool.outbox.fetch(0, 10)] == seqs[2:]
    spool = reopen(spool)
    try:
        assert spool.file.delivered_points_total == 5
        spool.outbox.delivered(seqs[2:])
        assert spool.file.delivered_points_total == 9
        spool = reopen(spool)
        assert spool.file.delivered_points_total == 9
        assert (spool.file.depth_records, spool.file.depth_points) == (0, 0)
    finally:
        spool.close()


def test_delivered_ignores_unknown_and_empty_seq_lists(spool: Spool) -> None:
    """Delivering no seqs or seqs already gone changes nothing."""
    spool.writer.commit([rec(1)], [])
    spool.outbox.delivered([])
    spool.outbox.delivered([999])
    assert (spool.file.depth_records, spool.file.delivered_points_total) == (1, 0)
    (only,) = spool.outbox.fetch(0, 10)
    spool.outbox.delivered([only.seq])
    spool.outbox.delivered([only.seq])
    assert (spool.file.depth_records, spool.file.delivered_points_total) == (0, 2)


def test_seqs_are_never_reused_after_delivery(spool: Spool) -> None:
    """After all records are delivered, new records get higher seqs (idempotency keys differ)."""
    spool.writer.commit([rec(1), rec(2)], [])
    old = [r.seq for r in spool.outbox.fetch(0, 10)]
    spool.outbox.delivered(old)
    spool = reopen(spool)
    try:
        spool.writer.commit([rec(3)], [])
        assert spool.outbox.fetch(0, 10)[0].seq > max(old)
    finally:
        spool.close()


def test_reject_moves_records_to_dead_letters(spool: Spool) -> None:
    """reject() deletes the records and keeps them as dead letters with the reason."""
    spool.writer.commit([rec(1), rec(2)], [])
    seqs = [r.seq for r in spool.outbox.fetch(0, 10)]
    spool.outbox.reject(seqs[:1], "api_rejected", "400: bad metric")
    assert [r.seq for r in spool.outbox.fetch(0, 10)] == seqs[1:]
    assert (
        spool.file.depth_records,
        spool.file.depth_points,
        spool.file.delivered_points_total,
    ) == (1, 2, 0)
    (letter,) = spool.dead_letters.recent()
    assert letter[1:4] == ("api_rejected", "", "")
    assert letter[5] == "400: bad metric"
    assert b'"device_id":"d1"' in letter[4]


def test_a_failed_reject_rolls_back_and_leaves_the_spool_usable(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-SQLite error inside reject() rolls back: the record stays and commits continue."""
    spool.writer.commit([rec(1)], [])
    seq = spool.outbox.fetch(0, 1)[0].seq

    def fail(*args: object, **kwargs: object) -> bytes:
        raise TypeError("injected encoding fault")

    monkeypatch.setattr(orjson, "dumps", fail)  # the spool calls orjson.dumps at run time
    with pytest.raises((TypeError, SpoolError)):
        spool.outbox.reject([seq], "api_rejected", "x")
    monkeypatch.undo()
    assert [r.seq for r in spool.outbox.fetch(0, 10)] == [seq]
    assert spool.writer.commit([rec(2)], []).records_inserted == 1


def test_dead_letters_from_commit_keep_reason_and_truncated_payload(spool: Spool) -> None:
    """Dead letters are stored with reason, rule, topic, detail and a capped payload copy."""
    big = bytes(range(256)) * 400  # 102,400 bytes
    result = spool.writer.commit([rec(1)], [dead("too_large", big), dead("invalid_json", b"{oops")])
    assert result.dead_letters == 2
    assert spool.dead_letters.count() == 2
    newest, oldest = spool.dead_letters.recent()
    assert newest == (T0_US, "invalid_json", "rule-a", "plant/a/b", b"{oops", "detail text")
    assert oldest[1] == "too_large"
    assert oldest[4] == big[:DEAD_LETTER_PAYLOAD_CAP]
    sizes = [
        r[0] for r in spool.file.conn.execute("SELECT payload_size FROM dead_letters ORDER BY id")
    ]
    assert sizes == [len(big), 5]
    assert spool.file.depth_records == 1


def test_dead_letter_without_receive_time_uses_the_injected_clock(spool: Spool) -> None:
    """A dead letter with received_us 0 is stamped with the spool's clock."""
    spool.writer.commit([], [dead(received_us=0)])
    assert spool.dead_letters.recent()[0][0] == int(NOW_S * 1_000_000)


def test_dead_letters_only_commit_inserts_no_records(spool: Spool) -> None:
    """A commit of only dead letters stores them and leaves the record depth alone."""
    result = spool.writer.commit([], [dead(), dead()])
    assert (result.records_inserted, result.points_inserted, result.dead_letters) == (0, 0, 2)
    assert (spool.file.depth_records, spool.file.oldest_received_us) == (0, None)


def test_depth_counters_and_oldest_survive_close_and_reopen(spool: Spool) -> None:
    """depth_records, depth_points and oldest_received_us are rebuilt from the file on open."""
    spool.writer.commit([rec(3, n=1), rec(4, n=5)], [])
    spool.writer.commit([rec(5, n=2)], [dead()])
    assert spool.file.oldest_received_us == rec(3).received_us
    before = (spool.file.depth_records, spool.file.depth_points, spool.file.oldest_received_us)
    assert before == (3, 8, rec(3).received_us)
    spool = reopen(spool)
    try:
        assert (
            spool.file.depth_records,
            spool.file.depth_points,
            spool.file.oldest_received_us,
        ) == before
        assert spool.dead_letters.count() == 1
        spool.outbox.delivered([spool.outbox.fetch(0, 1)[0].seq])
        assert spool.file.oldest_received_us == rec(4).received_us
    finally:
        spool.close()


def test_meta_values_persist(spool: Spool) -> None:
    """meta_set values are read back by meta_get, also after reopening."""
    assert spool.file.meta_get("client_id") is None
    spool.file.meta_set("client_id", "bridge-1")
    spool.file.meta_set("client_id", "bridge-2")
    spool = reopen(spool)
    try:
        assert spool.file.meta_get("client_id") == "bridge-2"
    finally:
        spool.close()


def test_second_spool_on_the_same_path_is_locked_out(path: Path) -> None:
    """While one Spool is open another on the same path raises SpoolLocked; after close it opens."""
    first = Spool(SpoolSettings(path, reserve_bytes=0))
    first.open()
    second = Spool(SpoolSettings(path, reserve_bytes=0))
    try:
        with pytest.raises(SpoolLocked, match=f"pid {os.getpid()}"):
            second.open()
        first.writer.commit([rec(1)], [])
    finally:
        first.close()
    second.open()
    try:
        assert second.file.depth_records == 1
    finally:
        second.close()


def test_closed_spool_refuses_work_and_close_is_idempotent(path: Path) -> None:
    """Using a spool that is not open raises SpoolError; close() may be called twice."""
    s = Spool(SpoolSettings(path, reserve_bytes=0))
    with pytest.raises(SpoolError, match="not open"):
        s.outbox.fetch(0, 1)
    s.open()
    s.close()
    s.close()
    with pytest.raises(SpoolError, match="not open"):
        s.writer.commit([rec(1)], [])


def test_garbled_pages_are_moved_aside_and_a_new_spool_starts(path: Path) -> None:
    """A file failing quick_check is renamed to .corrupt-<time> (kept) and a fresh spool opens."""
    s = Spool(SpoolSettings(path, reserve_bytes=0))
    s.open()
    s.writer.commit([rec(i, n=50) for i in range(300)], [])
    s.close()
    raw = bytearray(path.read_bytes())
    noise = random.Random(1)
    for offset in range(2 * 4096, len(raw), 4096):  # keep the header page, garble the rest
        raw[offset : offset + 4096] = noise.randbytes(4096)
    path.write_bytes(bytes(raw))
    fresh = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    fresh.open()
    try:
        assert fresh.file.moved_aside == path.with_name(path.name + ".corrupt-20241115T080140")
        assert fresh.file.moved_aside.read_bytes() == bytes(raw)
        assert fresh.file.depth_records == 0
        assert fresh.writer.commit([rec(1)], []).records_inserted == 1
        assert integrity(fresh) == ["ok"]
    finally:
        fresh.close()


def test_garbage_file_is_moved_aside_and_a_new_spool_starts(path: Path) -> None:
    """A .db file of garbage bytes is moved aside (never deleted) and a new spool works."""
    path.parent.mkdir(parents=True)
    garbage = random.Random(2).randbytes(64 * 1024)
    path.write_bytes(garbage)
    s = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    s.open()
    try:
        assert s.file.moved_aside is not None
        assert s.file.moved_aside.name.startswith("bridge.db.corrupt-")
        assert s.file.moved_aside.read_bytes() == garbage
        assert s.writer.commit([rec(1)], []).records_inserted == 1
    finally:
        s.close()


def test_two_corrupt_spools_in_the_same_second_are_both_kept(path: Path) -> None:
    """Moving aside never overwrites an earlier corrupt copy, even within the same second."""
    copies = []
    for seed in (3, 4):
        s = Spool(SpoolSettings(path, reserve_bytes=0))
        s.open()
        s.writer.commit([rec(i, n=50) for i in range(100)], [])
        s.close()
        raw = bytearray(path.read_bytes())
        raw[2 * 4096 :] = random.Random(seed).randbytes(len(raw) - 2 * 4096)
        path.write_bytes(bytes(raw))
        copies.append(bytes(raw))
        fresh = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
        fresh.open()
        fresh.close()
    kept = {p.read_bytes() for p in path.parent.glob("bridge.db.corrupt-*")}
    assert set(copies) <= kept


def test_max_bytes_cap_makes_commit_raise_spool_full_without_writing(spool: Spool) -> None:
    """At the size cap commit raises SpoolFull and stores neither records nor dead letters."""
    spool.writer.commit([rec(1)], [])
    spool.file.settings = replace(spool.file.settings, max_bytes=spool.file.used_bytes)
    assert spool.file.full
    with pytest.raises(SpoolFull, match="cap"):
        spool.writer.commit([rec(2)], [dead()])
    assert [r.ts_us for r in spool.outbox.fetch(0, 10)] == [rec(1).ts_us]
    assert (spool.file.depth_records, spool.dead_letters.count()) == (1, 0)
    spool.outbox.delivered([spool.outbox.fetch(0, 1)[0].seq])  # delivery still works while full
    spool.file.settings = replace(spool.file.settings, max_bytes=1 << 30)
    assert spool.writer.commit([rec(2)], []).records_inserted == 1


def test_tiny_max_bytes_refuses_the_first_commit(path: Path) -> None:
    """A spool opened with a cap below its schema size is full from the start."""
    s = Spool(SpoolSettings(path, max_bytes=1, reserve_bytes=0))
    s.open()
    try:
        with pytest.raises(SpoolFull):
            s.writer.commit([rec(1)], [])
        assert s.outbox.fetch(0, 10) == []
    finally:
        s.close()


def test_disk_full_makes_commit_raise_spool_full_and_keeps_the_file_intact(spool: Spool) -> None:
    """SQLITE_FULL (via max_page_count) raises SpoolFull, rolls back, and passes integrity_check."""
    spool.writer.commit([rec(1)], [])
    pages = spool.file.conn.execute("PRAGMA page_count").fetchone()[0]
    spool.file.conn.execute(f"PRAGMA max_page_count={pages}")
    big = [Record("d", T0_US + i, {f"m{j}": 1.0 for j in range(100)}, T0_US) for i in range(50)]
    with pytest.raises(SpoolFull, match="full"):
        spool.writer.commit(big, [dead(payload=b"x" * 60_000)])
    assert integrity(spool) == ["ok"]
    assert [r.ts_us for r in spool.outbox.fetch(0, 100)] == [rec(1).ts_us]
    assert (spool.file.depth_records, spool.file.depth_points, spool.dead_letters.count()) == (
        1,
        2,
        0,
    )
    spool.file.conn.execute("PRAGMA max_page_count=1073741823")
    result = spool.writer.commit(big, [])
    assert result.records_inserted == 50
    assert integrity(spool) == ["ok"]


def test_other_write_errors_raise_spool_error(spool: Spool) -> None:
    """A write failure that is not 'disk full' raises SpoolError (not SpoolFull)."""
    spool.file.conn.execute("DROP TABLE dead_letters")
    with pytest.raises(SpoolError) as info:
        spool.writer.commit([rec(1)], [dead()])
    assert not isinstance(info.value, SpoolFull)
    assert spool.outbox.fetch(0, 10) == []  # the records of the failed transaction were rolled back
    assert isinstance(info.value.__cause__, sqlite3.Error)


async def test_async_spool_runs_every_call_on_one_worker_thread(path: Path) -> None:
    """AsyncSpool runs open, calls and close on a single thread other than the event loop's."""
    seen: set[int] = set()

    def where() -> int:
        seen.add(threading.get_ident())
        return threading.get_ident()

    async with AsyncSpool(Spool(SpoolSettings(path, reserve_bytes=0))) as aspool:
        for _ in range(20):
            await aspool._run(where)
        result = await aspool.commit([rec(1)], [], [], [], forget_unacked=False)
        assert result.records_inserted == 1
        batches = await aspool.take_batches(4, 100, single_object=False, newest_first=False)
        assert [len(b.records) for b in batches] == [1]
        await aspool._run(where)
    assert len(seen) == 1
    assert threading.get_ident() not in seen
    assert aspool.file._db is None  # closed on exit


def test_delivered_ids_never_keep_the_spool_full(tmp_path: Path) -> None:
    """Remembered delivered ids alone never make the spool refuse new readings at its cap."""
    spool = Spool(
        SpoolSettings(tmp_path / "s.db", max_bytes=1 << 20, reserve_bytes=0), clock=FakeClock(NOW_S)
    )
    spool.open()
    try:
        for block in range(100):  # 50,000 records delivered: far more ids than 1 MiB holds
            batch = [rec(block * 500 + k, n=1) for k in range(500)]
            assert spool.writer.commit(batch, []).records_inserted == 500
            spool.outbox.delivered([r.seq for r in spool.outbox.fetch(0, 1000)])
        assert spool.file.depth_points == 0
        assert spool.file.used_bytes <= 1 << 20
    finally:
        spool.close()


# -- drop-oldest policy ------------------------------------------------------------------------


def fill_to_cap(s: Spool, block: int = 500) -> int:
    """Commit records until the spool reports full; returns how many were committed."""
    i = 0
    while not s.file.full:
        s.writer.commit([rec(i + k, n=4) for k in range(block)], [])
        i += block
    return i


def test_drop_oldest_deletes_the_oldest_waiting_points_and_counts_them(tmp_path: Path) -> None:
    """At the cap, drop-oldest makes room by deleting the oldest unsent records; the dropped
    count is exact, persisted, and every point is either still waiting or counted dropped."""
    s = Spool(
        SpoolSettings(
            tmp_path / "s.db", max_bytes=1 << 20, when_full="drop-oldest", reserve_bytes=0
        ),
        clock=FakeClock(NOW_S),
    )
    s.open()
    try:
        committed = fill_to_cap(s)
        result = s.writer.commit([rec(10**6 + k, n=4) for k in range(200)], [])
        assert result.records_inserted == 200
        assert result.points_dropped > 0
        waiting = s.outbox.fetch(0, 10**7)
        assert s.file.depth_points == sum(r.points for r in waiting)
        # Every committed point is waiting or counted as dropped: nothing vanished uncounted.
        assert s.file.depth_points + s.file.dropped_points_total == (committed + 200) * 4
        # The oldest went: what is left is a contiguous tail of what was committed.
        first = waiting[0].ts_us
        assert first > rec(0).ts_us
        assert [r.ts_us for r in waiting[:3]] == [first, first + 1_000_000, first + 2_000_000]
        assert s.file.dropped_points_total == result.points_dropped
        again = reopen(s)
        assert again.file.dropped_points_total == result.points_dropped
        s = again
    finally:
        s.close()


def test_drop_oldest_never_deletes_records_handed_to_a_request(tmp_path: Path) -> None:
    """Records in flight are skipped: their delivery must not also count as a drop."""
    s = Spool(
        SpoolSettings(
            tmp_path / "s.db", max_bytes=1 << 20, when_full="drop-oldest", reserve_bytes=0
        ),
        clock=FakeClock(NOW_S),
    )
    s.open()
    try:
        fill_to_cap(s)
        in_flight = s.outbox.fetch(0, 30)
        s.outbox.hand_out([r.seq for r in in_flight])
        s.writer.commit([rec(10**6 + k, n=4) for k in range(200)], [])
        kept = {r.seq for r in s.outbox.fetch(0, 10**7)}
        assert {r.seq for r in in_flight} <= kept
        s.outbox.delivered([r.seq for r in in_flight])
        assert s.file.delivered_points_total == 30 * 4
    finally:
        s.close()


def test_back_pressure_is_the_default_and_drops_nothing(tmp_path: Path) -> None:
    """Without the opt-in policy a full spool refuses the commit and keeps every point."""
    s = Spool(
        SpoolSettings(tmp_path / "s.db", max_bytes=1 << 20, reserve_bytes=0), clock=FakeClock(NOW_S)
    )
    s.open()
    try:
        committed = fill_to_cap(s)
        with pytest.raises(SpoolFull):
            s.writer.commit([rec(10**6, n=4)], [])
        assert (s.file.depth_points, s.file.dropped_points_total) == (committed * 4, 0)
    finally:
        s.close()


def test_drop_oldest_with_everything_in_flight_falls_back_to_back_pressure(path: Path) -> None:
    """When every waiting record is handed out there is nothing to drop: commit refuses."""
    s = Spool(SpoolSettings(path, when_full="drop-oldest", reserve_bytes=0), clock=FakeClock(NOW_S))
    s.open()
    try:
        s.writer.commit([rec(1), rec(2)], [])
        s.outbox.hand_out([r.seq for r in s.outbox.fetch(0, 10)])
        s.file.settings = replace(s.file.settings, max_bytes=s.file.used_bytes)
        with pytest.raises(SpoolFull):
            s.writer.commit([rec(3)], [])
        assert (s.file.depth_records, s.file.dropped_points_total) == (2, 0)
    finally:
        s.close()


# -- live-first fetch ----------------------------------------------------------------------------


def test_fetch_newest_skips_records_handed_out_and_returns_newest_first(spool: Spool) -> None:
    """The newest waiting records come first; what a request holds is not offered twice."""
    spool.writer.commit([rec(i) for i in range(10)], [])
    newest = spool.outbox.fetch_newest(3)
    assert [r.ts_us for r in newest] == [rec(i).ts_us for i in (9, 8, 7)]
    spool.outbox.hand_out([r.seq for r in newest])
    nxt = spool.outbox.fetch_newest(3)
    assert [r.ts_us for r in nxt] == [rec(i).ts_us for i in (6, 5, 4)]
    spool.outbox.delivered([r.seq for r in newest])
    spool.writer.commit([rec(10)], [])
    assert [r.ts_us for r in spool.outbox.fetch_newest(2)] == [rec(i).ts_us for i in (10, 6)]


# -- dead-letter tools and writes from another process ------------------------------------------


def test_find_dead_letters_filters_by_reason_time_and_id(spool: Spool) -> None:
    """Filters combine; results come oldest first with their stored payload and size."""
    spool.writer.commit(
        [], [dead("invalid_json", b"{a", T0_US), dead("no_metrics", b"{}", T0_US + 5)]
    )
    spool.writer.commit([], [dead("invalid_json", b"{b", T0_US + 10)])
    every = spool.dead_letters.find(DeadLetterFilter())
    assert [d.payload for d in every] == [b"{a", b"{}", b"{b"]
    assert [d.payload for d in spool.dead_letters.find(DeadLetterFilter(("invalid_json",)))] == [
        b"{a",
        b"{b",
    ]
    late = DeadLetterFilter(since_us=T0_US + 5, until_us=T0_US + 10)
    assert [d.reason for d in spool.dead_letters.find(late)] == ["no_metrics"]
    assert [d.payload for d in spool.dead_letters.find(DeadLetterFilter(ids=(every[2].id,)))] == [
        b"{b"
    ]
    assert spool.dead_letters.counts(DeadLetterFilter()) == {"invalid_json": 2, "no_metrics": 1}
    assert len(spool.dead_letters.find(DeadLetterFilter(), limit=2)) == 2


def test_requeue_stores_records_and_removes_their_dead_letters_atomically(spool: Spool) -> None:
    """Requeued records wait for delivery even if their ids were delivered before."""
    spool.writer.commit([rec(1)], [dead(), dead("no_metrics")])
    spool.outbox.delivered(
        [r.seq for r in spool.outbox.fetch(0, 10)]
    )  # rec(1)'s id is now remembered
    first = spool.dead_letters.find(DeadLetterFilter())[0]
    assert spool.dead_letters.requeue([first.id], [rec(1), rec(2)]) == 4
    assert [r.ts_us for r in spool.outbox.fetch(0, 10)] == [rec(1).ts_us, rec(2).ts_us]
    assert spool.file.depth_points == 4
    assert [d.reason for d in spool.dead_letters.find(DeadLetterFilter())] == ["no_metrics"]


def test_a_failed_requeue_keeps_the_dead_letters(spool: Spool) -> None:
    """The insert and the delete are one transaction."""
    spool.writer.commit([], [dead()])
    first = spool.dead_letters.find(DeadLetterFilter())[0]
    bad = Record("d1", T0_US, {"m": float("nan")}, T0_US)  # orjson writes null: still stored
    spool.file.conn.execute(
        "CREATE TRIGGER no_more BEFORE INSERT ON records BEGIN SELECT RAISE(ABORT, 'nope'); END"
    )
    with pytest.raises(SpoolError, match="requeue"):
        spool.dead_letters.requeue([first.id], [bad])
    assert spool.dead_letters.count() == 1
    assert spool.file.depth_records == 0


def test_shared_open_sees_a_running_spool_and_the_owner_notices_its_writes(spool: Spool) -> None:
    """A tool opens the spool beside the locked owner; the owner picks up its requeue."""
    spool.writer.commit([rec(1)], [dead()])
    assert spool.file.external_changes() == 0
    tool = Spool(SpoolSettings(spool.file.path, reserve_bytes=0), clock=FakeClock(NOW_S))
    tool.open_shared()
    try:
        letter = tool.dead_letters.find(DeadLetterFilter())[0]
        tool.dead_letters.requeue([letter.id], [rec(7, n=3)])
    finally:
        tool.close()
    assert spool.file.external_changes() == 3
    assert spool.file.depth_points == 5
    assert spool.file.external_changes() == 0
    assert spool.dead_letters.count() == 0


def test_shared_open_of_a_missing_spool_names_the_path(tmp_path: Path) -> None:
    """No spool file: a clear error, and nothing is created."""
    missing = tmp_path / "nope.db"
    with pytest.raises(SpoolError, match="no spool at"):
        Spool(SpoolSettings(missing, reserve_bytes=0)).open_shared()
    assert not missing.exists()


def test_dead_letter_id_window_pages_and_newest_id(spool: Spool) -> None:
    """Keyset paging: ids in (after_id, through_id]; newest id is 0 for an empty table."""
    assert spool.dead_letters.newest_id() == 0
    spool.writer.commit([], [dead(payload=b"%d" % i) for i in range(5)])
    ids = [d.id for d in spool.dead_letters.find(DeadLetterFilter())]
    assert spool.dead_letters.newest_id() == ids[-1]
    window = DeadLetterFilter(after_id=ids[1], through_id=ids[3])
    assert [d.id for d in spool.dead_letters.find(window)] == ids[2:4]


def test_rejected_records_keep_their_stored_size(spool: Spool) -> None:
    """A record the API refused is kept as JSON, and its size is that JSON's length."""
    spool.writer.commit([rec(1)], [])
    spool.outbox.reject([r.seq for r in spool.outbox.fetch(0, 10)], "api_rejected", "HTTP 400: no")
    row = spool.dead_letters.find(DeadLetterFilter(("api_rejected",)))[0]
    assert row.payload_size == len(row.payload) > 0


def test_settle_partly_delivers_the_rest_and_dead_letters_only_the_refused(spool: Spool) -> None:
    """One transaction: the refused metrics become a dead letter, the record leaves the spool,
    the others count as delivered and the record's id is remembered against redelivery."""
    spool.writer.commit([rec(1, n=4)], [])
    (waiting,) = spool.outbox.fetch(0, 10)
    spool.outbox.hand_out([waiting.seq])
    spool.outbox.settle_partly(
        waiting.seq, {"m2": 12.0}, "api_rejected", "HTTP 400: m2 out of range"
    )
    assert (
        spool.file.depth_records,
        spool.file.depth_points,
        spool.file.delivered_points_total,
    ) == (0, 0, 3)
    (letter,) = spool.dead_letters.find(DeadLetterFilter())
    assert orjson.loads(letter.payload) == {
        "device_id": "d1",
        "ts_us": rec(1).ts_us,
        "metrics": {"m2": 12.0},
    }
    assert (letter.reason, letter.detail) == ("api_rejected", "HTTP 400: m2 out of range")
    assert (
        spool.writer.commit([rec(1, n=4)], []).records_duplicate == 1
    )  # a redelivery is discarded
    spool.outbox.settle_partly(waiting.seq, {}, "api_rejected", "")  # already settled: a no-op
    again = reopen(spool)
    try:
        assert again.file.delivered_points_total == 3
    finally:
        again.close()


def test_reserve_is_real_disk_released_once_and_recreated(path: Path) -> None:
    """The reserve beside the spool occupies real blocks (not a sparse file), is given back
    once on demand, and comes back when asked while there is room."""
    s = Spool(SpoolSettings(path, reserve_bytes=1 << 20), clock=FakeClock(NOW_S))
    s.open()
    try:
        st = s.file.reserve.path.stat()
        assert st.st_size == 1 << 20
        assert st.st_blocks * 512 >= 1 << 20
        assert not s.file.reserve.missing
        assert s.file.reserve.release()
        assert s.file.reserve.missing
        assert not s.file.reserve.release()  # nothing left to give
        assert s.file.reserve.ensure()
        assert s.file.reserve.path.stat().st_size == 1 << 20
    finally:
        s.close()


def test_no_reserve_file_when_none_is_configured(spool: Spool) -> None:
    """A spool configured with reserve_bytes 0 (as tools and these tests open it) creates no
    reserve file and never reports one missing."""
    assert not spool.file.reserve.path.exists()
    assert not spool.file.reserve.missing


def test_new_spools_can_give_free_pages_back_to_a_full_disk(spool: Spool) -> None:
    """A new spool file is created with incremental auto-vacuum, so deleted points' pages can
    be returned to the filesystem when the disk fills."""
    assert spool.file.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    spool.writer.commit([rec(i, n=4) for i in range(2000)], [])
    size = spool.file.path.stat().st_size + Path(str(spool.file.path) + "-wal").stat().st_size
    spool.outbox.delivered([r.seq for r in spool.outbox.fetch(0, 5000)])
    spool.file.reclaim()
    after = spool.file.path.stat().st_size + Path(str(spool.file.path) + "-wal").stat().st_size
    assert after < size / 2


def test_receive_times_of_unacknowledged_messages_survive_a_reopen(spool: Spool) -> None:
    """Stamped messages' receive times are committed with their records, dropped once their
    PUBACK was sent, all dropped when the broker lost the session, and readable after a crash."""
    spool.writer.commit([rec(1)], [], [(7, "t/a", b"d7", 111), (8, "t/b", b"d8", 222)])
    spool.writer.commit([rec(2)], [], [(9, "t/c", b"d9", 333)], [7])
    again = reopen(spool)
    try:
        assert again.writer.load_unacked() == {8: ("t/b", b"d8", 222), 9: ("t/c", b"d9", 333)}
        again.writer.commit([rec(3)], [], [(10, "t/d", b"d10", 444)], forget_unacked=True)
        assert again.writer.load_unacked() == {10: ("t/d", b"d10", 444)}
    finally:
        again.close()
