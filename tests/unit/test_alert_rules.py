"""The mapping file's ``alerts:`` section: its validation (file:line errors, did-you-mean,
webhook schemes, unique names), the rules it expands to, ``check``'s warning about metrics no
rule produces, and the ledger's plan (create, unchanged, changed, removed, possibly created)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.api.alert_ledger import Ledger, LedgerEntry, LedgerError, body_hash, plan
from bridge.api.models import AlertRule
from bridge.cli.main import main
from bridge.config.yamlfile import load_yaml_text
from bridge.errors import ConfigError, ConfigErrors
from bridge.mapping.alert_rules import (
    compile_alerts,
    unproduced_metric_warnings,
    webhook_problem,
)
from bridge.mapping.loader import compile_mappings
from bridge.mapping.spec import MappingFile

RULES = """version: 1
rules:
  - name: env
    topic: plant/{line}/env
    device_id: "{line}"
    metrics:
      temp: temperature
"""


def alert(**fields: object) -> str:
    values: dict[str, object] = {
        "name": "Hot",
        "device": "line-1",
        "metric": "temp",
        "condition": "gt",
        "threshold": 30,
        "notify": "https://hooks.example.com/x",
    }
    values.update(fields)
    lines = [f"    {k}: {v}" for k, v in values.items()]
    lines[0] = "  - " + lines[0].lstrip()
    return "\n".join(lines) + "\n"


def errors_of(text: str) -> list[str]:
    data, index = load_yaml_text(text, "m.yaml")
    with pytest.raises(ConfigError) as caught:
        compile_mappings(data, index)
    exc = caught.value
    return [e.headline for e in (exc.errors if isinstance(exc, ConfigErrors) else [exc])]


def desired(text: str) -> list[AlertRule]:
    data, index = load_yaml_text(text, "m.yaml")
    compile_mappings(data, index)
    errors: list[ConfigError] = []
    out = compile_alerts(MappingFile.model_validate(data).alerts or [], index, errors)
    assert errors == []
    return [d.rule for d in out]


def test_an_entry_becomes_the_documented_body_and_symbols_become_words() -> None:
    [rule] = desired(RULES + "alerts:\n" + alert(condition='">="', threshold=85))
    assert rule.body() == {
        "name": "Hot",
        "device_id": "line-1",
        "metric": "temp",
        "condition": "gte",
        "threshold": 85.0,
        "notify": {"type": "webhook", "url": "https://hooks.example.com/x"},
    }


def test_a_device_list_is_one_alert_per_device_and_star_stays_one() -> None:
    text = RULES + "alerts:\n" + alert(device="[a, b]") + alert(name="All", device='"*"')
    got = [(r.name, r.device_id) for r in desired(text)]
    assert got == [("Hot (a)", "a"), ("Hot (b)", "b"), ("All", "*")]


def test_an_unknown_key_names_file_line_and_the_key_meant() -> None:
    text = RULES + "alerts:\n" + alert() + "    thresold: 3\n"
    assert errors_of(text) == [
        "m.yaml:15: alerts[0].thresold: unknown key; did you mean 'threshold'?"
    ]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://hooks.example.com/x", "must use https"),
        ("ftp://hooks.example.com/x", "is not an http(s) URL"),
        ("https://user:pw@hooks.example.com/x", "must not hold a user name or password"),
        ("https:///x", "is not an http(s) URL with a host"),
    ],
)
def test_a_bad_webhook_is_an_error_at_its_line(url: str, problem: str) -> None:
    [error] = errors_of(RULES + "alerts:\n" + alert(notify=url))
    assert error.startswith("m.yaml:14: alerts[0].notify: ")
    assert problem in error


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8125/hook", "http://localhost/h", "http://[::1]:9/h", "https://a.b/c"]
)
def test_https_or_loopback_http_is_accepted(url: str) -> None:
    assert webhook_problem(url) is None


@given(st.from_regex(r"[a-z]{1,10}\.(com|net|io)", fullmatch=True), st.text(max_size=20))
def test_plain_http_to_any_named_host_is_refused(host: str, path: str) -> None:
    assert webhook_problem(f"http://{host}/{path}") is not None


def test_names_are_unique_after_device_lists_are_expanded() -> None:
    text = RULES + "alerts:\n" + alert(device="[a]") + alert(name='"Hot (a)"')
    [error] = errors_of(text)
    assert error.startswith("m.yaml:15: alerts[1].name: duplicate alert name 'Hot (a)'")


def test_star_inside_a_list_and_a_listed_twice_device_are_errors() -> None:
    text = RULES + "alerts:\n" + alert(device='[a, "*"]') + alert(name="B", device="[a, a]")
    errors = errors_of(text)
    assert errors == [
        "m.yaml:10: alerts[0].device: '*' means every device: write it alone",
        "m.yaml:16: alerts[1].device: listed twice: a",
    ]


def test_check_warns_about_a_metric_no_rule_produces(tmp_path: Path) -> None:
    text = RULES + "alerts:\n" + alert() + alert(name="Typo", metric="tmp")
    data, index = load_yaml_text(text, "m.yaml")
    rules = compile_mappings(data, index)
    alerts = compile_alerts(MappingFile.model_validate(data).alerts or [], index, [])
    assert unproduced_metric_warnings(alerts, rules, "m.yaml") == [
        "m.yaml:15: warning: alert 'Typo': no rule produces metric 'tmp', so the alert would "
        "never fire; did you mean 'temp'?"
    ]


@pytest.mark.parametrize(
    ("rule", "metric", "warned"),
    [
        ("    payload: number\n    metric: 'env_{line}'\n", "env_a", False),  # template fits
        ("    payload: number\n    metric: 'env_{line}'\n", "temp", True),
        ("    collect: {path: ''}\n", "anything", False),  # names come from the payload
    ],
)
def test_templated_and_collected_names_are_judged_conservatively(
    rule: str, metric: str, warned: bool
) -> None:
    text = (
        "version: 1\nrules:\n  - name: r\n    topic: p/{line}\n    device_id: '{line}'\n"
        + rule
        + "alerts:\n"
        + alert(metric=metric)
    )
    data, index = load_yaml_text(text, "m.yaml")
    rules = compile_mappings(data, index)
    alerts = compile_alerts(MappingFile.model_validate(data).alerts or [], index, [])
    assert bool(unproduced_metric_warnings(alerts, rules, "m.yaml")) is warned


def test_check_prints_the_warning_and_strict_makes_it_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(RULES + "alerts:\n" + alert(metric="tmp"), encoding="utf-8")
    assert main(["check", str(path)]) == 0
    assert "no rule produces metric 'tmp'" in capsys.readouterr().out
    assert main(["check", "--strict", str(path)]) == 78


def rule(name: str = "Hot", threshold: float = 30) -> AlertRule:
    return AlertRule(name, "d1", "temp", "gt", float(threshold), "https://h.example.com/x")


def created(r: AlertRule, alert_id: str = "alert_1") -> LedgerEntry:
    return LedgerEntry(r.name, "created", body_hash(r.body()), r.body(), "T", alert_id)


def test_plan_tells_each_kind_apart(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.json")
    ledger.put(created(rule("Same")))
    ledger.put(created(rule("Changed", 30), "alert_2"))
    ledger.put(created(rule("Gone"), "alert_3"))
    unsure = rule("Unsure")
    ledger.put(LedgerEntry("Unsure", "intent", body_hash(unsure.body()), unsure.body(), "T"))
    items = plan([rule("New"), rule("Same"), rule("Changed", 35), unsure], ledger)
    assert [(i.kind, i.name) for i in items] == [
        ("create", "New"),
        ("unchanged", "Same"),
        ("changed", "Changed"),
        ("unsure", "Unsure"),
        ("removed", "Gone"),
    ]
    assert "threshold 30.0 → 35.0" in items[2].describe()
    assert "delete alert alert_3 'Gone' in the Metriqo dashboard" in items[4].describe()


def test_the_ledger_survives_a_round_trip_and_is_private(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state" / "l.json")
    ledger.put(created(rule()))
    again = Ledger.load(ledger.path)
    assert again.entries == ledger.entries
    assert ledger.path.stat().st_mode & 0o777 == 0o600
    assert not ledger.path.with_name("l.json.tmp").exists()


def test_an_unreadable_ledger_is_an_error_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    path.write_bytes(b"{not json")
    with pytest.raises(LedgerError, match="unreadable"):
        Ledger.load(path)
    assert path.read_bytes() == b"{not json"


finite = st.floats(allow_nan=False, allow_infinity=False)


@given(finite, st.one_of(finite, st.just(0.0)))
def test_the_hash_changes_exactly_when_the_threshold_does(a: float, b: float) -> None:
    same = body_hash(rule(threshold=a).body()) == body_hash(rule(threshold=b).body())
    assert same is (repr(a) == repr(b))


def test_the_guides_example_compiles_to_its_alerts_and_its_tests_pass() -> None:
    """The first example of docs/guide/alerts.md is a whole mapping file: its rules' tests
    pass, its alerts are the four the guide's plan shows, and check has no warning for them."""
    from bridge.mapping.selftest import run_mapping_tests

    page = (Path(__file__).parents[2] / "docs" / "guide" / "alerts.md").read_text("utf-8")
    block = page.split("```yaml\n")[1].split("```")[0]
    data, index = load_yaml_text(block, "alerts.md")
    rules = compile_mappings(data, index)
    spec = MappingFile.model_validate(data)
    alerts = compile_alerts(spec.alerts or [], index, [])
    assert [a.key for a in alerts] == ["Hot line", "Damp (line-1)", "Damp (line-2)", "Any line hot"]
    assert unproduced_metric_warnings(alerts, rules, "alerts.md") == []
    tests = spec.tests or []
    assert len(tests) == 1
    assert [o.problems for o in run_mapping_tests(rules, tests, index)] == [[]]


def test_a_second_alerts_command_is_refused_while_one_holds_the_ledger(tmp_path: Path) -> None:
    import os

    from bridge.api.alert_ledger import LedgerBusy, lock_ledger

    path = tmp_path / "state" / "alerts-ledger.json"
    fd = lock_ledger(path)
    try:
        with pytest.raises(LedgerBusy, match="another `metriqo-bridge alerts` command"):
            lock_ledger(path)
    finally:
        os.close(fd)
    os.close(lock_ledger(path))  # released with its descriptor


def test_a_ledger_of_another_api_is_refused(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.json")
    ledger.claim("https://staging.example.com/api/v2")
    ledger.put(created(rule()))
    again = Ledger.load(ledger.path)
    again.claim("https://staging.example.com/api/v2")  # the same API: fine
    with pytest.raises(LedgerError, match="records alerts created at https://staging"):
        Ledger.load(ledger.path).claim("https://metriqo.net/api/v2")
