"""``bench deadband``: the simulated fleet's points/s without and with deadbands."""

from __future__ import annotations

from pathlib import Path

import orjson

from bridge.cli.main import main
from bridge.lab.bench.deadband_mode import BUDGET_POINTS_PER_S, render, simulate


def test_the_fleet_sends_its_publish_rate_without_and_less_with_deadbands() -> None:
    """Without deadbands every publish is a point; with them each class sends less, states
    least of all, and the same seed gives the same numbers."""
    report = simulate(sensors=20, seconds=1200, seed=3)
    by_name = {c.name: c for c in report.classes}
    assert [(c.name, c.sensors) for c in report.classes] == [
        ("temperature", 12),
        ("state", 4),
        ("fast", 4),
    ]
    assert by_name["temperature"].without == 12 / 2  # every 2 s
    assert by_name["state"].without == by_name["fast"].without == 4.0
    assert all(0 < c.with_band < c.without for c in report.classes)
    assert by_name["state"].with_band < by_name["temperature"].with_band < by_name["fast"].with_band
    assert simulate(sensors=20, seconds=1200, seed=3) == report
    assert round(BUDGET_POINTS_PER_S) == 1667
    assert "budget 1,667 points/s for the organisation" in render(report)


def test_the_command_prints_the_table_and_writes_json(tmp_path: Path, capsys: object) -> None:
    """`metriqo-bridge bench deadband` runs without broker or API and exits 0."""
    out = tmp_path / "r.json"
    code = main(
        ["bench", "deadband", "--sensors", "10", "--fleet-seconds", "600", "--json", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "10 sensors, 600 s of measurement time" in printed
    data = orjson.loads(out.read_bytes())
    assert data["without"] > data["with_bands"] > 0
