"""A process crash in the middle of a spool operation, pinned down without hypothesis: kill -9
at every SQL statement of commit, delivered, reject and settle_partly in turn leaves the file as
before the operation or as after it, never in between (the model test, ``test_spool_model.py``,
crashes at random places)."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.models import DeadLetter, Record
from bridge.settings import SpoolSettings
from bridge.spool.store import Spool
from tests.support.clock import FakeClock
from tests.support.spool import NOW_S, T0_US, integrity
from tests.support.spool_crash import run_and_crash


def test_a_crash_with_uncommitted_frames_in_the_wal_leaves_no_trace(tmp_path: Path) -> None:
    """SIGKILL before COMMIT, with the transaction's pages already in the WAL: after restart
    the batch is absent, the old data intact, and the file passes integrity_check."""
    path = tmp_path / "bridge.db"
    spool = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    spool.open()
    first = [Record("d1", T0_US + i, {"t": float(i)}, T0_US) for i in range(3)]
    spool.writer.commit(first, [])
    spool.close()
    assert not Path(f"{path}-wal").exists()  # a clean close checkpoints and removes the WAL
    big = [
        Record("wide", T0_US + i, {f"m{j:02d}": j + 0.5 for j in range(100)}, T0_US)
        for i in range(50)
    ]
    # BEGIN IMMEDIATE, SELECT MAX(seq), SELECT delivered ids, INSERT: killed before COMMIT
    before_commit = 4

    def commit_big(s: Spool) -> object:
        return s.writer.commit(big, [])

    assert not run_and_crash(
        lambda: Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S)),
        commit_big,
        before_commit,
    )
    assert Path(f"{path}-wal").stat().st_size > 50 * 1024, "the child spilled no pages"
    again = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    again.open()
    try:
        assert again.file.moved_aside is None
        assert integrity(again) == ["ok"]
        assert [r.metrics for r in again.outbox.fetch(0, 100)] == [r.metrics for r in first]
        assert (again.file.depth_records, again.file.depth_points) == (3, 3)
    finally:
        again.close()


def test_a_crash_right_after_commit_keeps_the_batch(tmp_path: Path) -> None:
    """SIGKILL after COMMIT returned but before the caller could act on it: the batch is there
    (the broker's redelivery of it will then be deduplicated by record id)."""
    path = tmp_path / "bridge.db"
    batch = [Record("d1", T0_US + i, {"t": float(i)}, T0_US) for i in range(5)]

    def commit(s: Spool) -> object:
        return s.writer.commit(batch, [])

    assert run_and_crash(
        lambda: Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S)), commit, 10**6
    )
    again = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    again.open()
    try:
        assert integrity(again) == ["ok"]
        assert again.file.depth_points == 5
        assert again.writer.commit(batch, []).records_duplicate == 5
    finally:
        again.close()


def snapshot(path: Path) -> tuple[object, ...]:
    """Everything a spool file holds that an operation may change, read by a reopened Spool
    (which must agree with the file about its counters)."""
    s = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    s.open()
    try:
        assert s.file.moved_aside is None
        assert integrity(s) == ["ok"]
        db = s.file.conn
        # Settled records wait no more and their ids count as delivered, swept out or not.
        rows = db.execute(
            "SELECT seq, rid, metrics, n FROM records "
            "WHERE seq NOT IN (SELECT seq FROM settled) ORDER BY seq"
        ).fetchall()
        assert (s.file.depth_records, s.file.depth_points) == (len(rows), sum(r[3] for r in rows))
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        assert s.file.delivered_points_total == int(meta.get("delivered_points", 0))
        ids = sorted(
            r
            for (r,) in db.execute(
                "SELECT rid FROM delivered_ids UNION ALL "
                "SELECT rid FROM records WHERE seq IN (SELECT seq FROM settled)"
            )
        )
        dead = db.execute("SELECT reason, payload FROM dead_letters ORDER BY id").fetchall()
        audit = s.audit.rows(0, 2**62), s.audit.devices()  # settled records counted in
        return rows, meta, ids, dead, audit
    finally:
        s.close()


OPERATIONS: dict[str, Callable[[Spool, list[int]], object]] = {
    "commit": lambda s, _seqs: s.writer.commit(
        [Record("d9", T0_US + i, {"t": 1.0, "v": 2.0}, T0_US) for i in range(4)],
        [DeadLetter("invalid_json", "", "a/b", b"{", "r", T0_US)],
    ),
    "delivered": lambda s, seqs: s.outbox.delivered(seqs[:3]),
    "reject": lambda s, seqs: s.outbox.reject(seqs[1:3], "api_rejected", "400"),
    "settle_partly": lambda s, seqs: s.outbox.settle_partly(
        seqs[2], {"t": 2.0}, "api_rejected", "400"
    ),
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_every_crash_point_of_an_operation_leaves_all_of_it_or_none(
    name: str, tmp_path: Path
) -> None:
    """SIGKILL before each SQL statement of one operation in turn: after restart the file is
    exactly as before the operation or exactly as after it, counters included."""
    base = tmp_path / "base.db"
    spool = Spool(SpoolSettings(base, reserve_bytes=0), clock=FakeClock(NOW_S))
    spool.open()
    spool.writer.commit(
        [Record("d1", T0_US + i, {"t": float(i), "v": 1.0}, T0_US) for i in range(6)], []
    )
    seqs = [r.seq for r in spool.outbox.fetch(0, 10)]
    spool.outbox.delivered(seqs[-1:])  # a delivered id and a delivered count to keep intact
    spool.close()
    before = snapshot(base)
    done = tmp_path / "done.db"
    shutil.copy(base, done)
    s = Spool(SpoolSettings(done, reserve_bytes=0), clock=FakeClock(NOW_S))
    s.open()
    OPERATIONS[name](s, seqs)
    s.close()
    after = snapshot(done)
    assert after != before
    outcomes = set()
    for kill_at in [*range(25), 10**6]:
        path = tmp_path / f"crash-{kill_at}.db"
        shutil.copy(base, path)

        def op(s: Spool) -> object:
            return OPERATIONS[name](s, seqs)

        committed = run_and_crash(
            functools.partial(Spool, SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S)),
            op,
            kill_at,
        )
        assert snapshot(path) == (after if committed else before), (name, kill_at, committed)
        outcomes.add(committed)
    assert outcomes == {False, True}


def raw_counts(path: Path) -> tuple[int, int, int]:
    """Records, settled records and delivered ids as the file holds them."""
    s = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    s.open()
    try:
        db = s.file.conn
        return (
            db.execute("SELECT COUNT(*) FROM records").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM settled").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM delivered_ids").fetchone()[0],
        )
    finally:
        s.close()


def test_every_crash_point_of_a_sweep_leaves_it_whole_or_undone(tmp_path: Path) -> None:
    """SIGKILL before each SQL statement of a sweep of settled records: after restart they
    are all still settled in ``records`` or all gone with their ids remembered, and what
    waits and what counts as delivered is the same either way."""
    base = tmp_path / "base.db"
    spool = Spool(SpoolSettings(base, reserve_bytes=0), clock=FakeClock(NOW_S))
    spool.open()
    spool.writer.commit(
        [Record("d1", T0_US + i, {"t": float(i), "v": 1.0}, T0_US) for i in range(6)], []
    )
    spool.outbox.delivered([r.seq for r in spool.outbox.fetch(0, 3)])
    assert len(spool.file.unswept) == 3
    spool.close()
    before = snapshot(base)
    assert raw_counts(base) == (6, 3, 0)
    outcomes = set()
    for kill_at in [*range(25), 10**6]:
        path = tmp_path / f"crash-{kill_at}.db"
        shutil.copy(base, path)
        committed = run_and_crash(
            functools.partial(Spool, SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S)),
            lambda s: s.outbox.sweep(),
            kill_at,
        )
        assert raw_counts(path) == ((3, 0, 3) if committed else (6, 3, 0)), kill_at
        assert snapshot(path) == before, kill_at
        outcomes.add(committed)
    assert outcomes == {False, True}
