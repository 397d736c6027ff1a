"""Unit tests of the fair share of the spool between devices, each on a real SQLite spool: a
runaway device sending 100x the others is held back (back-pressure) or loses its own oldest
points (drop-oldest) while the quiet devices keep their room; held points are released in
order; the heaviest talkers are listed; and a backlog is taken fairly across devices."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.errors import SpoolFull
from bridge.models import Record
from bridge.settings import SpoolSettings, WhenFull
from bridge.spool.store import Spool
from tests.support.clock import FakeClock
from tests.support.spool import NOW_S, QUIET, RUNAWAY, T0_US, burst, quiet, reading, reopen

MakeSpool = Callable[..., Spool]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[MakeSpool]:
    """Open spools, 1 MiB cap unless told (closed after the test)."""
    opened: list[Spool] = []

    def factory(when_full: WhenFull = "back-pressure", max_bytes: int = 1 << 20) -> Spool:
        settings = SpoolSettings(
            tmp_path / "s.db", max_bytes=max_bytes, when_full=when_full, reserve_bytes=0
        )
        s = Spool(settings, clock=FakeClock(NOW_S))
        s.open()
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()


def _waiting(s: Spool, table: str = "records") -> Counter[str]:
    rows = s.file.conn.execute(f"SELECT device_id, SUM(n) FROM {table} GROUP BY device_id")  # noqa: S608
    return Counter({str(d): int(n) for d, n in rows})


def _fill_until_refused(s: Spool) -> int:
    """Commit the runaway's bursts with the quiet readings until the spool refuses one;
    returns how many were committed."""
    i = 0
    while True:
        try:
            s.writer.commit(burst(i) + quiet(i), [])
        except SpoolFull:
            return i
        i += 1


def test_a_runaway_device_is_held_and_the_quiet_devices_keep_their_room(make: MakeSpool) -> None:
    """Back-pressure: a device at 100x the others fills the spool; from the fair-share
    threshold on its points are committed but held, and quiet devices' commits are accepted
    all along and after; when the held budget is used up the spool refuses the runaway (full
    for all, as without the fair share). Every committed point is waiting or held."""
    s = make()
    sent: Counter[str] = Counter()
    i = 0
    while True:
        try:
            s.writer.commit(burst(i), [])
        except SpoolFull as exc:
            refusal = str(exc)
            break
        sent[RUNAWAY] += 400
        s.writer.commit(quiet(i), [])  # never refused while the runaway is accepted
        sent.update(dict.fromkeys(QUIET, 4))
        i += 1
    for k in range(i, i + 40):  # the quiet devices still have room of their own
        s.writer.commit(quiet(k), [])
        sent.update(dict.fromkeys(QUIET, 4))
    assert "held_max_bytes" in refusal
    assert RUNAWAY in refusal
    waiting, held = _waiting(s), _waiting(s, "held")
    assert waiting + held == sent, "a committed point is neither waiting nor held"
    assert set(held) == {RUNAWAY}
    assert held[RUNAWAY] == s.file.held_points > 0
    assert s.file.used_bytes > s.file.settings.max_bytes * s.file.settings.fair_share_at
    assert not s.file.full, "the quiet devices' room is not used up by held points"
    status = s.fair.status()
    assert (status.active, status.over_share) == (True, 1)
    again = reopen(s)  # held points are as durable as any: a restart finds them
    try:
        assert (again.file.held_points, again.file.depth_points) == (
            held[RUNAWAY],
            sum(waiting.values()),
        )
    finally:
        again.close()


def test_held_points_are_released_in_order_as_delivery_frees_room(make: MakeSpool) -> None:
    """Once delivery brings the spool below the threshold, held records move back for
    delivery oldest first; each device's records are handed out in time order and every
    point arrives exactly once."""
    s = make()
    _fill_until_refused(s)
    assert s.file.held_points > 0
    total = s.file.depth_points + s.file.held_points
    delivered: list[Record] = []
    while s.file.depth_points or s.file.held_points:
        batches = s.outbox.take_batches(4, 100, single_object=False, newest_first=False)
        if not batches:
            assert s.fair.release() > 0, "held points not released into an empty spool"
            continue
        for b in batches:
            s.outbox.delivered(b.seqs)
            delivered += [Record(r.device_id, r.ts_us, r.metrics, r.received_us) for r in b.records]
        s.fair.release()
    assert sum(len(r.metrics) for r in delivered) == total
    assert len({(r.device_id, r.ts_us) for r in delivered}) == len(delivered)
    runaway_ts = [r.ts_us for r in delivered if r.device_id == RUNAWAY]
    assert runaway_ts == sorted(runaway_ts), "the runaway's points left out of order"
    assert s.file.conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0] == 0


def test_a_device_with_held_points_stays_held_until_they_are_released(make: MakeSpool) -> None:
    """Order per device: once some of a device's points are held, its next ones are held too,
    even below its share, so they cannot overtake the held ones."""
    s = make()
    i = 0
    while not s.file.held_points:
        s.writer.commit(burst(i) + quiet(i), [])
        i += 1
    result = s.writer.commit([reading(RUNAWAY, 10**6)], [])
    assert (result.points_held, result.points_inserted) == (4, 0)


def test_drop_oldest_takes_the_runaway_s_own_oldest_points_first(make: MakeSpool) -> None:
    """Drop-oldest: at the cap, room comes from the runaway's oldest points, never from the
    quiet devices; every dropped point is counted, as over_share."""
    s = make("drop-oldest")
    sent: Counter[str] = Counter()
    dropped = over_share = 0
    for i in range(120):
        result = s.writer.commit(burst(i) + quiet(i), [])
        sent[RUNAWAY] += 400
        sent.update(dict.fromkeys(QUIET, 4))
        dropped += result.points_dropped
        over_share += getattr(result, "points_dropped_over_share", 0)
    waiting = _waiting(s)
    assert dropped > 0
    assert {d: waiting[d] for d in QUIET} == {d: sent[d] for d in QUIET}, "a quiet point dropped"
    assert waiting[RUNAWAY] + dropped == sent[RUNAWAY]
    assert over_share == dropped == s.file.dropped_points_total
    kept = [r.ts_us for r in s.outbox.fetch(0, 10**6) if r.device_id == RUNAWAY]
    assert kept == [reading(RUNAWAY, k).ts_us for k in range(12000 - len(kept), 12000)]


def test_top_devices_names_the_runaway_first_and_is_bounded(make: MakeSpool) -> None:
    """The heaviest talkers: the runaway first, with its share of the spool, its held points
    and what it sent recently; at most 100 entries whatever is asked."""
    s = make()
    i = 0
    while not s.file.held_points:
        s.writer.commit(burst(i) + quiet(i), [])
        i += 1
    top = s.fair.top(3)
    fair, devices = top["fair_share"], top["devices"]
    assert isinstance(fair, dict)
    assert isinstance(devices, list)
    assert fair["active"] is True
    assert len(devices) == 3
    first = devices[0]
    assert first["device_id"] == RUNAWAY
    assert first["over_share"] is True
    assert first["points_held"] == s.file.held_points
    assert first["share_of_spool"] > 0.9
    assert first["points_received_recently"] == 400 * i
    assert devices[1]["over_share"] is False
    assert devices[1]["points_received_recently"] == 4 * i
    for k in range(300):  # many devices: the list stays bounded
        s.writer.commit([reading(f"other-{k}", 0)], [])
    many = s.fair.top(10_000)["devices"]
    assert isinstance(many, list)
    assert len(many) == 100


def test_a_backlog_is_taken_fairly_across_devices(make: MakeSpool) -> None:
    """Behind 2,000 waiting readings of one device, the quiet devices' readings go out in the
    next requests, not after the whole backlog; each request has at most 100 points, each
    device's readings leave in time order, and every reading leaves exactly once."""
    s = make(max_bytes=1 << 30)
    for i in range(20):
        s.writer.commit(burst(i), [])
    s.writer.commit(quiet(0), [])
    first = s.outbox.take_batches(4, 100, single_object=False, newest_first=False)
    devices = {r.device_id for b in first for r in b.records}
    assert set(QUIET) <= devices, "the quiet devices wait behind the runaway's backlog"
    out = [r for b in first for r in b.records]
    assert all(b.points <= 100 for b in first)
    for b in first:
        s.outbox.delivered(b.seqs)
    s.writer.commit(quiet(1), [])
    while batches := s.outbox.take_batches(4, 100, single_object=False, newest_first=False):
        assert all(b.points <= 100 for b in batches)
        out += [r for b in batches for r in b.records]
        for b in batches:
            s.outbox.delivered(b.seqs)
    assert len(out) == len({r.seq for r in out}) == 2000 + 18
    for device in [RUNAWAY, *QUIET]:
        ts = [r.ts_us for r in out if r.device_id == device]
        assert ts == sorted(ts), f"{device} out of order"
    late_quiet = [k for k, r in enumerate(out) if r.device_id in QUIET and r.ts_us > T0_US]
    assert max(late_quiet) < 400, "a quiet reading committed later waited for the backlog"


def test_interleaved_readings_of_quiet_devices_are_not_left_behind(make: MakeSpool) -> None:
    """The runaway's 100 readings then one of each quiet device, 30 times over: each window of
    the oldest readings holds one of each quiet device, yet their later readings are still
    taken early, not one per window as the backlog drains."""
    s = make(max_bytes=1 << 30)
    for i in range(30):
        s.writer.commit(burst(i) + quiet(i), [])
    order: list[str] = []
    while batches := s.outbox.take_batches(4, 100, single_object=False, newest_first=False):
        for b in batches:
            order += [r.device_id for r in b.records]
            s.outbox.delivered(b.seqs)
    last_quiet = max(k for k, d in enumerate(order) if d != RUNAWAY)
    assert len(order) == 30 * 109
    assert last_quiet < len(order) // 4, "quiet readings drained at the runaway's pace"


def test_without_a_dominant_device_batches_stay_oldest_first(make: MakeSpool) -> None:
    """Devices sending alike get plain oldest-first batches (same membership as ever)."""
    s = make()
    s.writer.commit([reading(f"d{k % 12}", k) for k in range(600)], [])
    batches = s.outbox.take_batches(4, 100, single_object=False, newest_first=False)
    seqs = [seq for b in batches for seq in b.seqs]
    assert seqs == sorted(seqs)
    assert seqs == [r.seq for r in s.outbox.fetch(0, len(seqs))]
