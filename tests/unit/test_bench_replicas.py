"""The exactly-once accounting of ``bench replicas``."""

from __future__ import annotations

from bridge.lab.bench.replicas import GroupRun, check_points, render


def test_check_points_counts_lost_and_duplicated_points() -> None:
    expected = {1000, 1001, 1002}
    arrived = [("d", m, ts) for ts in (1000, 1001) for m in ("a", "b")]
    arrived.append(("d", "a", 1000))  # one duplicate
    arrived.append(("d", "a", 1002))  # half of the third message
    assert check_points(expected, arrived, 2) == (5, 1, 1)
    assert check_points(expected, [], 2) == (0, 6, 0)


def test_render_lists_every_group_and_its_problems() -> None:
    runs = [GroupRun(1, 10, messages_per_s=5.0), GroupRun(2, 10, problems=["3 point(s) lost"])]
    text = render(runs)
    assert "messages/s" in text
    assert "PROBLEM (2 replicas): 3 point(s) lost" in text
