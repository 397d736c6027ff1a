"""Deadbands in the real SQLite spool: the last sent values are committed with the records, so a
reopened spool neither resends nor loses a change, and a redelivery is decided consistently."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.dead_letter_log import DeadLetterReporter
from bridge.deadband import Sent, decide
from bridge.errors import SpoolError
from bridge.housekeeping import housekeeping_loop
from bridge.metrics import BridgeMetrics
from bridge.models import Deadband, Deadbands, Record
from bridge.settings import DeadLetterSettings, SpoolSettings, Synchronous
from bridge.spool.facade import AsyncSpool
from bridge.spool.schema import SCHEMA_VERSION
from bridge.spool.store import Spool
from tests.support.waiting import running, until

S = 1_000_000
T0 = 1_795_680_000_000_000
BANDS = Deadbands(
    "env",
    Deadband("absolute", 0.5, 300 * S),
    (("state", Deadband("on_change", 0.0, 3600 * S)),),
)


def rec(t_s: float, device: str = "d", **metrics: float) -> Record:
    ts = T0 + round(t_s * S)
    return Record(device, ts, dict(metrics), ts, None, BANDS)


def open_spool(path: Path, synchronous: Synchronous = "FULL") -> Spool:
    spool = Spool(SpoolSettings(path, reserve_bytes=0, synchronous=synchronous))
    spool.open()
    return spool


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = open_spool(tmp_path / "s.db")
    try:
        yield s
    finally:
        s.close()


def stored(spool: Spool) -> list[tuple[float, dict[str, float]]]:
    return [((r.ts_us - T0) / S, r.metrics) for r in spool.outbox.fetch(0, 1000)]


def state(spool: Spool) -> dict[tuple[str, str], tuple[float, float]]:
    rows = spool.file.conn.execute("SELECT device_id, metric, value, ts_us FROM deadband_state")
    return {(d, m): (v, (t - T0) / S) for d, m, v, t in rows}


def test_points_within_the_band_are_held_back_counted_and_not_stored(spool: Spool) -> None:
    """Only values that left the band are stored; the rest are counted per rule, and a record
    with nothing left is not stored at all."""
    first = spool.writer.commit([rec(0, temp=20.0), rec(1, temp=20.2)], [])
    second = spool.writer.commit([rec(2, temp=20.4), rec(3, temp=21.0)], [])
    assert (first.points_inserted, first.held_back) == (1, (("env", 1),))
    assert (second.points_inserted, second.held_back) == (1, (("env", 1),))
    assert stored(spool) == [(0.0, {"temp": 20.0}), (3.0, {"temp": 21.0})]
    assert spool.file.depth_records == 2
    assert state(spool) == {("d", "temp"): (21.0, 3.0)}


def test_a_record_keeps_the_points_that_moved(spool: Spool) -> None:
    """A record whose temperature stayed and whose state changed is stored with the state only;
    each metric is decided by its own band."""
    spool.writer.commit([rec(0, temp=20.0, state=1.0)], [])
    result = spool.writer.commit([rec(1, temp=20.1, state=2.0), rec(2, temp=20.2, state=2.0)], [])
    assert result.held_back == (("env", 3),)
    assert stored(spool) == [(0.0, {"temp": 20.0, "state": 1.0}), (1.0, {"state": 2.0})]


def test_metrics_without_a_band_are_always_stored(tmp_path: Path) -> None:
    """A rule band only on one metric leaves the others untouched."""
    only_state = Deadbands("env", None, (("state", Deadband("on_change", 0.0, 3600 * S)),))
    spool = open_spool(tmp_path / "s.db")
    try:
        for t in range(3):
            r = rec(t, temp=20.0, state=1.0)
            spool.writer.commit(
                [Record(r.device_id, r.ts_us, r.metrics, r.ts_us, None, only_state)], []
            )
        assert stored(spool) == [
            (0.0, {"temp": 20.0, "state": 1.0}),
            (1.0, {"temp": 20.0}),
            (2.0, {"temp": 20.0}),
        ]
    finally:
        spool.close()


def test_a_reopened_spool_continues_from_the_stored_state(tmp_path: Path) -> None:
    """After a restart the last sent value is still known: an unchanged value is not resent,
    and a change is not lost."""
    path = tmp_path / "s.db"
    spool = open_spool(path)
    spool.writer.commit([rec(0, temp=20.0, state=1.0)], [])
    spool.close()
    spool = open_spool(path)
    try:
        held = spool.writer.commit([rec(1, temp=20.3, state=1.0)], [])
        moved = spool.writer.commit([rec(2, temp=20.6, state=0.0)], [])
        assert (held.points_inserted, held.held_back) == (0, (("env", 2),))
        assert (moved.points_inserted, moved.held_back) == (2, ())
        assert stored(spool)[-1] == (2.0, {"temp": 20.6, "state": 0.0})
    finally:
        spool.close()


def test_a_failed_commit_keeps_neither_records_nor_state(spool: Spool) -> None:
    """The state is written in the records' transaction: when that transaction fails (a crash
    before the PUBACK), the redelivered message is decided against the old state and sent, not
    held back as if it had gone out."""
    spool.writer.commit([rec(0, temp=20.0)], [])
    boom = sqlite3.OperationalError("disk I/O error")
    with (
        mock.patch.object(spool.fair, "insert_held", side_effect=boom),
        pytest.raises(SpoolError),
    ):
        spool.writer.commit([rec(1, temp=25.0)], [])
    assert state(spool) == {("d", "temp"): (20.0, 0.0)}
    assert stored(spool) == [(0.0, {"temp": 20.0})]
    again = spool.writer.commit([rec(1, temp=25.0)], [])
    assert (again.points_inserted, again.held_back) == (1, ())
    assert stored(spool) == [(0.0, {"temp": 20.0}), (1.0, {"temp": 25.0})]


def test_a_redelivered_message_is_decided_as_before(spool: Spool) -> None:
    """A message committed twice (its PUBACK lost) is stored once if it was sent, and held back
    again if it was held back: never sent twice, never lost."""
    spool.writer.commit([rec(0, temp=20.0)], [])
    spool.writer.commit([rec(1, temp=21.0)], [])
    again = spool.writer.commit([rec(1, temp=21.0)], [])
    assert (again.points_inserted, again.points_duplicate, again.held_back) == (0, 1, ())
    spool.writer.commit([rec(2, temp=21.1)], [])
    held_again = spool.writer.commit([rec(2, temp=21.1)], [])
    assert (held_again.points_inserted, held_again.held_back) == (0, (("env", 1),))
    assert stored(spool) == [(0.0, {"temp": 20.0}), (1.0, {"temp": 21.0})]


def test_a_redelivery_decided_differently_is_still_stored_once(spool: Spool) -> None:
    """A message whose temperature went out and whose mode was held back, redelivered after a
    later change of mode committed with it: the mode now passes as an older point, but the
    trimmed record kept the whole message's id, so the redelivery is recognised as a whole
    and its temperature is not stored twice."""
    spool.writer.commit([rec(0, temp=20.0, mode=1.0)], [])
    spool.writer.commit([rec(1, temp=21.0, mode=1.0), rec(2, temp=21.1, mode=2.0)], [])
    assert stored(spool)[1:] == [(1.0, {"temp": 21.0}), (2.0, {"mode": 2.0})]
    again = spool.writer.commit([rec(1, temp=21.0, mode=1.0)], [])
    assert (again.points_inserted, again.held_back) == (0, ())
    assert len(stored(spool)) == 3
    spool.outbox.delivered([r.seq for r in spool.outbox.fetch(0, 10)])
    after_delivery = spool.writer.commit([rec(1, temp=21.0, mode=1.0)], [])
    assert after_delivery.points_inserted == 0


def test_a_redelivery_after_delivery_is_not_sent_again(spool: Spool) -> None:
    """Once the sent point was delivered, its redelivery meets the delivered-id memory."""
    spool.writer.commit([rec(0, temp=20.0)], [])
    spool.outbox.delivered([r.seq for r in spool.outbox.fetch(0, 10)])
    again = spool.writer.commit([rec(0, temp=20.0)], [])
    assert (again.points_inserted, again.held_back) == (0, ())
    assert spool.file.depth_points == 0


def test_an_older_point_passes_and_leaves_the_state(spool: Spool) -> None:
    """A point older than the last sent one is stored (never dropped), the state stays."""
    spool.writer.commit([rec(10, temp=20.0)], [])
    late = spool.writer.commit([rec(5, temp=20.1)], [])
    assert (late.points_inserted, late.held_back) == (1, ())
    assert state(spool) == {("d", "temp"): (20.0, 10.0)}


def test_values_of_one_commit_see_each_other(spool: Spool) -> None:
    """Several values of one series in one group commit are decided one after the other."""
    result = spool.writer.commit(
        [rec(0, temp=20.0), rec(1, temp=20.1), rec(2, temp=20.7), rec(3, temp=20.8)], []
    )
    assert result.held_back == (("env", 2),)
    assert [m for _t, m in stored(spool)] == [{"temp": 20.0}, {"temp": 20.7}]


def test_devices_are_kept_apart(spool: Spool) -> None:
    """Each device has its own last sent value."""
    spool.writer.commit([rec(0, "a", temp=20.0), rec(0, "b", temp=30.0)], [])
    result = spool.writer.commit([rec(1, "a", temp=20.1), rec(1, "b", temp=20.1)], [])
    assert result.held_back == (("env", 1),)
    assert state(spool)[("b", "temp")] == (20.1, 1.0)


def test_the_heartbeat_sends_an_unchanged_value(spool: Spool) -> None:
    """An unchanged value goes out again a heartbeat (300 s) after the last sent one."""
    spool.writer.commit([rec(t, temp=20.0) for t in (0, 100, 299, 300, 301)], [])
    assert [t for t, _m in stored(spool)] == [0.0, 300.0]


def test_quiet_series_are_pruned_and_then_sent_again(spool: Spool) -> None:
    """Rows are kept two heartbeats after the point that moved them (receive time), then
    pruned; the next value of a pruned series is sent."""
    spool.writer.commit([rec(0, temp=20.0, state=1.0)], [])
    deadbands = spool.deadbands
    assert deadbands.prune_stale(T0 + 600 * S) == 0  # temp: kept until 600 s
    assert deadbands.prune_stale(T0 + 601 * S) == 1
    assert set(state(spool)) == {("d", "state")}  # on_change, 3600 s: kept 7200 s
    result = spool.writer.commit([rec(700, temp=20.0, state=1.0)], [])
    assert result.held_back == (("env", 1),)
    assert stored(spool)[-1] == (700.0, {"temp": 20.0})


def test_a_spool_from_before_deadbands_opens_and_gains_the_table(tmp_path: Path) -> None:
    """An existing spool without the table (same layout version) opens, keeps its records and
    gets the table."""
    path = tmp_path / "s.db"
    spool = open_spool(path)
    spool.writer.commit([Record("d", T0, {"x": 1.0}, T0)], [])
    spool.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE deadband_state")
    db.commit()
    db.close()
    spool = open_spool(path)
    try:
        assert spool.file.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        spool.writer.commit([rec(0, temp=20.0), rec(1, temp=20.1)], [])
        assert stored(spool) == [(0.0, {"x": 1.0}), (0.0, {"temp": 20.0})]
    finally:
        spool.close()


@settings(max_examples=60, deadline=None, database=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(1, 40),  # seconds since the message before
            st.sampled_from([20.0, 20.3, 20.6, 21.5, 19.0]),  # temp
            st.sampled_from([0.0, 1.0]),  # state
        ),
        min_size=1,
        max_size=30,
    ),
    cuts=st.lists(st.integers(0, 30), max_size=6),
    crashes=st.lists(st.integers(0, 6), max_size=3),
    reopen=st.integers(0, 6),
)
def test_any_commits_redeliveries_and_reopen_keep_every_change_once(
    steps: list[tuple[int, float, float]], cuts: list[int], crashes: list[int], reopen: int
) -> None:
    """However the messages are grouped into commits, whichever commits are redelivered whole
    (a crash before their PUBACKs) and wherever the spool is reopened: every point the pure
    decision picks from the stream is stored, each point at most once, and nothing that was not
    published; without redeliveries, exactly the picked points."""
    t, messages = 0.0, []
    for gap, temp, state_ in steps:
        t += gap
        messages.append(rec(t, temp=temp, state=state_))
    bounds = sorted({0, len(messages), *(c for c in cuts if c < len(messages))})
    commits = [messages[a:b] for a, b in itertools.pairwise(bounds)]
    want = set()
    last: dict[str, Sent | None] = {}
    for r in messages:
        for name, value in r.metrics.items():
            band = BANDS.of(name)
            assert band is not None
            send, last[name] = decide(last.get(name), value, r.ts_us, band)
            if send:
                want.add((r.ts_us, name, value))
    published = {(r.ts_us, n, v) for r in messages for n, v in r.metrics.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.db"
        # No fsync per commit (WAL with NORMAL): the property is about decisions, not
        # durability (tested above), and a busy disk would make the examples slow.
        spool = open_spool(path, "NORMAL")
        try:
            for i, commit in enumerate(commits):
                if i == reopen:
                    spool.close()
                    spool = open_spool(path, "NORMAL")
                spool.writer.commit(commit, [])
                if i in crashes:
                    spool.writer.commit(commit, [])  # the broker redelivers the whole commit
            got = [
                (r.ts_us, n, v) for r in spool.outbox.fetch(0, 10_000) for n, v in r.metrics.items()
            ]
        finally:
            spool.close()
    assert want <= set(got) <= published
    assert len(got) == len(set(got))
    if not any(i < len(commits) for i in crashes):
        assert set(got) == want


async def test_housekeeping_forgets_quiet_series(tmp_path: Path) -> None:
    """The housekeeping loop prunes state rows kept past two heartbeats (here: received long
    ago) and leaves the others."""
    path = tmp_path / "s.db"
    raw = open_spool(path)
    old = rec(0, temp=20.0)  # received at T0: its row is kept until T0 + 600 s, long past
    now_us = int(time.time() * 1_000_000)
    fresh = Record("e", now_us, {"temp": 1.0}, now_us, None, BANDS)
    raw.writer.commit([old, fresh], [])
    raw.close()

    def series() -> set[tuple[str, str]]:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return set(db.execute("SELECT device_id, metric FROM deadband_state").fetchall())

    reporter = DeadLetterReporter(BridgeMetrics(), DeadLetterSettings())
    async with AsyncSpool(raw) as spool:
        loop = housekeeping_loop(
            spool, lambda _n: None, reporter, grace_s=0, coalescing=False, interval=0.01
        )
        async with running(loop):
            await until(lambda: ("d", "temp") not in series(), "the quiet series forgotten")
    assert series() == {("e", "temp")}
