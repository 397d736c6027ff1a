"""When the next group commit begins (:mod:`bridge.commit_pacing`): pure, times are numbers."""

from __future__ import annotations

import pytest

from bridge.commit_pacing import CommitPacing


def test_a_quiet_flow_is_committed_at_once() -> None:
    """The first commit, and one long after the previous began, wait for nothing."""
    p = CommitPacing(spacing=3.0, ceiling_s=0.05, backlog=500)
    assert p.delay(100.0, 1) == 0.0
    p.began(100.0)
    p.ended(100.004)
    assert p.delay(100.2, 1) == 0.0


def test_the_gap_is_spacing_times_the_commits_duration_up_to_the_ceiling() -> None:
    p = CommitPacing(spacing=3.0, ceiling_s=0.05, backlog=500)
    p.began(10.0)
    p.ended(10.004)  # a 4 ms commit: the next may begin 12 ms after this one began
    assert p.delay(10.004, 1) == pytest.approx(0.008)
    assert p.delay(10.013, 1) == 0.0
    p.began(20.0)
    p.ended(20.104)  # slow commits (a busy disk) group more, but never past the ceiling
    assert p.duration_s == pytest.approx(0.004 + 0.25 * 0.1)
    assert p.delay(20.104, 1) == 0.0  # already past began + ceiling
    assert p.delay(20.01, 1) == pytest.approx(0.04)


def test_spacing_one_is_classic_group_commit() -> None:
    """With spacing 1 the next commit may begin as soon as the previous one has ended."""
    p = CommitPacing(spacing=1.0, ceiling_s=0.05, backlog=500)
    p.began(5.0)
    p.ended(5.01)
    assert p.delay(5.01, 3) == pytest.approx(0.0)


def test_a_backlog_and_a_zero_ceiling_commit_at_once() -> None:
    p = CommitPacing(spacing=3.0, ceiling_s=0.05, backlog=500)
    p.began(1.0)
    p.ended(1.01)
    assert p.delay(1.011, 499) > 0
    assert p.delay(1.011, 500) == 0.0
    zero = CommitPacing(spacing=3.0, ceiling_s=0.0, backlog=500)
    zero.began(1.0)
    zero.ended(1.01)
    assert zero.delay(1.011, 1) == 0.0
