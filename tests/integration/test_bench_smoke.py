"""Smoke runs of ``metriqo-bridge bench``: correctness only (every point arrives, the report is
complete); the numbers themselves are for people, not assertions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.cli import main


def test_rate_mode_delivers_every_point_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    code = main(["bench", "rate", "--rate", "300", "--seconds", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out.read_text())
    assert report["messages"] == 600
    assert (report["points_published"], report["points_delivered"]) == (2400, 2400)
    assert (report["points_lost"], report["points_duplicated"]) == (0, 0)
    assert report["requests_accepted"] >= 24  # at most 100 points each
    assert report["peak_rss_mb"] > 0
    assert report["backlog_drained"] is True
    assert "OK: nothing lost" in printed
    assert "mqk_bench_" not in printed + out.read_text()  # the run's token is never shown


def test_backlog_mode_drains_a_queued_backlog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    code = main(["bench", "backlog", "--messages", "2000", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out.read_text())
    assert (report["points_delivered"], report["points_lost"]) == (8000, 0)
    assert report["points_per_request"] >= 99
