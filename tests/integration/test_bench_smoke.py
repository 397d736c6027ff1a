"""Smoke runs of ``metriqo-bridge bench``, each mode tiny: correctness only (every point
arrives, the report is complete, the baselines drain the same backlog); the numbers themselves
are for people, not assertions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bridge.cli.main import main
from tests.support.tools import require_tool


def _run(
    args: list[str], out: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[dict[str, Any], str]:
    code = main(["bench", *args, "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "OK: nothing lost" in printed
    assert "mqk_bench_" not in printed + out.read_text()  # the run's token is never shown
    report = json.loads(out.read_text())
    assert report["problems"] == []
    return report, printed


def test_rate_mode_delivers_every_point_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rate mode: every point once, and a verdict for each of the live-flow targets."""
    report, printed = _run(["rate", "--rate", "300", "--seconds", "2"], tmp_path / "r.json", capsys)
    assert report["messages"] == 600
    assert (report["points_published"], report["points_delivered"]) == (2400, 2400)
    assert (report["points_lost"], report["points_duplicated"]) == (0, 0)
    assert report["requests_accepted"] >= 24  # at most 100 points each
    assert report["peak_rss_mb"] > 0
    assert report["cpu_percent_of_one_core"] > 0
    assert report["backlog_drained"] is True
    names = [t["name"] for t in report["targets"]]
    assert names == [
        "points lost",
        "p99 publish-to-API latency (s)",
        "p99 publish-to-API latency, durable commits (s)",
        "bridge CPU while publishing (% of one core)",
        "disk writes per point (bytes)",
        "bridge peak RSS (MB)",
    ]
    assert report["targets"][0]["met"] is True  # nothing lost is correctness, not speed
    assert report["targets"][1]["limit"] == 1.25  # the default linger, 1 s, + 250 ms
    assert printed.count("target ") == 6
    # The spool's commits and deletes were written to disk: some bytes for every point.
    assert report["disk_write_bytes"] > 0
    assert report["disk_bytes_per_point"] * 2400 == pytest.approx(report["disk_write_bytes"], 1e-3)
    assert report["payload_bytes_per_message"] > 0


def test_backlog_mode_drains_and_so_do_the_baselines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Backlog mode: the bridge, a bare paho client and mosquitto_sub each drain all 2,000."""
    require_tool("mosquitto_sub", "the C-client baseline of bench backlog")
    report, printed = _run(["backlog", "--messages", "2000"], tmp_path / "b.json", capsys)
    assert (report["points_delivered"], report["points_lost"]) == (8000, 0)
    assert report["points_per_request"] >= 99
    assert report["messages_per_s_from_connect"] > 0
    baselines = {b["client"]: b for b in report["baselines"]}
    assert set(baselines) == {"paho-mqtt", "mosquitto_sub"}
    for b in baselines.values():
        assert (b["messages_expected"], b["messages_received"]) == (2000, 2000)
        assert b["complete"] is True
        assert b["messages_per_s"] > 0
    ratio = report["targets"][0]
    assert ratio["name"] == "backlog drain end to end / bare paho drain"
    assert math.isfinite(ratio["measured"])
    assert "baseline mosquitto_sub:" in printed


def test_backlog_baselines_work_over_mqtt_311(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The baselines' sessions follow the bridge's protocol: 3.1.1 persistent sessions too."""
    args = ["backlog", "--messages", "500", "--protocol", "v311"]
    report, _printed = _run(args, tmp_path / "b.json", capsys)
    assert report["points_lost"] == 0
    paho = next(b for b in report["baselines"] if b["client"] == "paho-mqtt")
    assert (paho["messages_received"], paho["complete"]) == (500, True)


def test_spool_mode_serves_a_full_spool_and_drains_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spool mode: the prefilled and the live points all arrive once; RSS is measured per phase."""
    args = ["spool", "--points", "50000", "--idle-seconds", "0.5"]
    args += ["--live-rate", "500", "--live-seconds", "1"]
    report, _printed = _run(args, tmp_path / "s.json", capsys)
    assert report["points_prefilled"] == 50000
    assert report["points_total"] == 50000 + 500 * 4
    assert report["points_delivered"] == report["points_total"]
    assert (report["points_lost"], report["points_duplicated"]) == (0, 0)
    assert (report["points_still_waiting"], report["drained"]) == (0, True)
    for phase in ("api_down_idle", "api_down_live", "draining"):
        assert report[f"peak_rss_mb_{phase}"] > 0
    assert report["peak_rss_mb"] >= report["peak_rss_mb_draining"]
    assert [t["name"] for t in report["targets"]] == ["bridge peak RSS (MB)"]


def test_spool_mode_accounts_for_points_still_waiting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped mid-drain, what was not delivered is found in the spool: nothing counts as lost."""
    args = ["spool", "--points", "200000", "--idle-seconds", "0", "--live-seconds", "0"]
    args += ["--drain-seconds", "0.5", "--set", "stop_timeout_s=0.5"]  # 1 s: far from 200,000
    report, _printed = _run(args, tmp_path / "s.json", capsys)
    assert report["drained"] is False
    assert report["points_still_waiting"] > 0
    assert report["points_delivered"] + report["points_still_waiting"] == 200000
    assert (report["points_lost"], report["points_duplicated"]) == (0, 0)


def test_rules_mode_times_both_rule_sets_and_drains_with_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rules mode: 10 and 1,000 rules, mapped in process and end to end, nothing lost."""
    args = ["rules", "--iterations", "500", "--rounds", "1", "--messages", "1000"]
    report, _printed = _run(args, tmp_path / "rules.json", capsys)
    assert [t["rules"] for t in report["timings"]] == [10, 1000]
    assert math.isfinite(report["repeated_topic_ratio"])
    assert math.isfinite(report["first_seen_topic_ratio"])
    e2e = report["end_to_end"]
    assert (e2e["rules_10"]["points_lost"], e2e["rules_1000"]["points_lost"]) == (0, 0)
    assert math.isfinite(e2e["time_per_message_ratio"])
    # Each form of the mapping language mapped its message and was timed; the common path's
    # cost with every form in the file is a target of its own.
    assert report["forms"][0]["form"] == "json metrics (common path)"
    assert len(report["forms"]) >= 7
    assert all(f["us_per_message"] > 0 for f in report["forms"])
    assert math.isfinite(report["common_path_with_every_form_ratio"])
    assert [t["name"].split(":")[0] for t in report["targets"]] == [
        "mapping, repeated topic",
        "mapping, first-seen topic",
        "mapping, common path",
        "backlog drain end to end",
    ]


def test_replicas_mode_drains_one_backlog_with_each_group_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replicas mode: for 1 and 2 bridges in a share group, every point exactly once, and with
    two the work is split between them."""
    out = tmp_path / "replicas.json"
    code = main(["bench", "replicas", "--messages", "600", "--replicas", "1,2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    runs = json.loads(out.read_text())
    assert [r["replicas"] for r in runs] == [1, 2]
    for r in runs:
        assert (r["points_delivered"], r["points_lost"], r["points_duplicated"]) == (2400, 0, 0)
        assert r["problems"] == []
        assert sum(r["share_per_replica"]) == 2400
    assert all(share > 0 for share in runs[1]["share_per_replica"])
    assert "mqk_bench_" not in printed + out.read_text()


def test_edge_mode_drains_a_backlog_and_a_live_flow_confined(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Edge mode: the bridge pinned to one core and capped in memory (however this machine
    allows it) takes a backlog and a live flow, every point once."""
    require_tool("taskset", "bench edge pins the bridge to one core")
    args = ["edge", "--messages", "1000", "--rate", "200", "--seconds", "2"]
    report, printed = _run(args, tmp_path / "e.json", capsys)
    run = report["run"]
    assert (run["points_published"], run["points_delivered"]) == (5600, 5600)
    assert (run["points_lost"], run["points_duplicated"]) == (0, 0)
    assert report["confinement"].startswith("taskset -c 0, ")
    assert "256M" in report["confinement"]
    assert report["backlog_messages"] == 1000
    assert report["live_messages"] == 400
    assert report["seconds_to_catch_up"] > 0
    assert run["disk_write_bytes"] > 0
    assert printed.count("target ") == 5
    assert "intake messages per s" not in printed  # a backlog's phases: not measured here
