"""The bench's pure summary: percentiles, the sliding-window count, the backlog fit, and the
loss/duplicate accounting from what the API recorded."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import orjson
import pytest

from bridge.apiserver import RequestRecord
from bridge.bench import (
    Sample,
    linear_fit,
    max_in_window,
    percentile,
    render,
    summarize,
)
from bridge.localrun import message_payload
from bridge.timestamps import format_timestamp

BASE_MS = 1_700_000_000_000
T0 = 1_800_000_000.0


def test_percentile_uses_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_max_in_window_counts_a_half_open_sliding_window() -> None:
    """Like the API's limiter: an event exactly one window earlier no longer counts."""
    assert max_in_window([], 60) == 0
    assert max_in_window([0.0, 60.0], 60) == 1
    assert max_in_window([0.0, 59.9], 60) == 2
    assert max_in_window([5.0, 0.0, 30.0, 61.0, 62.0], 60) == 4  # (2, 62]: 5, 30, 61, 62
    assert max_in_window([0.0, 5.0, 30.0, 65.0, 66.0], 60) == 3


def test_linear_fit_finds_slope_and_fit_quality() -> None:
    xs = [float(x) for x in range(10)]
    slope, r2 = linear_fit(xs, [3 * x + 1 for x in xs])
    assert slope == pytest.approx(3.0)
    assert r2 == pytest.approx(1.0)
    assert all(math.isnan(v) for v in linear_fit([1.0, 2.0], [1.0, 2.0]))
    assert all(math.isnan(v) for v in linear_fit(xs, [5.0] * 10))


def test_message_payload_carries_its_index_in_the_timestamp() -> None:
    doc = orjson.loads(message_payload(42, BASE_MS))
    assert doc["ts"] == BASE_MS + 42
    assert set(doc) == {"temp", "rh", "power", "ts"}


def _request(indexes: list[int], at: float, status: int = 201) -> RequestRecord:
    body = [
        {
            "device_id": "d",
            "timestamp": format_timestamp((BASE_MS + i) * 1000),
            "metrics": {"temp": 1.0, "rh": 2.0, "kw": 3.0, "hz": 50.0},
        }
        for i in indexes
    ]
    return RequestRecord(
        received_at=at,
        received_wall=datetime.fromtimestamp(T0 + at, UTC),
        status=status,
        authorization=None,
        idempotency_key=None,
        content_type="application/json",
        body=orjson.loads(orjson.dumps(body)),
        points_written=4 * len(indexes) if status == 201 else 0,
    )


def test_summarize_counts_loss_duplicates_latency_and_rate() -> None:
    published_at = [T0 + 0.1 * i for i in range(6)]
    requests = [
        _request([0, 1], 1.0),
        _request([2, 3], 2.0, status=429),
        _request([2, 3], 3.0),
        _request([3], 4.0),  # a duplicate of message 3; message 4 and 5 never arrive
    ]
    samples = [Sample(0.0, 0.0, 1.0, 10 << 20), Sample(5.0, 0.0, 2.0, 12 << 20)]
    report = summarize(
        "rate",
        6,
        BASE_MS,
        published_at=published_at,
        requests=requests,
        samples=samples,
        publish_window=(0.0, 0.6),
        t0_wall=T0,
    )
    assert (report.points_published, report.points_delivered) == (24, 16)
    assert (report.points_lost, report.points_duplicated) == (8, 4)
    assert (report.requests_accepted, report.requests_429) == (3, 1)
    assert report.points_per_request == pytest.approx(20 / 3, abs=0.01)
    assert report.requests_max_in_any_60s == 3
    # First arrivals only: 1.0, 0.9, 2.8 and 2.7 s (message 3's duplicate is not a delay).
    assert (report.latency_p50_s, report.latency_p99_s) == (1.0, 2.8)
    assert report.cpu_s_per_1000_messages == pytest.approx(1000 / 6, rel=1e-3)
    assert report.peak_rss_mb == 12.0
    assert report.backlog_drained
    assert report.problems == ["8 point(s) never arrived"]
    assert "PROBLEMS: 8 point(s) never arrived" in render(report)


def test_summarize_of_a_complete_run_has_no_problems() -> None:
    requests = [_request([0, 1, 2], 1.0)]
    samples = [Sample(t, 10.0 * t, t, 1 << 20) for t in range(5)] + [Sample(6.0, 0.0, 6, 1)]
    report = summarize(
        "rate",
        3,
        BASE_MS,
        published_at=[T0] * 3,
        requests=requests,
        samples=samples,
        publish_window=(0.0, 4.0),
        t0_wall=T0,
    )
    assert report.problems == []
    assert report.points_lost == 0
    assert render(report).endswith("OK: nothing lost")
