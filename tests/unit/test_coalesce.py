"""Coalescing: a rule's points folded per metric and window in the spool, then flushed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.models import Coalesce, Record
from bridge.settings import SpoolSettings
from bridge.spool.store import Spool

W = 10_000_000  # a 10 s window, in µs
T0 = 1_795_680_000_000_000  # a window boundary (divisible by W)


def rec(ts: int, value: float, fn: str, metric: str = "v", device: str = "d") -> Record:
    return Record(device, ts, {metric: value}, ts, Coalesce(W, fn))


@pytest.mark.parametrize(
    ("fn", "want"),
    [("avg", 2.0), ("min", 1.0), ("max", 3.0), ("sum", 6.0), ("count", 3.0), ("last", 2.0)],
)
def test_window_functions(tmp_path: Path, fn: str, want: float) -> None:
    """Each function folds the window's values; the point is stamped with the window start."""
    spool = Spool(SpoolSettings(tmp_path / "s.db", reserve_bytes=0))
    spool.open()
    try:
        # 'last' is by measurement time, not arrival: the 2.0 reading is the latest.
        spool.writer.commit([rec(T0 + 1, 1.0, fn), rec(T0 + 9_000_000, 2.0, fn)], [])
        spool.writer.commit([rec(T0 + 5, 3.0, fn)], [])
        assert spool.file.depth_points == 0  # nothing to send while the window is open
        assert spool.coalescer.flush(T0 + W + 1_000_000, 2_000_000) == 0  # within the grace
        assert spool.coalescer.flush(T0 + W + 2_000_000, 2_000_000) == 1
        (row,) = spool.outbox.fetch(0, 10)
        assert (row.device_id, row.ts_us, row.metrics) == ("d", T0, {"v": want})
        assert spool.coalescer.flush(T0 + 10 * W, 0) == 0  # flushed once
    finally:
        spool.close()


def test_windows_metrics_and_devices_are_kept_apart(tmp_path: Path) -> None:
    """Different windows and devices give different points; metrics of one device and window
    share one record."""
    spool = Spool(SpoolSettings(tmp_path / "s.db", reserve_bytes=0))
    spool.open()
    try:
        spool.writer.commit(
            [
                rec(T0 + 1, 1.0, "max", "a"),
                rec(T0 + 2, 5.0, "max", "b"),
                rec(T0 + W + 1, 7.0, "max", "a"),
                rec(T0 + 3, 9.0, "max", "a", device="e"),
            ],
            [],
        )
        assert spool.coalescer.flush(T0 + 3 * W, 0) == 4
        got = sorted((r.device_id, r.ts_us - T0, r.metrics) for r in spool.outbox.fetch(0, 10))
        assert got == [("d", 0, {"a": 1.0, "b": 5.0}), ("d", W, {"a": 7.0}), ("e", 0, {"a": 9.0})]
    finally:
        spool.close()


def test_open_windows_survive_a_restart(tmp_path: Path) -> None:
    """The running aggregate is committed with the message: a restart continues it."""
    spool = Spool(SpoolSettings(tmp_path / "s.db", reserve_bytes=0))
    spool.open()
    spool.writer.commit([rec(T0 + 1, 4.0, "sum")], [])
    spool.close()
    spool = Spool(SpoolSettings(tmp_path / "s.db", reserve_bytes=0))
    spool.open()
    try:
        spool.writer.commit([rec(T0 + 2, 6.0, "sum")], [])
        assert spool.coalescer.flush(T0 + 2 * W, 0) == 1
        assert spool.outbox.fetch(0, 10)[0].metrics == {"v": 10.0}
    finally:
        spool.close()


def test_rule_marks_its_records_for_coalescing() -> None:
    """A rule with coalesce hands its records to the spool marked with window and function."""
    rules = load_mappings_text(
        "version: 1\nrules:\n  - {name: r, topic: 'p/{d}', device_id: '{d}', payload: number,"
        " metric: v, coalesce: {window_s: 60, function: avg}}\n"
    )
    out = Mapper(rules).map("p/d1", b"3", T0)
    assert out.records[0].coalesce == Coalesce(60_000_000, "avg")
