"""Batches are read from the real SQLite spool in one statement step (the records as one JSON
array) where SQLite has the JSON functions: the same batches, the same values, to the last bit,
as reading them row by row; and records are inserted many to a statement."""

from __future__ import annotations

import math
from pathlib import Path

from bridge.batcher import Batch
from bridge.models import Record
from bridge.settings import SpoolSettings
from bridge.spool.store import Spool

T0 = 1_795_680_000_000_000
AWKWARD = [0.30000000000000004, 1e300, -0.0, 5e-324, 1.7976931348623157e308, -2.5, 7.0]
DEVICES = ["plain", 'quote"d', "back\\slash", "ünïcødé-温度", "tab\tand\nnewline"]


def records(n: int) -> list[Record]:
    """Records of 1 to 7 metrics, over awkward device ids and values."""
    out = []
    for k in range(n):
        width = 1 + k % 7
        metrics = {f"m{j}": AWKWARD[(k + j) % len(AWKWARD)] for j in range(width)}
        out.append(Record(DEVICES[k % len(DEVICES)], T0 + k, metrics, T0 + k))
    return out


def drain(spool: Spool, count: int) -> list[Batch]:
    """Take batches of up to ``count`` requests, settling each round, until none is left."""
    taken: list[Batch] = []
    while batches := spool.outbox.take_batches(count, 100, single_object=False, newest_first=False):
        taken += batches
        spool.outbox.delivered([seq for b in batches for seq in b.seqs])
    return taken


def test_one_step_batches_are_the_row_by_row_batches(tmp_path: Path) -> None:
    for count in (1, 3, 4):
        drained = []
        for one_step in (True, False):
            spool = Spool(SpoolSettings(tmp_path / f"{count}-{one_step}.db", reserve_bytes=0))
            spool.open()
            try:
                if not one_step:
                    spool.outbox._json = False  # as on an SQLite without the JSON functions
                assert spool.commit(records(700), []).records_inserted == 700
                drained.append(drain(spool, count))
                assert spool.outbox._json is one_step  # this SQLite has them: both paths ran
                assert spool.file.depth_points == 0
            finally:
                spool.close()
        one, rows = drained
        assert [b.seqs for b in one] == [b.seqs for b in rows]
        assert [b.points for b in one] == [b.points for b in rows]
        assert sum(b.points for b in one) == sum(len(r.metrics) for r in records(700))
        for a, b in zip(one, rows, strict=True):
            for x, y in zip(a.records, b.records, strict=True):
                assert (x.seq, x.device_id, x.ts_us, x.received_us) == (
                    y.seq,
                    y.device_id,
                    y.ts_us,
                    y.received_us,
                )
                assert list(x.metrics) == list(y.metrics)
                for v, w in zip(x.metrics.values(), y.metrics.values(), strict=True):
                    assert v == w
                    assert math.copysign(1, v) == math.copysign(1, w)


def test_a_group_of_many_statements_inserts_each_record_once(tmp_path: Path) -> None:
    """300 records (three multi-row statements), then the same 300 with 200 new ones mixed
    in: the duplicates are counted, not stored twice."""
    spool = Spool(SpoolSettings(tmp_path / "s.db", reserve_bytes=0))
    spool.open()
    try:
        first = records(300)
        result = spool.commit(first, [])
        assert (result.records_inserted, result.records_duplicate) == (300, 0)
        more = [Record(r.device_id, r.ts_us + 10_000, r.metrics, r.received_us) for r in first]
        mixed = [r for pair in zip(first, more[:200], strict=False) for r in pair] + first[200:]
        result = spool.commit(mixed, [])
        assert (result.records_inserted, result.records_duplicate) == (200, 300)
        assert spool.file.depth_records == 500
        points = sum(len(r.metrics) for r in first) + sum(len(r.metrics) for r in more[:200])
        assert (
            spool.file.depth_points
            == points
            == result.points_inserted + sum(len(r.metrics) for r in first)
        )
    finally:
        spool.close()
