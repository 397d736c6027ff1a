"""A short ``metriqo-bridge soak`` in CI: the fault schedule, the shell and the oracle work end to
end. The real soak runs for 30 minutes or more outside CI (see docs/design/fault-injection.md)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from bridge.cli.main import main
from bridge.lab.soak_schedule import FAULTS, schedule


def test_schedule_is_replayable_one_fault_at_a_time_and_quiet_at_the_end() -> None:
    a = schedule(42, 600)
    assert a == schedule(42, 600)
    assert a != schedule(43, 600)
    assert {e.kind for e in a} <= set(FAULTS)
    for earlier, later in itertools.pairwise(a):
        assert earlier.at + earlier.seconds < later.at
    assert all(e.at + e.seconds <= 0.8 * 600 for e in a)
    assert len({e.kind for e in schedule(1, 3600)}) == len(FAULTS)  # an hour meets every fault


def test_short_soak_with_bridge_broker_and_api_faults_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "soak.json"
    faults = "bridge_kill,bridge_failpoint,broker_restart,mqtt_blackhole,api_5xx"
    argv = ["soak", "--minutes", "0.75", "--seed", "5", "--rate", "80", "--faults", faults]
    code = main([*argv, "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out.read_text())
    assert report["points_lost"] == 0
    assert report["duplicates_differing"] == 0
    assert report["points_delivered"] == report["points_published"] == 3600 * 4
    assert sum(report["faults"].values()) >= 2, printed
    assert "RESULT: OK" in printed
    assert "replay: metriqo-bridge soak --minutes 0.75 --seed 5" in printed
    assert "mqk_soak_" not in printed
