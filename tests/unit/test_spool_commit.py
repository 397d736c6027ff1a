"""Unit tests of committing to the durable SQLite spool, each on a real database file in
tmp_path: records in order, duplicates stored once, dead letters, the size cap and a full disk,
the receive times of unacknowledged messages, and the drop-oldest policy."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from bridge.errors import SpoolError, SpoolFull
from bridge.models import PayloadExcerpt, Record
from bridge.settings import SpoolSettings
from bridge.spool.store import Spool
from bridge.spool.writes import DEAD_LETTER_PAYLOAD_CAP
from tests.support.clock import FakeClock
from tests.support.spool import NOW_S, T0_US, dead, integrity, rec, reopen


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


def test_a_payload_streamed_past_is_stored_with_its_whole_size(spool: Spool) -> None:
    """A dead letter of an excerpt (the MQTT wire kept only its head) stores the head and the
    size of the whole payload, so `dead-letters` shows it as truncated."""
    excerpt = PayloadExcerpt(b'{"temp": 1', 10_000_000, b"\x00" * 8)
    spool.writer.commit([], [dead("too_large", excerpt)])
    row = spool.file.conn.execute("SELECT payload, payload_size FROM dead_letters").fetchone()
    assert (bytes(row[0]), row[1]) == (b'{"temp": 1', 10_000_000)


def test_dead_letter_without_receive_time_uses_the_injected_clock(spool: Spool) -> None:
    """A dead letter with received_us 0 is stamped with the spool's clock."""
    spool.writer.commit([], [dead(received_us=0)])
    assert spool.dead_letters.recent()[0][0] == int(NOW_S * 1_000_000)


def test_dead_letters_only_commit_inserts_no_records(spool: Spool) -> None:
    """A commit of only dead letters stores them and leaves the record depth alone."""
    result = spool.writer.commit([], [dead(), dead()])
    assert (result.records_inserted, result.points_inserted, result.dead_letters) == (0, 0, 2)
    assert (spool.file.depth_records, spool.file.oldest_received_us) == (0, None)


def test_max_bytes_cap_makes_commit_raise_spool_full_without_writing(spool: Spool) -> None:
    """At the size cap commit raises SpoolFull and stores neither records nor dead letters."""
    spool.writer.commit([rec(1)], [])
    spool.file.settings = replace(spool.file.settings, max_bytes=spool.file.data_bytes)
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


def test_receive_times_of_unacknowledged_messages_survive_a_reopen(spool: Spool) -> None:
    """Stamped messages' receive times are committed with their records, dropped once the
    broker has read their PUBACK (with older rows of the id, not a newer message's), all
    dropped when the broker lost the session, and readable after a crash."""
    stamped = [(7, "t/a", b"d7", 111), (8, "t/b", b"d8", 222), (11, "t/e", b"d11", 555)]
    spool.writer.commit([rec(1)], [], stamped)
    acked = [(7, 111), (8, 200), (11, 600)]  # 8: a PUBACK for an older message of that id
    spool.writer.commit([rec(2)], [], [(9, "t/c", b"d9", 333)], acked)
    again = reopen(spool)
    try:
        assert again.writer.load_unacked() == {8: ("t/b", b"d8", 222), 9: ("t/c", b"d9", 333)}
        again.writer.commit([rec(3)], [], [(10, "t/d", b"d10", 444)], forget_unacked=True)
        assert again.writer.load_unacked() == {10: ("t/d", b"d10", 444)}
    finally:
        again.close()


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
    """Without the opt-in policy a full spool refuses the commit and keeps every point (one
    device alone, the fair share off: see test_fair_share.py for it)."""
    s = Spool(
        SpoolSettings(tmp_path / "s.db", max_bytes=1 << 20, reserve_bytes=0, fair_share=False),
        clock=FakeClock(NOW_S),
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
        s.file.settings = replace(s.file.settings, max_bytes=s.file.data_bytes)
        with pytest.raises(SpoolFull):
            s.writer.commit([rec(3)], [])
        assert (s.file.depth_records, s.file.dropped_points_total) == (2, 0)
    finally:
        s.close()
