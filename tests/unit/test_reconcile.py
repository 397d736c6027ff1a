"""The pure cores of ``verify`` (verdicts of an audit row against an API bucket, the sample)
and ``devices`` (the registry's four findings)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.api.models import Aggregate, Device
from bridge.reconcile.landed import judge, sample, series_windows
from bridge.reconcile.registry import reconcile
from bridge.spool.audit import MINUTE_US, AuditRow, DeliveredDevice

T = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
M = int(T.timestamp()) * 1_000_000


def row(*values: float, device: str = "d", metric: str = "m", minute: int = M) -> AuditRow:
    return AuditRow(device, metric, minute, len(values), sum(values), min(values), max(values))


def bucket(*values: float) -> Aggregate:
    return Aggregate(T, math.fsum(values) / len(values), min(values), max(values))


def test_the_verdicts() -> None:
    accepted = row(1.0, 1.5, 3.0)
    assert judge(accepted, bucket(1.0, 1.5, 3.0)).verdict == "agree"
    assert judge(accepted, None).verdict == "gap"
    assert judge(accepted, bucket(1.5, 3.0)).verdict == "missing"  # the min is gone
    assert judge(accepted, bucket(1.0, 1.5)).verdict == "missing"  # the max is gone
    assert judge(accepted, bucket(1.0, 3.0)).verdict == "avg"  # the middle one is gone
    assert judge(accepted, bucket(0.5, 1.0, 1.5, 3.0)).verdict == "extra"
    assert judge(accepted, bucket(1.0, 1.5, 1.5, 3.0)).verdict == "avg"  # one stored twice
    # The blind spot: a point equal to its minute's average leaves every aggregate as it was.
    assert judge(row(1.0, 2.0, 3.0), bucket(1.0, 3.0)).verdict == "agree"


values = st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=200)


@settings(max_examples=200, deadline=None)
@given(values)
def test_rounding_alone_never_makes_a_disagreement(xs: list[float]) -> None:
    """The audit sums in arrival order, the API averages its own way: still "agree"."""
    total = 0.0
    for x in xs:
        total += x
    accepted = AuditRow("d", "m", M, len(xs), total, min(xs), max(xs))
    assert judge(accepted, bucket(*reversed(xs))).verdict == "agree"


def test_the_sample_keeps_the_audit_order_and_one_window_per_series() -> None:
    rows = [row(1.0, device=d, minute=M + i * MINUTE_US) for d in "ab" for i in range(10)]
    picked = sample(rows, 5, seed=1)
    assert len(picked) == 5
    assert picked == sorted(picked, key=lambda r: (r.device_id, r.metric, r.minute_us))
    assert sample(rows, 50) == rows
    windows = series_windows(rows)
    assert windows == {("a", "m"): (M, M + 10 * MINUTE_US), ("b", "m"): (M, M + 10 * MINUTE_US)}


def dev(device_id: str, status: str, seen_ago: timedelta | None) -> Device:
    seen = None if seen_ago is None else T - seen_ago
    return Device(device_id, device_id.upper(), status, seen, T - timedelta(days=9))


def ours(device_id: str, ago: timedelta) -> DeliveredDevice:
    at = int((T - ago).timestamp()) * 1_000_000
    return DeliveredDevice(device_id, 10, at, at, at)


def test_the_registry_findings() -> None:
    minute, day = timedelta(minutes=1), timedelta(days=1)
    registry = [
        dev("fine", "online", minute),
        dev("silent", "inactive", None),
        dev("stale", "offline", 2 * day),
        dev("offline-but-ours", "offline", day),
        dev("elsewhere", "online", minute),
    ]
    delivered = [
        ours("fine", minute),
        ours("offline-but-ours", minute),
        ours("unknown", minute),
        ours("stale", 3 * day),  # long ago: neither delivering lately nor a finding of ours
    ]
    report = reconcile(registry, delivered, T, 3600.0, evicted=2)
    assert report.findings == {
        "unknown": ["unknown"],
        "silent": ["offline-but-ours", "silent", "stale"],
        "offline_delivering": ["offline-but-ours"],
        "online_not_delivered": ["elsewhere"],
    }
    assert report.as_json()["counts"] == {
        "unknown": 1,
        "silent": 3,
        "offline_delivering": 1,
        "online_not_delivered": 1,
    }
    assert report.as_json()["evicted_from_table"] == 2
    assert report.labels["fine"] == "FINE"
