"""Unit tests of what happens to spooled records after a request, each on a real database file
in tmp_path: delivered, rejected or partly settled, the live-first fetch, and the dead-letter
tools (find, requeue)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson
import pytest

from bridge.errors import SpoolError
from bridge.models import Record
from bridge.spool.deadletters import DeadLetterFilter
from bridge.spool.store import Spool
from tests.support.clock import FakeClock
from tests.support.spool import T0_US, dead, rec, reopen


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


# -- dead-letter tools ---------------------------------------------------------------------------


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


def test_dead_letter_id_window_pages_and_newest_id(spool: Spool) -> None:
    """Keyset paging: ids in (after_id, through_id]; newest id is 0 for an empty table."""
    assert spool.dead_letters.newest_id() == 0
    spool.writer.commit([], [dead(payload=b"%d" % i) for i in range(5)])
    ids = [d.id for d in spool.dead_letters.find(DeadLetterFilter())]
    assert spool.dead_letters.newest_id() == ids[-1]
    window = DeadLetterFilter(after_id=ids[1], through_id=ids[3])
    assert [d.id for d in spool.dead_letters.find(window)] == ids[2:4]


def test_settled_records_leave_no_trace_in_the_outbox(spool: Spool) -> None:
    """Every way a record leaves the spool (delivered, rejected, partly settled) forgets it in
    the outbox too: before, the fair batches' table kept one entry per record ever delivered
    while no device dominated, so memory grew with every point a long drain sent."""
    devices = [f"d{k}" for k in range(4)]
    spool.writer.commit([rec(i, device=devices[i % 4]) for i in range(400)], [])
    outbox = spool.outbox
    # Typed: mypy joins a method and a lambda to an untyped callable, depending on the order it
    # checks the modules in.
    settle: list[Callable[[Sequence[int]], None]] = [
        outbox.delivered,
        lambda seqs: outbox.reject(seqs, "invalid", "refused"),
    ]
    turn = 0
    while batches := outbox.take_batches(2, 50, single_object=False, newest_first=False):
        for b in batches:
            seqs = list(b.seqs)
            outbox.settle_partly(seqs[0], {"m0": 0.0}, "invalid", "refused")
            settle[turn % 2](seqs[1:])
            turn += 1
    assert spool.file.depth_records == 0
    assert turn == 16  # 400 records of 2 points, 25 to a batch
    assert outbox.handed_out == set()
    assert outbox._handed_info == {}  # the table that leaked


def _deliver(spool: Spool, records: Sequence[Record]) -> None:
    spool.writer.commit(records, [])
    spool.outbox.delivered([r.seq for r in spool.outbox.fetch(0, 100)])


def _redelivered(spool: Spool, records: Sequence[Record]) -> int:
    """Offer ``records`` again: how many of them the spool stored (the rest it remembered)."""
    stored = spool.writer.commit(records, []).records_inserted
    spool.outbox.delivered([r.seq for r in spool.outbox.fetch(0, 100)])
    return stored


def test_delivered_ids_are_forgotten_after_the_dedup_window(spool: Spool) -> None:
    """An id is remembered for ``dedup_window_s`` (900 s) after its delivery, then forgotten
    at a later settlement: a redelivery within the window is turned away, after it stored."""
    clock = spool.file.clock
    assert isinstance(clock, FakeClock)
    first, second = [rec(i) for i in range(3)], [rec(i) for i in range(10, 13)]
    _deliver(spool, first)
    clock.advance(500)
    _deliver(spool, second)
    clock.advance(500)  # first: 1,000 s ago; second: 500 s
    _deliver(spool, [rec(20)])
    assert _redelivered(spool, second) == 0
    assert _redelivered(spool, first) == 3


def test_a_clock_set_far_ahead_and_back_does_not_keep_every_id(spool: Spool) -> None:
    """Ids stamped by a clock set days ahead hold neither the prune's schedule nor the ids
    delivered after the clock was put right: the prune still forgets what is older than the
    window, and keeps what is within it."""
    clock = spool.file.clock
    assert isinstance(clock, FakeClock)
    ahead, right = [rec(i) for i in range(3)], [rec(i) for i in range(10, 13)]
    start = clock.now
    clock.now = start + 10 * 86400
    _deliver(spool, ahead)
    clock.now = start - 2000
    _deliver(spool, [rec(30)])  # 2,000 s before the others: forgotten below
    clock.now = start
    _deliver(spool, right)
    clock.advance(61)
    _deliver(spool, [rec(20)])
    assert _redelivered(spool, right) == 0
    assert _redelivered(spool, [rec(30)]) == 1
    assert _redelivered(spool, ahead) == 3


def test_only_ids_up_to_the_newest_delivered_are_looked_up_and_all_are_found(
    spool: Spool,
) -> None:
    """Ids sort by time, so the commit looks up only those up to the newest delivered id: a
    redelivery of any delivered record is still turned away, and a record never delivered is
    stored whether it is older or newer than the newest delivered one."""
    _deliver(spool, [rec(10), rec(20), rec(30)])
    assert _redelivered(spool, [rec(10), rec(30)]) == 0
    assert _redelivered(spool, [rec(15), rec(20), rec(40)]) == 2
    assert _redelivered(spool, [rec(15), rec(40), rec(35)]) == 1
