"""The audit of accepted points and the table of delivered devices in the real SQLite spool:
written in the settlement transaction (and only for what the API accepted), pruned past their
retention, capped with the least recently delivered devices evicted and counted."""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.models import Record
from bridge.settings import SpoolSettings
from bridge.spool.audit import FOLD_EVERY, MINUTE_US, AuditRow, fold_log, minute_of
from bridge.spool.store import Spool

S = 1_000_000
T0 = 1_795_680_000_000_000  # a whole minute
assert T0 % MINUTE_US == 0


class Clock:
    def __init__(self) -> None:
        self.now = T0 / S + 3600

    def __call__(self) -> float:
        return self.now


def open_spool(path: Path, clock: Clock, **kw: object) -> Spool:
    spool = Spool(SpoolSettings(path, reserve_bytes=0, **kw), clock)  # type: ignore[arg-type]
    spool.open()
    return spool


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def spool(tmp_path: Path, clock: Clock) -> Iterator[Spool]:
    s = open_spool(tmp_path / "s.db", clock)
    try:
        yield s
    finally:
        s.close()


def rec(t_s: float, device: str = "d", **metrics: float) -> Record:
    ts = T0 + round(t_s * S)
    return Record(device, ts, dict(metrics), ts)


def deliver_all(spool: Spool) -> list[int]:
    """Deliver every waiting record and sweep them out: their audit is then logged."""
    batches = spool.outbox.take_batches(10, 100, single_object=False, newest_first=False)
    seqs = [seq for b in batches for seq in b.seqs]
    spool.outbox.delivered(seqs)
    spool.outbox.sweep()
    return seqs


def test_accepted_points_are_audited_per_device_metric_and_minute(spool: Spool) -> None:
    spool.commit(
        [
            rec(1, temp=20.0, hum=50.0),
            rec(30, temp=22.0),
            rec(59.999, temp=19.5),
            rec(60, temp=30.0),  # the next minute
            rec(5, "e", temp=7.0),
        ],
        [],
    )
    assert spool.audit.rows(0, 2**62) == []  # committed is not accepted
    deliver_all(spool)
    rows = spool.audit.rows(0, 2**62)
    assert rows == [
        AuditRow("d", "hum", T0, 1, 50.0, 50.0, 50.0),
        AuditRow("d", "temp", T0, 3, 61.5, 19.5, 22.0),
        AuditRow("d", "temp", T0 + MINUTE_US, 1, 30.0, 30.0, 30.0),
        AuditRow("e", "temp", T0, 1, 7.0, 7.0, 7.0),
    ]
    assert spool.audit.rows(T0 + MINUTE_US, 2**62, ["d"]) == rows[2:3]
    assert spool.audit.rows(0, 2**62, ["e"]) == rows[3:]
    devices = {d.device_id: d for d in spool.audit.devices()}
    assert devices["d"].points == 5
    assert devices["d"].last_ts_us == T0 + 60 * S
    assert devices["e"].points == 1
    assert devices["d"].last_us == int((T0 / S + 3600) * S)


def test_a_second_batch_into_the_same_minute_adds_up(spool: Spool, clock: Clock) -> None:
    spool.commit([rec(1, temp=20.0)], [])
    deliver_all(spool)
    clock.now += 10
    spool.commit([rec(2, temp=25.0), rec(3, temp=-1.0)], [])
    deliver_all(spool)
    assert spool.audit.rows(0, 2**62) == [AuditRow("d", "temp", T0, 3, 44.0, -1.0, 25.0)]
    (device,) = spool.audit.devices()
    assert device.points == 3
    assert device.last_us - device.first_us == 10 * S


def test_rejected_points_are_not_audited_and_a_partial_settle_audits_the_rest(
    spool: Spool,
) -> None:
    spool.commit([rec(1, temp=20.0, hum=40.0), rec(2, "bad", temp=1.0)], [])
    batches = spool.outbox.take_batches(10, 100, single_object=False, newest_first=False)
    first, second = batches[0].seqs
    spool.outbox.settle_partly(first, {"hum": 40.0}, "api_rejected", "hum refused")
    spool.outbox.reject([second], "api_rejected", "device refused")
    assert spool.audit.rows(0, 2**62) == [AuditRow("d", "temp", T0, 1, 20.0, 20.0, 20.0)]
    assert [d.device_id for d in spool.audit.devices()] == ["d"]


def test_the_audit_survives_a_reopen(tmp_path: Path, clock: Clock) -> None:
    spool = open_spool(tmp_path / "s.db", clock)
    spool.commit([rec(1, temp=20.0)], [])
    deliver_all(spool)
    spool.close()
    again = open_spool(tmp_path / "s.db", clock)
    try:
        assert again.audit.rows(0, 2**62) == [AuditRow("d", "temp", T0, 1, 20.0, 20.0, 20.0)]
    finally:
        again.close()


def test_rows_past_the_retention_are_pruned(tmp_path: Path, clock: Clock) -> None:
    spool = open_spool(tmp_path / "s.db", clock, audit_retention_s=3600.0)
    try:
        spool.commit([rec(1, temp=20.0), rec(70, temp=21.0)], [])
        deliver_all(spool)
        hour = 3600 * S
        assert spool.audit.prune(T0 + hour) == (0, 0)  # the first minute is exactly 1 h old
        assert len(spool.audit.rows(0, 2**62)) == 2
        assert spool.audit.prune(T0 + hour + 1) == (1, 0)
        assert [r.minute_us for r in spool.audit.rows(0, 2**62)] == [T0 + MINUTE_US]
        assert spool.audit.prune(T0 + MINUTE_US + hour + 1) == (1, 0)
        assert spool.audit.rows(0, 2**62) == []
    finally:
        spool.close()


def test_the_device_table_is_capped_least_recently_delivered_first(
    tmp_path: Path, clock: Clock
) -> None:
    spool = open_spool(tmp_path / "s.db", clock, max_delivered_devices=3)
    try:
        for device in ("a", "b", "c", "d", "e"):
            clock.now += 1
            spool.commit([rec(1, device, temp=1.0)], [])
            deliver_all(spool)
        clock.now += 1
        spool.commit([rec(2, "a", temp=1.0)], [])  # a is the most recent again
        deliver_all(spool)
        assert len(spool.audit.devices()) == 5  # bounded by the prune, not per commit
        assert spool.audit.prune(int(clock.now * S)) == (0, 2)
        assert [d.device_id for d in spool.audit.devices()] == ["a", "d", "e"]
        assert spool.audit.evicted() == 2
        assert spool.audit.prune(int(clock.now * S)) == (0, 0)
        assert spool.audit.evicted() == 2
    finally:
        spool.close()


values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["d1", "d2"]), st.integers(0, 300 * S), values), max_size=40
    ),
    st.integers(1, 7),
)
def test_the_folded_log_matches_a_direct_computation(
    points: list[tuple[str, int, float]], per_row: int
) -> None:
    """Log rows of ``per_row`` records each, folded: count, sum, min and max per device and
    minute, and per device its points, first and last settlement and newest timestamp."""
    log = [
        (i + 1, 1000 + i, zlib.compress(orjson.dumps([(d, T0 + t, {"m": v}) for d, t, v in chunk])))
        for i, chunk in enumerate(
            points[start : start + per_row] for start in range(0, len(points), per_row)
        )
    ]
    folded = fold_log(log)
    for (device, metric, minute), t in folded.keys.items():
        mine = [v for d, ts, v in points if d == device and minute_of(T0 + ts) == minute]
        assert metric == "m"
        assert (t.n, t.lo, t.hi) == (len(mine), min(mine), max(mine))
        assert math.isclose(t.total, math.fsum(mine), rel_tol=1e-9, abs_tol=1e-6)
    assert sum(t.n for t in folded.keys.values()) == len(points)
    for device, dt in folded.devices.items():
        rows = [i for i, (d, _, _) in enumerate(points) if d == device]
        assert dt.points == len(rows)
        assert (dt.first_us, dt.last_us) == (1000 + rows[0] // per_row, 1000 + rows[-1] // per_row)
        assert dt.last_ts_us == T0 + max(points[i][1] for i in rows)
    assert set(folded.devices) == {p[0] for p in points}
    assert folded.last_id == len(log)


def test_what_is_read_is_the_same_before_and_after_the_log_is_folded(
    tmp_path: Path, clock: Clock
) -> None:
    """Each sweep appends to the log; every FOLD_EVERY the log goes into the tables.
    ``rows`` and ``devices`` read both, so a fold changes nothing that they show."""
    spool = open_spool(tmp_path / "s.db", clock)
    try:
        reads = []
        for n in range(FOLD_EVERY + 5):
            clock.now += 1
            spool.commit([rec(7 * n, f"d{n % 3}", temp=float(n), hum=-float(n))], [])
            deliver_all(spool)
            if n in (FOLD_EVERY - 2, FOLD_EVERY + 4):
                reads.append((spool.audit.rows(0, 2**62), spool.audit.devices()))
        logged = spool.file.conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0]
        assert logged == 5  # folded once, at the 64th sweep
        spool.audit.prune(int(clock.now * S))  # folds the rest first
        assert spool.file.conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0] == 0
        assert (spool.audit.rows(0, 2**62), spool.audit.devices()) == reads[-1]
        rows, devices = reads[-1]
        assert sum(r.n for r in rows) == 2 * (FOLD_EVERY + 5)
        assert {d.device_id: d.points for d in devices} == {
            f"d{k}": 2 * sum(1 for n in range(FOLD_EVERY + 5) if n % 3 == k) for k in range(3)
        }
        early_rows, early_devices = reads[0]
        assert sum(r.n for r in early_rows) == 2 * (FOLD_EVERY - 1)
        assert [d.first_us for d in early_devices] == [d.first_us for d in devices]
    finally:
        spool.close()


def test_audit_rows_over_their_cap_go_oldest_minute_first(tmp_path: Path, clock: Clock) -> None:
    spool = open_spool(tmp_path / "s.db", clock, audit_max_rows=2)
    try:
        for minute in range(4):
            clock.now += 1
            spool.commit([rec(60 * minute, temp=float(minute))], [])
            deliver_all(spool)
        assert spool.audit.prune(int(clock.now * S)) == (2, 0)
        assert [r.lo for r in spool.audit.rows(0, 2**62)] == [2.0, 3.0]
    finally:
        spool.close()


def test_pick_finds_a_row_of_a_random_minute_within_the_window(spool: Spool) -> None:
    spool.commit([rec(60 * m, temp=float(m), hum=1.0) for m in (0, 1, 5)], [])
    deliver_all(spool)
    end = T0 + 6 * MINUTE_US
    first = spool.audit.pick(T0, end, 0.0)
    last = spool.audit.pick(T0, end, 0.999)
    middle = spool.audit.pick(T0, end, 0.3)  # minute 1.5 of 0..5: the next audited is 5
    picked = [r.minute_us if r is not None else None for r in (first, last, middle)]
    assert picked == [T0, T0 + 5 * MINUTE_US, T0 + 5 * MINUTE_US]
    assert spool.audit.pick(T0 + 2 * MINUTE_US, T0 + 5 * MINUTE_US, 0.5) is None
    one = spool.audit.pick(T0 + MINUTE_US, T0 + 2 * MINUTE_US, 0.9)
    assert one in spool.audit.rows(T0 + MINUTE_US, T0 + 2 * MINUTE_US)


def test_settled_records_are_audited_alike_before_and_after_their_sweep(
    tmp_path: Path, clock: Clock
) -> None:
    """The audit of delivered records is written at their sweep, from the file; until then
    the readers take the settled records in from the file: the same rows and devices either
    way, and a record delivered twice (a late answer) is audited once."""
    records = [rec(t, f"d{t % 3}", temp=float(t), hum=100.0 - t) for t in range(0, 150, 7)]
    spool = open_spool(tmp_path / "s.db", clock)
    try:
        spool.commit(records, [])
        batches = spool.outbox.take_batches(10, 100, single_object=False, newest_first=False)
        seqs = [r.seq for b in batches for r in b.records]
        spool.outbox.delivered(seqs)
        spool.outbox.delivered(seqs)
        assert spool.file.unswept.seqs == set(seqs)
        before = (spool.audit.rows(0, 2**62), spool.audit.devices())
        spool.outbox.sweep()
        assert spool.file.conn.execute("SELECT COUNT(*) FROM settled").fetchone()[0] == 0
        after = (spool.audit.rows(0, 2**62), spool.audit.devices())
    finally:
        spool.close()
    assert before == after
    assert sum(row.n for row in after[0]) == spool.file.delivered_points_total == 2 * len(records)
    per_device = Counter(r.device_id for r in records)
    assert {d.device_id: d.points for d in after[1]} == {d: 2 * n for d, n in per_device.items()}


def test_the_prune_is_due_once_a_minute_and_at_once_after_the_clock_was_set_back(
    spool: Spool,
) -> None:
    """A prune plans the next a minute on. A clock set back by a day does not put the prunes
    off for a day: the next one is due at once."""
    audit = spool.audit
    now = T0 / S
    assert audit.prune_due(now)
    audit.prune(T0)
    assert not audit.prune_due(now + 59)
    assert audit.prune_due(now + 60)
    assert audit.prune_due(now - 86400)


def test_a_sweep_logs_the_same_audit_with_or_without_sqlites_json_functions(
    tmp_path: Path, clock: Clock
) -> None:
    """The sweep has SQLite build the log's JSON from the stored records where it can; a
    SQLite without the JSON functions decodes them in Python. The same rows, devices and
    values either way, down to the last bit of each float."""
    values = [0.1, -0.0, 1e-300, 5e307, 123456789.12345679, -2.5, 3.0]
    records = [rec(7 * k, f"d{k % 3}", a=v, b=v * 3, c=float(k)) for k, v in enumerate(values * 5)]
    audits = []
    for json in (True, False):
        spool = open_spool(tmp_path / f"{json}.db", clock)
        try:
            spool.audit._json = json  # the path taken, not the result
            spool.commit(records, [])
            while spool.file.depth_records:
                deliver_all(spool)
            spool.audit.fold_now()
            audits.append((spool.audit.rows(0, 2**62), spool.audit.devices()))
        finally:
            spool.close()
    assert audits[0] == audits[1]
    want: dict[tuple[str, str, int], list[float]] = {}
    for r in records:
        for metric, v in r.metrics.items():
            want.setdefault((r.device_id, metric, minute_of(r.ts_us)), []).append(v)
    assert {
        (r.device_id, r.metric, r.minute_us): (r.n, r.total, r.lo, r.hi) for r in audits[0][0]
    } == {key: (len(v), sum(v), min(v), max(v)) for key, v in want.items()}
