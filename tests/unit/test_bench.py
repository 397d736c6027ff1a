"""The bench's pure summary: percentiles, the sliding-window count, the backlog fit, the
loss/duplicate accounting from what the API recorded, the spool ledger and the target verdicts."""

from __future__ import annotations

import math
from dataclasses import asdict
from datetime import UTC, datetime

import orjson
import pytest

from bridge.lab.apiserver.store import RequestRecord
from bridge.lab.bench.baselines import PAHO, make_baseline
from bridge.lab.bench.forms import FORMS, Form, time_forms
from bridge.lab.bench.report import (
    TARGET_RATE,
    TARGET_SECONDS,
    PointLedger,
    Report,
    Sample,
    SpoolReport,
    add_disk_writes,
    cpu_percent,
    drain_targets,
    linear_fit,
    max_in_window,
    percentile,
    rate_targets,
    render,
    rss_target,
    spool_problems,
    summarize,
    target,
)
from bridge.lab.bench.rules import (
    MappingBench,
    RulesReport,
    bench_rule_index,
    ratio,
    rules_yaml,
    spread,
    time_rule_sets,
    topic_for,
)
from bridge.lab.localrun import message_payload
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.mapping.timestamps import format_timestamp

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


# -- targets -------------------------------------------------------------------------------------


def _complete_report(**changes: object) -> Report:
    report = summarize(
        "rate",
        3,
        BASE_MS,
        published_at=[T0] * 3,
        requests=[_request([0, 1, 2], 1.0)],
        samples=[Sample(0.0, 0.0, 0.0, 40 << 20), Sample(2.0, 0.0, 1.0, 60 << 20)],
        publish_window=(0.0, 1.0),
        t0_wall=T0,
    )
    for name, value in changes.items():
        setattr(report, name, value)
    return report


def test_target_compares_either_way_and_never_meets_an_unmeasured_value() -> None:
    """A NaN measurement (nothing measured) is reported as missed, not as met."""
    assert target("rss", 99.0, "<=", 100.0).met
    assert not target("rss", 101.0, "<=", 100.0).met
    assert target("ratio", 0.5, ">=", 0.5).met
    assert not target("ratio", 0.4, ">=", 0.5).met
    assert not target("ratio", math.nan, ">=", 0.5).met
    assert not target("rss", math.nan, "<=", 100.0).met
    with pytest.raises(ValueError, match="comparison"):
        target("x", 1.0, "<", 2.0)


def test_cpu_percent_is_of_one_core_over_the_window() -> None:
    assert cpu_percent(15.0, 60.0) == 25.0
    assert cpu_percent(3.0, 2.0) == 150.0  # more than one core is possible
    assert math.isnan(cpu_percent(1.0, 0.0))
    assert math.isnan(cpu_percent(math.nan, 10.0))


def test_rate_targets_check_loss_latency_cpu_and_memory() -> None:
    """The latency limit is the batch linger plus 250 ms, and 50 ms with durable commits at
    2,000 msg/s; other conditions, and a publisher that fell behind its rate, are flagged."""
    report = _complete_report(latency_p99_s=1.2, cpu_percent_of_one_core=49.0, peak_rss_mb=101.0)
    report.messages, report.seconds_publishing = 300_000, 60.0  # on pace
    add_disk_writes(report, 12 * 100.0, 80.0)  # 12 points published in _complete_report
    targets = rate_targets(report, linger_s=1.0, rate=TARGET_RATE, seconds=TARGET_SECONDS)
    by_name = {t.name: t for t in targets}
    assert [t.met for t in targets] == [True, True, False, True, True, False]
    assert by_name["p99 publish-to-API latency (s)"].limit == 1.25
    durable = by_name["p99 publish-to-API latency, durable commits (s)"]
    assert (durable.limit, durable.note) == (0.05, "stated for 2,000 msg/s")
    assert by_name["disk writes per point (bytes)"].measured == 100.0
    assert all(t.note == "" for t in targets if t is not durable)
    slow = _complete_report(latency_p99_s=0.5, points_lost=4, cpu_percent_of_one_core=80.0)
    targets = rate_targets(slow, linger_s=0.2, rate=300.0, seconds=2.0)
    assert [t.met for t in targets] == [False, False, False, False, False, True]
    assert targets[1].limit == 0.45
    assert "this run: 300 msg/s for 2 s" in targets[0].note
    assert "the publisher reached only 3 msg/s" in targets[0].note  # 3 messages in 1 s
    assert "the publisher reached only 3 msg/s" in targets[2].note
    assert "disk writes" in targets[4].name
    assert math.isnan(targets[4].measured)  # not measured: not met


def test_disk_writes_are_given_per_message_and_per_point() -> None:
    report = _complete_report()  # 3 messages of 4 points
    add_disk_writes(report, 1200.0, 81.25)
    assert (report.disk_bytes_per_message, report.disk_bytes_per_point) == (400.0, 100.0)
    assert report.payload_bytes_per_message == 81.2
    assert "disk bytes per point" in render(report)


def test_drain_target_compares_the_bridge_with_the_paho_baseline() -> None:
    """From connect when known (a process start is not part of a drain), else end to end."""
    paho = make_baseline(PAHO, 1000, 1000, 0.1)
    assert paho.messages_per_s == 10000.0
    assert paho.complete
    report = _complete_report(messages_per_s_end_to_end=4000.0, messages_per_s_from_connect=6000.0)
    ratio_target, rss = drain_targets(report, [paho])
    assert (ratio_target.measured, ratio_target.limit, ratio_target.met) == (0.6, 0.5, True)
    assert rss.name == "bridge peak RSS (MB)"
    report.messages_per_s_from_connect = math.nan
    assert drain_targets(report, [paho])[0].measured == 0.4
    assert not drain_targets(report, [paho])[0].met


def test_an_unfinished_baseline_gives_no_ratio() -> None:
    """A baseline that did not drain everything is no ceiling: the target is missed, with why."""
    short = make_baseline(PAHO, 1000, 900, 0.1)
    assert not short.complete
    assert short.detail == "900 of 1000 messages arrived"
    (ratio_target, _rss) = drain_targets(_complete_report(), [short])
    assert math.isnan(ratio_target.measured)
    assert not ratio_target.met
    assert "did not finish" in ratio_target.note
    assert [t.name for t in drain_targets(_complete_report(), [])] == ["bridge peak RSS (MB)"]


def test_render_shows_baselines_targets_and_the_verdict() -> None:
    report = _complete_report()
    baselines = [make_baseline(PAHO, 3, 3, 0.5), make_baseline("mosquitto_sub", 3, 2, 0.5)]
    report.baselines = [asdict(b) for b in baselines]
    report.targets = [asdict(t) for t in drain_targets(report, baselines)]
    text = render(report)
    assert "baseline paho-mqtt: 6.0 msg/s (3 of 3 messages in 0.5 s)" in text
    assert "INCOMPLETE: 2 of 3 messages arrived" in text
    assert "target MET    bridge peak RSS (MB): 60.0 <= 100.0" in text
    assert text.endswith("OK: nothing lost")


# -- spool accounting ----------------------------------------------------------------------------


def test_point_ledger_tells_delivered_waiting_lost_and_duplicated_points() -> None:
    ledger = PointLedger(4, BASE_MS)
    ledger.delivered(BASE_MS + 0, ["temp", "rh", "kw", "hz"])
    ledger.delivered(BASE_MS + 1, ["temp", "rh"])
    ledger.delivered(BASE_MS + 1, ["rh"])  # accepted twice
    ledger.waiting(BASE_MS + 1, ["kw", "hz"])
    ledger.waiting(BASE_MS + 2, ["temp", "rh", "kw", "hz"])
    ledger.waiting(BASE_MS + 0, ["temp"])  # delivered and still in the spool: not waiting
    ledger.delivered(BASE_MS + 9, ["temp"])  # no message of this run
    ledger.delivered(BASE_MS + 3, ["voltage"])  # no metric of a bench message
    assert ledger.totals() == (6, 6, 4)  # message 3 is lost
    assert (ledger.duplicated, ledger.foreign) == (1, 2)


def _spool_report(**changes: object) -> SpoolReport:
    report = SpoolReport(
        mode="spool",
        points_prefilled=40,
        seconds_to_prefill=0.1,
        spool_mb=1.0,
        seconds_to_ready=0.5,
        live_messages=5,
        points_total=60,
        points_delivered=60,
        points_duplicated=0,
        points_still_waiting=0,
        points_lost=0,
        drained=True,
        seconds_draining=1.0,
        points_per_s_draining=60.0,
        peak_rss_mb_api_down_idle=50.0,
        peak_rss_mb_api_down_live=51.0,
        peak_rss_mb_draining=52.0,
        peak_rss_mb=52.5,
    )
    for name, value in changes.items():
        setattr(report, name, value)
    return report


def test_spool_problems_name_lost_duplicated_and_foreign_points() -> None:
    assert spool_problems(_spool_report(), foreign=0) == []
    assert spool_problems(_spool_report(points_lost=3, points_duplicated=2), foreign=1) == [
        "3 point(s) neither delivered nor in the spool",
        "2 point(s) delivered twice",
        "1 point(s) that belong to no message of this run",
    ]


def test_render_of_a_spool_report_has_every_phase_and_the_rss_target() -> None:
    report = _spool_report()
    report.targets = [asdict(rss_target(report.peak_rss_mb))]
    text = render(report)
    for phase in ("api down idle", "api down live", "draining"):
        assert f"peak rss mb {phase}" in text
    assert "target MET    bridge peak RSS (MB): 52.5 <= 100.0" in text


# -- rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_rules", [1, 10, 1000])
def test_generated_rules_match_the_topic_meant_for_each_rule(n_rules: int) -> None:
    """Every rule of a generated file is reachable, and by exactly the topic made for it."""
    mapper = Mapper(load_mappings_text(rules_yaml(n_rules)))
    assert len(mapper.rules) == n_rules
    assert mapper.rules[bench_rule_index(n_rules)].name == "bench"
    for index in spread(n_rules, min(n_rules, 50)):
        topic = topic_for(n_rules, index, "d007")
        mapped = mapper.map(topic, message_payload(3, BASE_MS), (BASE_MS + 1000) * 1000)
        assert mapped.rule == mapper.rules[index].name
        assert mapped.points == 4
        assert mapped.records[0].device_id == "d007"


def test_spread_covers_the_whole_list() -> None:
    assert spread(1000, 3) == [0, 500, 999]
    assert spread(10, 10) == list(range(10))
    assert spread(1, 4) == [0, 0, 0, 0]
    assert ratio(12.0, 10.0) == 1.2
    assert math.isnan(ratio(1.0, 0.0))


def test_rule_set_timing_checks_every_message_maps() -> None:
    """A timing of a mapper that maps wrongly would be meaningless: each message gives 4 points."""
    timings, problems = time_rule_sets([10, 100], messages=200, rounds=2, base_ms=BASE_MS)
    assert problems == []
    assert [t.rules for t in timings] == [10, 100]
    assert all(t.repeated_topic_us > 0 and t.first_seen_topic_us > 0 for t in timings)
    broken = MappingBench(3, 30, BASE_MS)
    broken._payloads[0] = b'{"temp": 1}'  # three of four metrics missing
    assert len(broken.check()) == 1


# -- rule forms ----------------------------------------------------------------------------------


def test_every_rule_form_maps_its_message_and_is_timed() -> None:
    """Each form of the mapping language maps its message to the points it should (a timing of
    a wrong mapping would be meaningless), in one file with all the others."""
    timings, presence, problems = time_forms(messages=50, rounds=2)
    assert problems == []
    assert [t.form for t in timings] == [f.name for f in FORMS]
    assert timings[0].ratio_to_common_path == 1.0
    assert all(t.us_per_message > 0 for t in timings)
    assert presence > 0


def test_a_form_that_maps_wrongly_is_a_problem() -> None:
    broken = Form("broken", FORMS[0].rule, "bench/d{n}/env", '{"temp": 1, "ts": 1795681920123}', 4)
    _timings, _presence, problems = time_forms(messages=5, rounds=1, forms=(broken,))
    assert len(problems) == 2  # with every form, and alone
    assert "missing_field" in problems[0]


def test_the_rules_report_renders_the_forms_table() -> None:
    timings, presence, _problems = time_forms(messages=5, rounds=1)
    report = RulesReport("rules", [], 1.0, 1.0)
    report.forms = [asdict(t) for t in timings]
    report.common_path_with_every_form_ratio = presence
    text = render(report)
    assert "form json metrics (common path): " in text
    assert "form collect with separator and a prefix template: " in text
    assert "common path with every form ratio" in text
