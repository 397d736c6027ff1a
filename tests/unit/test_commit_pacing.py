"""When the next group commit begins (:mod:`bridge.commit_pacing`): pure, times are numbers."""

from __future__ import annotations

import pytest

from bridge.commit_pacing import GROUP, CommitPacing


def test_a_quiet_flow_is_committed_at_once() -> None:
    """The first commit, and one long after the previous began, wait for nothing."""
    p = CommitPacing(spacing=3.0, ceiling_s=0.05, backlog=500)
    assert p.delay(100.0, 1) == 0.0
    p.began(100.0, 1)
    p.ended(100.004)
    assert p.delay(100.2, 1) == 0.0
    p.began(100.2, 1)  # one message in 0.2 s: 5 msg/s would take 12.8 s to fill a group
    p.ended(100.204)
    assert p.delay(100.3, 1) == 0.0  # but the ceiling has passed


def test_a_slow_disk_spaces_commits_by_their_duration_up_to_the_ceiling() -> None:
    """With the rate unknown (after a pause) the gap is spacing x the commits' duration."""
    p = CommitPacing(spacing=3.0, ceiling_s=0.05, backlog=500)
    p.began(10.0, 1)
    p.ended(10.004)  # a 4 ms commit: the next may begin 12 ms after this one began
    assert p.delay(10.004, 1) == pytest.approx(0.008)
    assert p.delay(10.013, 1) == 0.0
    p.began(20.0, 1)
    p.ended(20.104)  # slow commits (a busy disk) group more, but never past the ceiling
    assert p.duration_s == pytest.approx(0.004 + 0.25 * 0.1)
    assert p.delay(20.104, 1) == 0.0  # already past began + ceiling
    assert p.delay(20.01, 1) == pytest.approx(0.04)


def test_a_live_flow_waits_for_a_group_at_its_rate_and_a_busier_one_less() -> None:
    """Commits carry about GROUP messages at the flow's rate: at 2,000 msg/s a commit waits
    GROUP / 2000 s; at 8,000 msg/s a quarter of that; at 500 msg/s the ceiling caps it."""
    waits = {}
    for rate in (500.0, 2000.0, 8000.0):
        p = CommitPacing(spacing=1.0, ceiling_s=0.05, backlog=10_000)
        t = 0.0
        for _ in range(40):  # the smoothed rate settles on the flow's
            t += 0.01
            p.began(t, int(rate * 0.01))
            p.ended(t + 0.001)
        waits[rate] = p.delay(t, 1)
    assert waits[2000.0] == pytest.approx(GROUP / 2000, rel=0.01)
    assert waits[8000.0] == pytest.approx(GROUP / 8000, rel=0.01)
    assert waits[500.0] == pytest.approx(0.05)


def test_spacing_one_is_classic_group_commit() -> None:
    """With spacing 1 and no rate yet the next commit may begin once the previous ended."""
    p = CommitPacing(spacing=1.0, ceiling_s=0.05, backlog=500)
    p.began(5.0, 3)
    p.ended(5.01)
    assert p.delay(5.01, 3) == pytest.approx(0.0)


def test_a_backlog_and_a_zero_ceiling_commit_at_once() -> None:
    p = CommitPacing(spacing=3.0, ceiling_s=0.05, backlog=500)
    p.began(1.0, 1)
    p.ended(1.01)
    assert p.delay(1.011, 499) > 0
    assert p.delay(1.011, 500) == 0.0
    zero = CommitPacing(spacing=3.0, ceiling_s=0.0, backlog=500)
    zero.began(1.0, 1)
    zero.ended(1.01)
    assert zero.delay(1.011, 1) == 0.0
