"""Unit tests of the demo's API tour (bridge.lab.demo_api_tools): which alerts must fire, and
that a registry finding or a verify mismatch fails the demo."""

from __future__ import annotations

from datetime import UTC, datetime

from bridge.api.models import Aggregate, AlertRule, Condition
from bridge.lab.demo_api_tools import ApiChecks, _registry_lines, _verify_lines, must_fire
from bridge.lab.fleet_devices import ExpectedPoint
from bridge.models import Coalesce, Deadband
from bridge.reconcile.landed import Report, judge
from bridge.reconcile.registry import RegistryReport
from bridge.spool.audit import AuditRow


def _alert(
    name: str, device: str, metric: str, condition: Condition, threshold: float
) -> AlertRule:
    return AlertRule(name, device, metric, condition, threshold, "http://127.0.0.1:9/hook")


def test_an_alert_must_fire_when_a_sent_point_meets_it_on_its_device() -> None:
    points = [
        ExpectedPoint("v-1", "position_pct", 1, 40.0),
        ExpectedPoint("v-1", "position_pct", 2, 50.25),
        ExpectedPoint("v-2", "temperature_c", 1, 25.0),
    ]
    alerts = [
        _alert("open", "*", "position_pct", "gt", 50),
        _alert("open v-2", "v-2", "position_pct", "gt", 50),  # v-2 has no position
        _alert("warm", "*", "temperature_c", "gte", 26),  # never reached
        _alert("cool", "v-2", "temperature_c", "lte", 25),  # met exactly
    ]
    assert must_fire(alerts, points) == {"open", "cool"}


def test_points_held_back_or_folded_are_not_counted_on() -> None:
    """A deadband keeps 50.5 from the API (it moved by less than 1 from 50); a coalesced
    series reaches the API as folded values, so it predicts nothing."""
    band = Deadband("absolute", 1.0, 3_600_000_000)
    held = [ExpectedPoint("d", "m", i, v, None, band) for i, v in enumerate((50.0, 50.5))]
    folded = [ExpectedPoint("c", "m", 1, 99.0, Coalesce(1_000_000, "avg"))]
    assert must_fire([_alert("high", "*", "m", "gt", 50.25)], held + folded) == set()
    assert must_fire([_alert("high", "*", "m", "gt", 49.75)], held + folded) == {"high"}


def test_a_registry_finding_fails_the_demo() -> None:
    clean, found = ApiChecks(), ApiChecks()
    _registry_lines(RegistryReport(2, 2, 0, {}), clean)
    _registry_lines(RegistryReport(2, 3, 0, {"unknown": ["x"]}), found)
    assert clean.problems == []
    assert "0 unknown, 0 silent" in clean.lines[0]
    assert found.problems == ["registry view: 1 unknown"]


def test_a_gap_or_a_mismatch_fails_the_demo_and_so_does_nothing_to_check() -> None:
    row = AuditRow("d", "m", 0, 2, 3.0, 1.0, 2.0)
    t = datetime.fromtimestamp(0, UTC)
    agree = Report((judge(row, Aggregate(t, 1.5, 1.0, 2.0)),), 1, 1)
    gap = Report((judge(row, None), judge(row, Aggregate(t, 1.5, 1.0, 3.0))), 1, 1)
    outs = [ApiChecks(), ApiChecks(), ApiChecks()]
    for report, out in zip((agree, gap, Report((), 0, 0)), outs, strict=True):
        _verify_lines(report, out)
    assert outs[0].problems == []
    assert outs[0].lines[0].endswith("1 agree, 0 gaps, 0 mismatches")
    assert outs[1].problems == ["verify: 1 gap(s), 1 mismatch(es)"]
    assert outs[2].problems == ["verify found no accepted minute in the spool's audit"]
