"""The two phases of a backlog drain, told apart from samples and the API's record."""

from __future__ import annotations

import math

import pytest

from bridge.lab.bench.phases import DrainPhases, add_phases, drain_phases
from bridge.lab.bench.report import Sample, render, summarize

# A drain of 100 messages of 4 points, connected at 0.5 s: the intake takes in 40 msg/s
# (160 points/s) while delivering 40 points/s until 3.0 s, then delivery alone 200 points/s.
# The bridge spends 10 ms per message taken in and 1 ms per point delivered, on top of 0.3 s
# of start-up.
DURING = [(1.0 + 0.5 * k, 20) for k in range(5)]  # 20 points at 1.0 .. 3.0: 100 points
AFTER = [(3.0 + 0.1 * k, 20) for k in range(1, 16)]  # 3.1 .. 4.5: 300 points
SAMPLES = [
    Sample(0.0, 0.0, 0.30, 1),
    Sample(1.0, 60.0, 0.52, 1),  # taken in 80 points (20 messages), delivered 20
    Sample(2.0, 180.0, 0.96, 1),  # 240 and 60
    Sample(3.0, 300.0, 1.40, 1),  # 400 (all) and 100
    Sample(4.0, 100.0, 1.60, 1),  # delivered 300
    Sample(5.0, 0.0, 1.70, 1),  # delivered 400
]


def _phases(
    samples: list[Sample] = SAMPLES, deliveries: list[tuple[float, int]] | None = None
) -> DrainPhases | None:
    return drain_phases(
        samples,
        DURING + AFTER if deliveries is None else deliveries,
        messages=100,
        points=400,
        connected=0.5,
    )


def test_a_drain_splits_into_the_intake_and_delivery_after_it() -> None:
    phases = _phases()
    assert phases is not None
    assert phases.intake_s == pytest.approx(2.5)
    assert phases.intake_messages_per_s == pytest.approx(40.0)
    assert phases.delivery_points_per_s == pytest.approx(200.0)
    assert phases.delivery_cpu_us_per_point == pytest.approx(1000.0)
    # The first phase's CPU less its 80 points delivered at 1 ms, over its 80 messages:
    # the start-up before the first look at or after the connect is not counted.
    assert phases.intake_cpu_us_per_message == pytest.approx(10_000.0)
    assert phases.delivery_share_of_cpu == pytest.approx(0.4 / 1.4, abs=1e-3)


def test_the_end_of_the_intake_is_interpolated_between_looks() -> None:
    # Half of the points still to take in at the look before were taken in by the look after
    # it reaches them all: linear between the two.
    samples = [*SAMPLES[:3], Sample(3.0, 380.0, 1.40, 1), *SAMPLES[4:]]
    # The look at 3.0 s sees 380 waiting + 100 delivered: the intake was done before it.
    phases = _phases(samples)
    assert phases is not None
    assert phases.intake_s == pytest.approx(2.0 + 160 / 240 - 0.5, abs=1e-3)


def test_no_phases_when_the_intake_was_not_seen_to_finish() -> None:
    assert _phases([s for s in SAMPLES if s.t < 3.0]) is None  # never all taken in
    assert _phases(SAMPLES[:4]) is None  # taken in at the last look: nothing after it


def test_no_phases_when_everything_was_taken_in_before_the_first_look() -> None:
    samples = [Sample(1.0, 380.0, 0.5, 1), Sample(2.0, 200.0, 0.7, 1), Sample(3.0, 0.0, 0.9, 1)]
    assert _phases(samples, [(1.0, 20), (2.0, 180), (3.0, 200)]) is None


def test_no_phases_when_nothing_was_delivered_after_the_intake() -> None:
    assert _phases(deliveries=DURING) is None


def test_phases_go_into_the_report_and_stay_unmeasured_without_them() -> None:
    report = summarize(
        "backlog",
        100,
        0,
        published_at=[],
        requests=[],
        samples=SAMPLES,
        publish_window=(0.0, 0.0),
        t0_wall=0.0,
    )
    add_phases(report, None)
    assert math.isnan(report.intake_messages_per_s)
    add_phases(report, _phases())
    assert report.intake_messages_per_s == pytest.approx(40.0)
    assert report.delivery_after_intake_cpu_us_per_point == pytest.approx(1000.0)
    assert report.delivery_share_of_cpu_estimated == pytest.approx(0.286, abs=1e-3)
    lines = [" ".join(line.split()) for line in render(report).splitlines()]
    assert "intake messages per s 40.0" in lines
    assert "delivery share of cpu estimated 0.286" in lines
