"""YAML the way people write it (issue 15): YAML 1.2 scalars, errors with line, column and a
caret, "did you mean" for unknown keys and settings, and the hints for the usual traps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from bridge.cli.main import main
from bridge.config.loader import load_settings
from bridge.config.yamlfile import load_yaml_text
from bridge.errors import ConfigError, ConfigErrors
from bridge.mapping.loader import load_mapping_tests, load_mappings
from bridge.mapping.mapper import Mapper
from bridge.mapping.selftest import run_mapping_tests

SECRET = "mqk_live_7f3d2a9b1c4e8f60aa55"
PASSWORD = "broker-pw-1c0ffee"

RELAY = """\
version: 1
rules:
  - name: relay
    topic: plant/{dev}/relay
    device_id: "{dev}"
    payload: text
    metric: relay_on
    transform:
      map: {ON: 1, OFF: 0}
tests:
  - topic: plant/r1/relay
    payload: ON
    expect: [{device_id: r1, metrics: {relay_on: 1}}]
  - topic: plant/r1/relay
    payload: OFF
    expect: [{device_id: r1, metrics: {relay_on: 0}}]
"""

JSON_RULE = """\
version: 1
rules:
  - name: env
    topic: plant/{dev}/env
    device_id: "{dev}"
{extra}"""


def write(tmp_path: Path, text: str, name: str = "mappings.yaml") -> Path:
    """``text`` written to a file in ``tmp_path``."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def mapping_error(tmp_path: Path, text: str) -> ConfigError:
    """The ConfigError that loading ``text`` as a mapping file raises."""
    with pytest.raises(ConfigError) as info:
        load_mappings(write(tmp_path, text))
    return info.value


def only(err: ConfigError) -> ConfigError:
    """The one error of ``err`` (a ConfigErrors of one, or itself)."""
    if isinstance(err, ConfigErrors):
        assert len(err.errors) == 1, str(err)
        return err.errors[0]
    return err


def settings_error(
    tmp_path: Path,
    text: str | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, str] | None = None,
) -> ConfigError:
    """The ConfigError that loading these settings layers raises."""
    file = write(tmp_path, text, "settings.yaml") if text is not None else None
    with pytest.raises(ConfigError) as info:
        load_settings(file=file, environ=environ or {}, overrides=overrides)
    return info.value


def test_on_and_off_are_text_so_a_relay_map_loads_and_its_tests_pass(tmp_path: Path) -> None:
    """``map: {ON: 1, OFF: 0}`` and ``payload: ON`` mean the text ON (YAML 1.1 read booleans)."""
    rules, tests, index = load_mapping_tests(write(tmp_path, RELAY))
    assert [t.payload for t in tests] == ["ON", "OFF"]
    outcomes = run_mapping_tests(rules, tests, index)
    assert [o.passed for o in outcomes] == [True, True], [o.problems for o in outcomes]
    assert Mapper(rules).map("plant/r2/relay", b"OFF", 1_000_000).records[0].metrics == {
        "relay_on": 0.0
    }


def test_yes_no_on_off_are_text_and_true_false_null_are_not() -> None:
    """The YAML 1.2 core schema: only true/false (three spellings) and null/~ are special."""
    text = "a: [yes, No, on, OFF, y, n, true, False, TRUE, null, ~, '', 12:30, 2024-05-01]\n"
    data, _ = load_yaml_text(text, "t.yaml")
    assert data["a"] == [
        "yes",
        "No",
        "on",
        "OFF",
        "y",
        "n",
        True,
        False,
        True,
        None,
        None,
        "",
        "12:30",
        "2024-05-01",
    ]


def test_numbers_keep_their_value_or_are_refused_where_yaml_12_would_change_it() -> None:
    """1_000, 0x1F, 0b101, 0o17, 1e3 are numbers; 0755 (octal in 1.1, decimal in 1.2) is an
    error that says both readings and what to write."""
    data, _ = load_yaml_text("a: [1_000, 0x1F, 0b101, 0o17, 1e3, -2.5, .inf, 0]\n", "t.yaml")
    assert data["a"] == [1000, 31, 5, 15, 1000.0, -2.5, float("inf"), 0]
    with pytest.raises(ConfigError) as info:
        load_yaml_text("mode: 0755\n", "t.yaml")
    err = info.value
    assert (err.line, err.column, err.key) == (1, 7, "mode")
    assert "octal (493)" in err.detail
    assert "decimal 755" in err.detail
    assert "0o755" in err.detail


def test_a_boolean_field_written_yes_says_what_yaml_11_made_of_it(tmp_path: Path) -> None:
    """``ignore: yes`` was true under YAML 1.1; now the error says to write true."""
    text = RELAY.replace("    payload: text\n", "    payload: text\n    continue: yes\n")
    err = only(mapping_error(tmp_path, text))
    assert err.key == "rules[0].continue"
    assert "'yes' is text since YAML 1.2 (YAML 1.1 read it as true): write true" in err.detail
    assert (err.line, err.column) == (7, 15)


def test_a_number_or_boolean_where_text_is_wanted_says_to_quote_it(tmp_path: Path) -> None:
    """``payload: true`` in a test and ``device_id: 42`` name the value and say: quote it."""
    err = only(mapping_error(tmp_path, JSON_RULE.replace('"{dev}"', "42").replace("{extra}", "")))
    assert err.key == "rules[0].device_id"
    assert "YAML reads 42 as a number: write '42' in quotes for text" in err.detail
    with pytest.raises(ConfigError) as info:
        load_mapping_tests(write(tmp_path, RELAY.replace("payload: ON", "payload: true")))
    err = only(info.value)
    assert err.key == "tests[0].payload"
    assert "YAML reads true as a boolean: write 'true' in quotes for text" in err.detail


def test_a_syntax_error_has_line_column_and_a_caret_under_the_column(tmp_path: Path) -> None:
    """A bad indentation: the parser's complaint with the column, the line and a caret."""
    text = "version: 1\nrules:\n  - name: a\n    topic: x\n   device_id: y\n"
    err = mapping_error(tmp_path, text)
    assert (err.line, err.column) == (5, 4)
    assert "check the indentation" in err.detail
    assert str(err).splitlines()[1:] == [
        "  5 |    device_id: y",
        "    |    ^ column 4",
    ]


def test_a_regex_in_double_quotes_gets_the_escape_hint(tmp_path: Path) -> None:
    """``pattern: "^\\d+$"`` fails in YAML; the error says to use single quotes or ``\\\\``."""
    extra = '    metrics: {t: t}\n    timestamp: {field: t, pattern: "%d.%m.%Y \\d"}\n'
    err = mapping_error(tmp_path, JSON_RULE.replace("{extra}", extra))
    assert err.line == 7
    assert "unknown escape character 'd'" in err.detail
    assert "in double quotes a backslash starts an escape: use single quotes" in err.detail
    assert "double the backslash" in err.detail
    assert "^" in err.excerpt


@pytest.mark.parametrize(
    ("extra", "key", "suggestion", "where"),
    [
        ("    metircs: {t: t}\n", "rules[0].metircs", "metrics", (6, 5)),
        (
            "    metrics: {t: t}\n    timestamp: {field: t, fromat: unix}\n",
            "rules[0].timestamp.fromat",
            "format",
            (7, 27),
        ),
        ("    metrics: {t: {path: t, scael: 2}}\n", "rules[0].metrics.t.scael", "scale", (6, 28)),
        (
            "    metrics: {t: t}\ntests:\n  - topic: plant/a/env\n    expct: []\n",
            "tests[0].expct",
            "expect",
            (9, 5),
        ),
    ],
)
def test_an_unknown_mapping_key_suggests_the_key_meant(
    tmp_path: Path, extra: str, key: str, suggestion: str, where: tuple[int, int]
) -> None:
    """Rule keys, nested sections and test keys: did you mean, with the key's line and column."""
    err = mapping_error(tmp_path, JSON_RULE.replace("{extra}", extra))
    errors = err.errors if isinstance(err, ConfigErrors) else [err]
    [unknown] = [e for e in errors if e.key == key]
    assert f"unknown key; did you mean '{suggestion}'?" in unknown.detail
    assert (unknown.line, unknown.column) == where


def test_unknown_settings_suggest_the_setting_in_the_form_it_was_written(tmp_path: Path) -> None:
    """A file key, a --set key and a variable (single underscore too) each get their form."""
    err = settings_error(
        tmp_path,
        "mqtt:\n  hots: broker.local\n",
        environ={"METRIQO_BRIDGE_MQTT_HOST": "b", "METRIQO_BRIDGE_BATCH__LINGERS": "1"},
        overrides={"spool.max_byte": "1"},
    )
    said = {e.key: e for e in err.errors} if isinstance(err, ConfigErrors) else {}
    assert "did you mean mqtt.host?" in said["mqtt.hots"].detail
    assert (said["mqtt.hots"].line, said["mqtt.hots"].column) == (2, 3)
    assert "did you mean METRIQO_BRIDGE_MQTT__HOST?" in said["mqtt_host"].detail
    assert "did you mean METRIQO_BRIDGE_BATCH__LINGER_S?" in said["batch.lingers"].detail
    assert "did you mean spool.max_bytes?" in said["spool.max_byte"].detail


def test_a_key_of_another_section_suggests_its_full_name(tmp_path: Path) -> None:
    """``host:`` at the top of a settings file: did you mean mqtt.host."""
    err = only(settings_error(tmp_path, "host: broker.local\n"))
    assert "did you mean mqtt.host?" in err.detail


def test_settings_file_excerpts_show_keys_but_never_values(tmp_path: Path) -> None:
    """A settings error's excerpt masks values: the file may hold the token or the password."""
    text = f"api:\n  token: {SECRET}\n  tokn: {SECRET}\nmqtt:\n  password: '{PASSWORD}' x\n"
    err = settings_error(tmp_path, text)
    assert (err.line, err.column) == (5, 33)
    assert "  5 |   password: …" in str(err)
    assert PASSWORD not in str(err)
    err = only(settings_error(tmp_path, text.replace(" x\n", "\n")))
    assert err.key == "api.tokn"
    assert "did you mean api.token?" in err.detail
    assert "  3 |   tokn: …" in str(err)
    assert SECRET not in str(err) + repr(err.args)
    err = only(settings_error(tmp_path, "mqtt:\n  password: 0123\n"))
    assert "0123" not in str(err)
    assert "123" not in err.detail


def test_every_shipped_yaml_file_and_docs_example_reads_as_before(tmp_path: Path) -> None:
    """The shipped mapping file, the systemd settings example and every YAML example of the
    docs mean under YAML 1.2 what they meant under 1.1 (PyYAML's reading); the guide's relay
    example, which shows the change, passes its tests."""
    root = Path(__file__).resolve().parents[2]
    texts = {
        str(p): p.read_text(encoding="utf-8")
        for p in (root / "topic-mappings.yaml", root / "deploy/systemd/bridge.yaml")
    }
    for page in sorted((root / "docs").rglob("*.md")):
        blocks = re.findall(r"```ya?ml\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
        texts.update({f"{page}#{i}": block for i, block in enumerate(blocks)})
    compared = 0
    for name, text in texts.items():
        if "map: {ON: 1, OFF: 0}" in text:  # the guide's example of what YAML 1.2 changes
            path = tmp_path / "relay.yaml"
            path.write_text(text, encoding="utf-8")
            outcomes = run_mapping_tests(*load_mapping_tests(path))
            assert [o.passed for o in outcomes] == [True], name
            continue
        try:
            before = yaml.safe_load(text)
        except yaml.YAMLError:
            continue  # an example of a broken file
        now, _ = load_yaml_text(text, name)
        assert now == before, name
        compared += 1
    assert compared >= 15


def test_json_logs_carry_the_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """LOG_FORMAT=json: each error line has file, line, column and key, one line each."""
    monkeypatch.setenv("LOG_FORMAT", "json")
    path = write(tmp_path, JSON_RULE.replace("{extra}", "    metircs: {t: t}\n"))
    assert main(["check", str(path)]) == 78
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert (record["line"], record["column"], record["key"]) == (6, 5, "rules[0].metircs")


def test_check_warns_where_on_now_matches_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``where: {enabled: on}`` matched true under YAML 1.1 and the text "on" now: a warning."""
    extra = "    readings: {path: items, name: tag, value: v, where: {enabled: on, kind: ok}}\n"
    path = write(tmp_path, JSON_RULE.replace("{extra}", extra))
    assert main(["check", str(path)]) == 0
    [warning] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("warning:")]
    assert warning.startswith(f"warning: {path}:6: rules[0].readings.where.enabled: 'on' is text")
    assert main(["check", "--strict", str(path)]) == 78
