"""The Grafana dashboard and the Prometheus rules read only what the bridge exports.

Every metric name and label in the dashboard's queries and in ``deploy/prometheus/alerts.yml``
is checked against the ``/metrics`` output of a real bridge that carried some traffic, so a
renamed metric or label breaks this test rather than a dashboard panel or an alert in
production. promtool checks the Prometheus configuration and runs the rules' unit tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.metrics import BridgeMetrics
from tests.support import REPO
from tests.support.deploy import DEPLOY
from tests.support.harness import (
    env_messages,
    make_settings,
    metric,
    publish,
    running_bridge,
)
from tests.support.tools import require_tool

PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "metriqo-bridge.json"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts.test.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Labels Prometheus attaches to every scraped series, and the series it makes up itself.
TARGET_LABELS = frozenset({"job", "instance"})
SYNTHETIC = {"up": TARGET_LABELS}
# Labels the bridge must never export (unbounded cardinality): a query using one is wrong even
# if some day a metric carried it.
FORBIDDEN_LABELS = frozenset({"topic", "device", "device_id"})

# -- reading PromQL ---------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"(\d+)"')
_IDENT = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(?!\w)(\s*\()?")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),)?\s*(\w+)\s*\)\s*$", re.DOTALL)
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "inf", "nan", "atan2"}
)


@dataclass(frozen=True)
class Selector:
    """One vector selector: a metric name and its label matchers (label, op, value)."""

    name: str
    matchers: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class Query:
    """What one PromQL expression refers to."""

    names: frozenset[str]
    selectors: tuple[Selector, ...]
    grouping: frozenset[str]


def parse_promql(expr: str) -> Query:
    """Metric names, selectors and grouping labels of ``expr``; strings, ranges, functions,
    keywords and Grafana variables (``$instance``, ``$__rate_interval``) are not names."""
    strings: list[str] = []

    def keep(m: re.Match[str]) -> str:
        strings.append(m.group(0)[1:-1])
        return f'"{len(strings) - 1}"'  # digits: never read as an identifier

    bare = _RANGE.sub(" ", _STRING.sub(keep, expr))
    grouping = frozenset(
        label.strip() for m in _GROUPING.finditer(bare) for label in m.group(1).split(",")
    ) - {""}
    bare = _GROUPING.sub(" ", bare)
    selectors = []
    for m in _SELECTOR.finditer(bare):
        matchers = tuple(
            (label, op, strings[int(index)]) for label, op, index in _MATCHER.findall(m.group(2))
        )
        if m.group(1) is None:  # {__name__="..."} and friends: not used here, refuse them
            raise ValueError(f"selector without a metric name in {expr!r}")
        selectors.append(Selector(m.group(1), matchers))
    outside = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", bare)
    names = frozenset(
        m.group(1)
        for m in _IDENT.finditer(outside)
        if m.group(2) is None and m.group(1) not in _KEYWORDS
    )
    plain = [Selector(name, ()) for name in names if name not in {s.name for s in selectors}]
    return Query(names, (*selectors, *plain), grouping)


# -- reading the bridge's exposition ----------------------------------------------------------


@dataclass
class Exported:
    """The sample names the bridge exports, with the labels and label values of each."""

    families: dict[str, str] = field(default_factory=dict)  # sample name -> family
    labels: dict[str, set[str]] = field(default_factory=dict)  # family -> label names
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (family, label)
    empty: set[str] = field(default_factory=set)  # families without a sample


_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
}


def read_exposition(text: str) -> Exported:
    """Index Prometheus text output by the names a query can use: a counter family ``x`` is
    queried as ``x_total``, a histogram as ``x_bucket``/``x_sum``/``x_count``."""
    out = Exported()
    for family in text_string_to_metric_families(text):
        names = {family.name + s for s in _SUFFIXES.get(family.type, ("",))}
        names |= {s.name for s in family.samples}  # e.g. _created, when enabled
        for name in names:
            out.families[name] = family.name
        out.labels[family.name] = {k for s in family.samples for k in s.labels}
        for s in family.samples:
            for k, v in s.labels.items():
                out.values.setdefault((family.name, k), set()).add(v)
        if not family.samples:
            out.empty.add(family.name)
    return out


def check_queries(
    queries: Iterable[tuple[str, str]],
    exported: Exported,
    recorded: dict[str, frozenset[str]],
    legends: Iterable[tuple[str, str]] = (),
) -> list[str]:
    """Problems with ``(where, expr)`` queries against what the bridge exports; ``recorded``
    maps recording-rule names to the labels their rule keeps."""
    problems: list[str] = []
    every_label = {k for labels in exported.labels.values() for k in labels} | TARGET_LABELS
    every_label |= {k for labels in recorded.values() for k in labels}
    for where, expr in queries:
        try:
            query = parse_promql(expr)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        for label in sorted(query.grouping - every_label):
            problems.append(f"{where}: groups by {label!r}, which no bridge metric has")
        for label in sorted(query.grouping & FORBIDDEN_LABELS):
            problems.append(f"{where}: groups by {label!r} (unbounded, never exported)")
        for sel in query.selectors:
            problems += _check_selector(where, sel, exported, recorded)
    for where, legend in legends:
        for label in _LEGEND.findall(legend):
            if label not in every_label or label in FORBIDDEN_LABELS:
                problems.append(f"{where}: legend uses {label!r}, which no bridge metric has")
    return problems


def _check_selector(
    where: str, sel: Selector, exported: Exported, recorded: dict[str, frozenset[str]]
) -> list[str]:
    problems = []
    used = {label for label, _, _ in sel.matchers}
    if ":" in sel.name:  # recording-rule naming: level:metric:operations
        if sel.name not in recorded:
            return [f"{where}: {sel.name!r} is no recording rule of alerts.yml"]
        allowed = set(recorded[sel.name])
    elif sel.name in SYNTHETIC:
        allowed = set(SYNTHETIC[sel.name])
    elif sel.name not in exported.families:
        return [f"{where}: metric {sel.name!r} is not exported by the bridge"]
    else:
        family = exported.families[sel.name]
        if family in exported.empty:
            return [f"{where}: {family!r} has no sample; the test traffic must produce one"]
        allowed = exported.labels[family] | TARGET_LABELS
        if not sel.name.endswith("_bucket"):
            allowed.discard("le")
        for label, op, value in sel.matchers:
            if label in TARGET_LABELS or label == "rule" or op not in {"=", "=~"}:
                continue
            if "$" in value or not re.fullmatch(r"[\w|]+", value):
                continue  # a Grafana variable or a real regex: no fixed list to compare
            known = exported.values.get((family, label), set())
            for v in sorted(set(value.split("|")) - known):
                problems.append(f"{where}: {sel.name}{{{label}}} never has the value {v!r}")
    for label in sorted(used - allowed):
        problems.append(f"{where}: {sel.name} has no label {label!r}")
    for label in sorted(used & FORBIDDEN_LABELS):
        problems.append(f"{where}: {sel.name} is selected by {label!r} (never exported)")
    return problems


# -- reading the deployment files -------------------------------------------------------------


def load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def recording_rules() -> dict[str, frozenset[str]]:
    """Recording-rule name -> the labels its ``sum by (...)`` keeps."""
    out = {}
    for rule in load_rules():
        if "record" in rule:
            kept = parse_promql(rule["expr"]).grouping - {"le"}
            out[rule["record"]] = frozenset(kept)
    return out


def rule_queries() -> list[tuple[str, str]]:
    return [
        (f"alerts.yml {rule.get('alert') or rule.get('record')}", rule["expr"])
        for rule in load_rules()
    ]


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Panel queries, plus the selectors and labels of ``label_values(...)`` variables."""
    out = []
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r}", target.get("expr", "")))
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = _LABEL_VALUES.match(query)
        assert m, f"variable {var['name']}: only label_values(...) is supported here: {query}"
        selector, label = m.group(1) or "", m.group(2)
        out.append((f"variable {var['name']}", f"count by ({label}) ({selector})"))
    return out


def dashboard_legends(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"panel {panel['title']!r}", target.get("legendFormat", ""))
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


# -- the check against a real bridge ----------------------------------------------------------


async def test_dashboard_and_rules_use_only_what_a_running_bridge_exports(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Every metric, label and label value in the dashboard and rules is in a real /metrics."""
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        # Good readings (points mapped, delivered: histograms observe) and one that is not a
        # number (a mapping failure and a dead letter), so rule-labelled series exist too.
        messages = [*env_messages(5, int(time.time() * 1000) - 50), ("tele/pump-1/rpm", b"x")]
        await publish(broker.port, messages)
        async with asyncio.timeout(20):
            while metric(bridge, "metriqo_bridge_points_delivered_total") < 20 or metric(
                bridge, "metriqo_bridge_messages_committed_total"
            ) < len(messages):
                await asyncio.sleep(0.02)
        assert bridge.status is not None
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{bridge.status.port}/metrics") as r,
        ):
            assert r.status == 200
            text = await r.text()
    exported = read_exposition(text)
    assert "metriqo_bridge_mapping_failures" not in exported.empty  # the traffic did its job
    dashboard = load_dashboard()
    queries = dashboard_queries(dashboard) + rule_queries()
    assert len(queries) > 40
    problems = check_queries(queries, exported, recording_rules(), dashboard_legends(dashboard))
    assert not problems, "\n".join(problems)


def test_check_catches_renamed_metrics_and_wrong_labels() -> None:
    """A misspelt metric, a suffix a family does not have, an unknown label or label value and
    an undefined recording rule are each reported; the correct spellings are not."""
    metrics = BridgeMetrics()
    metrics.points_mapped.labels("env").inc()
    exported = read_exposition(generate_latest(metrics.registry).decode())
    recorded = {"instance:metriqo_bridge_x:rate5m": frozenset({"job", "instance"})}
    good = {
        "counter": 'sum by (instance) (rate(metriqo_bridge_points_mapped_total{rule="env"}[5m]))',
        "histogram": "histogram_quantile(0.99, sum by (le) "
        "(rate(metriqo_bridge_delivery_lag_seconds_bucket[5m])))",
        "values": 'metriqo_bridge_api_requests_total{status_class=~"5xx|error", job=~"$job"}',
        "process": 'time() - process_start_time_seconds{instance=~"$instance"}',
        "up": 'absent(up{job="metriqo-bridge"}) or up == 0',
        "record": "instance:metriqo_bridge_x:rate5m > 0",
        "string": 'label_replace(metriqo_bridge_spool_points, "x", "metriqo_bridge_no", "", "")',
    }
    assert check_queries(good.items(), exported, recorded) == []
    bad = {
        "misspelt": "rate(metriqo_bridge_messages_recieved_total[5m])",
        "no suffix": "rate(metriqo_bridge_points_delivered[5m])",
        "gauge suffix": "metriqo_bridge_spool_points_total",
        "counter bucket": "metriqo_bridge_points_delivered_bucket",
        "other prefix": "metriq_bridge_spool_points",
        "label": 'metriqo_bridge_dead_letters_total{status_class="2xx"}',
        "value": 'metriqo_bridge_api_requests_total{status_class="5XX"}',
        "group": "sum by (device) (metriqo_bridge_spool_points)",
        "topic": 'metriqo_bridge_spool_points{topic="a/b"}',
        "record": "instance:metriqo_bridge_y:rate5m",
        "le": 'metriqo_bridge_delivery_lag_seconds_count{le="1"}',
        "no sample": "metriqo_bridge_mapping_failures_total",
    }
    for where, expr in bad.items():
        assert check_queries([(where, expr)], exported, recorded), where
    assert check_queries([], exported, recorded, [("legend", "{{device}}")])
    assert check_queries([], exported, recorded, [("legend", "{{rule}} {{instance}}")]) == []


def test_promql_reader_finds_names_not_functions_strings_or_variables() -> None:
    """The PromQL reader returns metric names only: not functions, keywords, label names,
    string contents, durations or Grafana variables."""
    query = parse_promql(
        'sum by (instance, le) (rate(metriqo_bridge_delivery_lag_seconds_bucket{job=~"$job",'
        ' rule="up"}[$__rate_interval])) / on (instance) group_left sum without (reason)'
        " (increase(instance:metriqo_bridge_x:ratio[1h:5m] offset 5m)) > bool 1e3 and up"
    )
    assert query.names == {
        "metriqo_bridge_delivery_lag_seconds_bucket",
        "instance:metriqo_bridge_x:ratio",
        "up",
    }
    assert query.grouping == {"instance", "le", "reason"}
    assert (
        Selector(
            "metriqo_bridge_delivery_lag_seconds_bucket",
            (("job", "=~", "$job"), ("rule", "=", "up")),
        )
        in query.selectors
    )


# -- promtool ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "deploy/prometheus/prometheus.yml"],
        ["check", "rules", "deploy/prometheus/alerts.yml"],
        ["test", "rules", "deploy/prometheus/alerts.test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts(args: list[str]) -> None:
    """promtool accepts the scrape configuration and the rules, and the rules' unit tests pass."""
    promtool = require_tool("promtool", "Debian package prometheus")
    done = subprocess.run(
        [promtool, *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_scrape_configuration_matches_the_rules() -> None:
    """The compose Prometheus scrapes bridge:9470 every 15 s as the job the alerts select."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    assert config["global"]["evaluation_interval"] == "15s"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "metriqo-bridge"
    assert job["scrape_interval"] == "15s"
    assert job["static_configs"] == [{"targets": ["bridge:9470"]}]
    ups = [s for _, expr in rule_queries() for s in parse_promql(expr).selectors if s.name == "up"]
    assert ups
    assert {m for s in ups for m in s.matchers} == {("job", "=", job["job_name"])}


def test_every_alert_is_documented_and_tested_both_ways() -> None:
    """Each alert has a severity, a for: duration, annotations with the value and instance, a
    runbook link to its section of docs/operations/alerts.md, and a unit test where it fires
    and one where it does not."""
    alerts = [rule for rule in load_rules() if "alert" in rule]
    assert len(alerts) >= 15
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    fires: set[str] = set()
    silent: set[str] = set()
    for case in (c for t in tests["tests"] for c in t.get("alert_rule_test", [])):
        (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    for rule in alerts:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        notes = rule["annotations"]
        assert notes["runbook_url"] == f"docs/operations/alerts.md#{name.lower()}", name
        assert notes["summary"], name
        assert "$value" in notes["description"], name
        where = "$labels.job" if name == "MetriqoBridgeAbsent" else "$labels.instance"
        assert where in notes["summary"] + notes["description"], name
        assert name in fires, f"{name}: no unit test where it fires"
        assert name in silent, f"{name}: no unit test where it must stay silent"


# -- the dashboard ----------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    """Unique panel ids, every panel and query on the ${datasource} variable, a non-empty
    query per target, a place on the grid with no overlap, and the expected rows."""
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == DATASOURCE, title
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), title
        assert grid["x"] + grid["w"] <= 24, title
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{title} overlaps {cells.get((x, y))}"
                cells[(x, y)] = title
        if panel["type"] == "row":
            continue
        assert panel["targets"], title
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, title
            assert target["expr"].strip(), title
            assert '$instance"' in target["expr"], f"{title}: not filtered by $instance"
            for text in (target["expr"], target.get("legendFormat", "")):
                assert not re.search(r"\b(topic|device|device_id)\b", text), title
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Status", "Throughput", "Backlog & lag", "Errors", "Process"]


def test_grafana_provisioning_points_at_the_compose_services() -> None:
    """The provisioned data source is the compose Prometheus; the dashboard provider reads the
    directory docker compose mounts the dashboards in."""
    sources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )
    (source,) = sources["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "metriqo-bridge.yml").read_text(encoding="utf-8")
    )
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
