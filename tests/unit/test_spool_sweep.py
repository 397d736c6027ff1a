"""Settled records and their sweep (schema.SETTLED): a settlement counts records as delivered
and leaves them in ``records``; a later sweep moves their ids to the delivered-id memory and
deletes them, for many settlements at once. In between they are delivered for every purpose:
never handed out again, not waiting, not counted, and a redelivery of one is a duplicate."""

from __future__ import annotations

import pytest

from bridge.spool import settler
from bridge.spool.store import Spool
from tests.support.clock import FakeClock
from tests.support.spool import rec, reopen


def _counts(spool: Spool) -> tuple[int, int, int]:
    db = spool.file.conn
    return (
        db.execute("SELECT COUNT(*) FROM records").fetchone()[0],
        db.execute("SELECT COUNT(*) FROM settled").fetchone()[0],
        db.execute("SELECT COUNT(*) FROM delivered_ids").fetchone()[0],
    )


def _seqs(spool: Spool) -> list[int]:
    return [r.seq for r in spool.outbox.fetch(0, 1000)]


def test_settled_records_are_delivered_for_every_purpose_until_their_sweep(spool: Spool) -> None:
    records = [rec(i, device=f"d{i % 2}") for i in range(10)]
    spool.writer.commit(records, [])
    seqs = _seqs(spool)
    spool.outbox.delivered(seqs[:4])
    assert _counts(spool) == (10, 4, 0)
    assert spool.file.unswept.seqs == set(seqs[:4])
    assert _seqs(spool) == seqs[4:]
    assert (spool.file.depth_records, spool.file.depth_points) == (6, 12)
    assert spool.file.delivered_points_total == 8
    assert spool.file.oldest_received_us == records[4].received_us
    db = spool.file.conn
    assert dict(db.execute("SELECT device_id, points FROM devices")) == {"d0": 6, "d1": 6}
    # Delivered again (a late answer), rejected or partly settled: nothing changes.
    spool.outbox.delivered(seqs[:1])
    spool.outbox.reject(seqs[1:2], "api_rejected", "late")
    spool.outbox.settle_partly(seqs[2], {"m0": 0.0}, "api_rejected", "late")
    assert spool.dead_letters.count() == 0
    assert spool.file.delivered_points_total == 8
    # A redelivery by the broker is a duplicate, as after the sweep.
    assert spool.writer.commit(records[:4], []).records_duplicate == 4
    batches = spool.outbox.take_batches(4, 100, single_object=False, newest_first=False)
    assert [s for b in batches for s in b.seqs] == seqs[4:]

    spool.outbox.sweep()
    assert _counts(spool) == (6, 0, 4)
    assert spool.file.unswept.seqs == set()
    assert spool.writer.commit(records[:4], []).records_duplicate == 4
    assert (spool.file.depth_records, spool.file.depth_points) == (6, 12)
    assert dict(db.execute("SELECT device_id, points FROM devices")) == {"d0": 6, "d1": 6}


def test_settled_records_stay_delivered_across_a_restart(spool: Spool) -> None:
    records = [rec(i) for i in range(6)]
    spool.writer.commit(records, [])
    seqs = _seqs(spool)
    spool.outbox.delivered(seqs[:3])
    spool = reopen(spool)
    try:
        assert spool.file.unswept.seqs == set(seqs[:3])
        assert _seqs(spool) == seqs[3:]
        assert (spool.file.depth_records, spool.file.depth_points) == (3, 6)
        assert spool.file.oldest_received_us == records[3].received_us
        assert dict(spool.file.conn.execute("SELECT device_id, points FROM devices")) == {"d1": 6}
        batches = spool.outbox.take_batches(2, 100, single_object=False, newest_first=False)
        assert [s for b in batches for s in b.seqs] == seqs[3:]
        assert spool.writer.commit(records, []).records_duplicate == 6
    finally:
        spool.close()


def test_a_sweep_comes_after_enough_records_or_enough_time(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settler, "SWEEP_RECORDS", 5)
    clock = spool.file.clock
    assert isinstance(clock, FakeClock)
    spool.writer.commit([rec(i) for i in range(20)], [])
    seqs = _seqs(spool)
    spool.outbox.delivered(seqs[:4])
    assert _counts(spool) == (20, 4, 0)
    spool.outbox.delivered(seqs[4:5])  # the fifth: swept
    assert _counts(spool) == (15, 0, 5)
    spool.outbox.delivered(seqs[5:6])
    clock.advance(settler.SWEEP_EVERY_S - 0.5)
    spool.outbox.delivered(seqs[6:7])
    assert _counts(spool) == (15, 2, 5)
    clock.advance(1.0)  # the first of them settled more than SWEEP_EVERY_S ago
    spool.outbox.delivered(seqs[7:8])
    assert _counts(spool) == (12, 0, 8)


def test_fair_batches_settled_ahead_of_the_cursor_are_never_sent_again(spool: Spool) -> None:
    """Fair batches take records of a quieter device far ahead of the oldest-first cursor;
    settled and not swept, they must not come back in the batches taken after them."""
    spool.writer.commit(
        [rec(i, device="big") for i in range(300)]
        + [rec(1000 + i, device="small") for i in range(30)],
        [],
    )
    small = set(_seqs(spool)[300:])
    sent: list[int] = []
    outbox = spool.outbox
    while batches := outbox.take_batches(2, 50, single_object=False, newest_first=False):
        seqs = [s for b in batches for s in b.seqs]
        sent += seqs
        outbox.delivered(seqs)
    assert small <= set(sent[:100]), "the quieter device was served early (fair batches)"
    assert settler.SWEEP_RECORDS > 330  # nothing swept on the way
    assert len(sent) == len(set(sent)) == 330
    assert spool.file.depth_records == 0
    assert spool.file.delivered_points_total == 660
    outbox.sweep()
    assert _counts(spool) == (0, 0, 330)
