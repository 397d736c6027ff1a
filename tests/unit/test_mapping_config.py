"""Unit tests of topic-mappings.yaml validation: every error names file, line and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigError, ConfigErrors
from bridge.mapping.loader import load_mappings, load_mappings_text

GOOD_RULE = """\
version: 1
rules:
  - name: env
    topic: plant/{site}/{device}/env
    device_id: "{site}-{device}"
    metrics:
      temp: sensors.temp
"""


def config_error(text: str) -> ConfigError:
    """The ConfigError raised for mapping file ``text`` loaded as 'file.yaml'."""
    with pytest.raises(ConfigError) as info:
        load_mappings_text(text, "file.yaml")
    return info.value


def rule(body: str, *, name: str = "r1", topic: str = "plant/{site}/{device}") -> str:
    """A one-rule file whose rule body starts on line 6 (after name, topic, device_id)."""
    return (
        "version: 1\n"
        "rules:\n"
        f"  - name: {name}\n"
        f"    topic: {topic}\n"
        '    device_id: "{device}"\n' + body
    )


def test_a_valid_file_compiles_into_rules() -> None:
    """A valid file compiles into runtime rules with compiled topic, templates and paths."""
    (compiled,) = load_mappings_text(GOOD_RULE, "file.yaml")
    assert compiled.name == "env"
    assert compiled.topic.subscription == "plant/+/+/env"
    assert compiled.device_id.render({"site": "n", "device": "d"}) == "n-d"
    assert [(name, path.segments) for name, path in compiled.metrics] == [
        ("temp", ("sensors", "temp"))
    ]
    assert compiled.payload == "json"
    assert compiled.ts_field is None
    assert compiled.reject_on_error is False


def test_unknown_key_in_a_rule_names_line_and_key() -> None:
    """A misspelt key ('metircs') is reported at its own line with its key path."""
    err = config_error(rule("    metircs: {temp: t}\n"))
    assert "file.yaml:6: rules[0].metircs: unknown key" in str(err)


def test_unknown_top_level_key_is_reported() -> None:
    """An unknown key at the top level is reported at its line."""
    err = config_error(GOOD_RULE + "rulez: []\n")
    assert "file.yaml:8: rulez: unknown key" in str(err)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("    metrics: [temp, hum]\n", "file.yaml:6: rules[0].metrics: "),
        ("    metrics: {temp: 5}\n", "file.yaml:6: rules[0].metrics.temp: "),
        ("    metrics: {temp: t}\n    on_error: maybe\n", "file.yaml:7: rules[0].on_error: "),
        ("    metrics: {temp: t}\n    payload: xml\n", "file.yaml:7: rules[0].payload: "),
        (
            "    metrics: {temp: t}\n    timestamp:\n      field: ts\n      format: epoch_h\n",
            "file.yaml:9: rules[0].timestamp.format: ",
        ),
        ("    metrics: {temp: t}\n    timestamp: ts\n", "file.yaml:7: rules[0].timestamp: "),
    ],
)
def test_wrong_types_name_line_and_key_path(body: str, where: str) -> None:
    """A value of the wrong type or outside its allowed set is reported at its line and path."""
    assert where in str(config_error(rule(body)))


def test_wrong_version_type_is_refused() -> None:
    """'version' must be the integer 1; a string is refused at its line."""
    err = config_error(GOOD_RULE.replace("version: 1", 'version: "1"'))
    assert "file.yaml:1: version: " in str(err)


def test_rules_must_be_a_non_empty_list() -> None:
    """An empty rules list is refused at the 'rules' line."""
    assert "file.yaml:2: rules: " in str(config_error("version: 1\nrules: []\n"))


def test_missing_required_key_points_at_its_rule() -> None:
    """A rule without device_id is reported at the rule's first line with the missing key."""
    text = "version: 1\nrules:\n  - name: r1\n    topic: a/b\n    metrics: {v: v}\n"
    assert "file.yaml:3: rules[0].device_id: a rule needs 'device_id'" in str(config_error(text))


def test_invalid_rule_name_is_refused() -> None:
    """A rule name with spaces or slashes is refused at its line."""
    err = config_error(rule("    metrics: {temp: t}\n", name='"bad name/x"'))
    assert "file.yaml:3: rules[0].name: " in str(err)


@pytest.mark.parametrize(
    ("device_id", "missing"),
    [('"{site}"', "{site}"), ('"{device}-{line}"', "{line}"), ('"{}"', "{}")],
)
def test_template_capture_not_in_topic_is_refused(device_id: str, missing: str) -> None:
    """A template naming a capture the topic does not have is reported with the known captures."""
    text = (
        "version: 1\nrules:\n  - name: r1\n    topic: plant/+/{device}\n"
        f"    device_id: {device_id}\n    metrics: {{v: v}}\n"
    )
    message = str(config_error(text))
    assert "file.yaml:5: rules[0].device_id: " in message
    assert f"template uses {missing}" in message
    assert "captures: device" in message


def test_unbalanced_template_brace_is_refused() -> None:
    """A stray '{' or '}' in a template is reported."""
    text = rule("    metrics: {v: v}\n").replace('"{device}"', '"x}{device}"')
    assert "file.yaml:5: rules[0].device_id: unbalanced '}'" in str(config_error(text))


def test_number_metric_template_capture_is_checked() -> None:
    """A number rule's metric template may only use the topic's captures."""
    err = config_error(rule('    payload: number\n    metric: "{quantity}"\n'))
    assert "file.yaml:7: rules[0].metric: template uses {quantity}" in str(err)


def test_json_rule_without_metrics_is_refused() -> None:
    """A json rule needs 'metrics'; the error points at the rule and names the key."""
    err = config_error(rule(""))
    assert "file.yaml:3: rules[0].metrics: a json rule needs 'metrics" in str(err)
    err = config_error(rule("    metrics: {}\n"))
    assert "file.yaml:6: rules[0].metrics: a json rule needs 'metrics" in str(err)


def test_json_rule_with_metric_is_refused() -> None:
    """'metric' belongs to number rules; on a json rule it is an error at its line."""
    err = config_error(rule("    metrics: {v: v}\n    metric: v\n"))
    assert "file.yaml:7: rules[0].metric: 'metric' is for plain payloads" in str(err)


def test_number_rule_with_timestamp_is_refused() -> None:
    """A plain-number rule has no field to read a time from, so 'timestamp' is an error."""
    err = config_error(rule("    payload: number\n    metric: v\n    timestamp: {field: ts}\n"))
    assert "file.yaml:8: rules[0].timestamp.field: a plain payload has no field" in str(err)


def test_number_rule_needs_metric_and_refuses_metrics() -> None:
    """A number rule without 'metric' but with 'metrics' reports both problems."""
    err = config_error(rule("    payload: number\n    metrics: {v: v}\n"))
    assert isinstance(err, ConfigErrors)
    message = str(err)
    assert "file.yaml:7: rules[0].metrics: 'metrics' is for payload: json" in message
    assert "file.yaml:3: rules[0].metric: a number rule needs 'metric" in message


@pytest.mark.parametrize("path", ["a..b", ".a", "a."])
def test_field_path_with_an_empty_segment_is_refused(path: str) -> None:
    """A metric path with an empty segment is reported at the metric's line and path."""
    err = config_error(rule(f'    metrics:\n      v: "{path}"\n'))
    assert "file.yaml:7: rules[0].metrics.v: field path" in str(err)


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("a/#/b", "'#' is only allowed as the last level"),
        ("+x", "mixes wildcard characters"),
        ('"a/{d}y"', "mixes wildcard characters"),
        ('"{d}/{d}"', "appears twice"),
    ],
)
def test_invalid_topic_filter_is_refused(topic: str, message: str) -> None:
    """An invalid topic filter is reported at the topic line with the parser's reason."""
    text = f"version: 1\nrules:\n  - name: r1\n    topic: {topic}\n    device_id: x\n"
    text += "    metrics: {v: v}\n"
    err = str(config_error(text))
    assert "file.yaml:4: rules[0].topic: " in err
    assert message in err


def test_duplicate_rule_names_are_refused() -> None:
    """A second rule with an already used name is reported at its name line."""
    text = GOOD_RULE + "  - name: env\n    topic: other/{device}\n    device_id: '{device}'\n"
    text += "    metrics: {v: v}\n"
    err = config_error(text)
    assert "file.yaml:8: rules[1].name: duplicate rule name (also rule 0)" in str(err)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file_is_refused_naming_the_file(text: str) -> None:
    """An empty mapping file is an error that names the file and says what is expected."""
    err = config_error(text)
    assert str(err).startswith("file.yaml")
    assert "file is empty" in str(err)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("version: 1\nrules:\n  - name: r1\n    topic: [a\n    device_id: x\n", 5),
        ("version: 1\nrules:\n  - name: r1\n   topic: a\n", 4),
        ('version: 1\nrules: "unterminated\n', 2),  # where the quote was opened
        ("version: 1\n\tbad: 1\n", 2),
    ],
)
def test_yaml_syntax_error_names_the_line(text: str, line: int) -> None:
    """A YAML syntax error names file and line of the problem."""
    err = config_error(text)
    assert f"file.yaml:{line}: YAML syntax error" in str(err)
    assert err.line == line


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            'version: 1\nrules: !!python/object/apply:os.system ["echo pwned"]\n',
            "file.yaml:2: rules",
        ),
        (
            "version: 1\nrules:\n  - name: !!python/object/apply:os.system echo\n",
            "file.yaml:3: rules[0].name",
        ),
        ("version: 1\nrules: !!python/name:os.system\n", "file.yaml:2: rules"),
        ("version: 1\nrules: !!set {a, b}\n", "file.yaml:2: rules"),
    ],
)
def test_python_and_other_tags_are_refused(text: str, where: str) -> None:
    """Object-constructing and non-plain tags are refused before anything is built."""
    err = str(config_error(text))
    assert where in err
    assert "not allowed" in err or "unsupported YAML value" in err


def test_alias_bomb_is_refused() -> None:
    """A 'billion laughs' alias bomb is refused (aliases are not allowed at all)."""
    lines = ["version: 1", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    err = config_error("\n".join(lines) + "\n")
    assert "YAML aliases (*name) are not allowed" in str(err)
    assert "file.yaml:" in str(err)
    assert "l1[0]" in str(err)


def test_alias_as_a_mapping_value_names_its_line() -> None:
    """An alias used as a mapping value is reported at that key's line and path."""
    text = GOOD_RULE + "extra: &x 1\nmore: *x\n"
    assert "file.yaml:9: more: YAML aliases" in str(config_error(text))


def test_alias_in_a_sequence_names_the_line_of_the_alias() -> None:
    """An alias used as a list item is reported at the line where the alias is written."""
    text = "version: 1\na: &a [x, x]\nb:\n  - *a\n"
    assert "file.yaml:4: b[0]: YAML aliases" in str(config_error(text))


@pytest.mark.parametrize(
    "text",
    ["[" * 5000 + "]" * 5000, "a:\n" + "".join("  " * i + "b:\n" for i in range(1, 3000))],
    ids=["flow", "block"],
)
def test_deeply_nested_yaml_is_a_config_error(text: str) -> None:
    """A pathologically nested file is refused as a ConfigError naming the file, not a crash."""
    with pytest.raises(ConfigError, match=r"^file\.yaml"):
        load_mappings_text(text, "file.yaml")


def test_merge_keys_are_refused() -> None:
    """YAML merge keys ('<<') are refused (they need anchors and aliases)."""
    text = "version: 1\nbase: &b {device_id: x}\nrules:\n  - <<: *b\n    name: r1\n"
    assert "not allowed" in str(config_error(text))


def test_duplicate_key_is_refused_at_the_second_occurrence() -> None:
    """A key written twice in one mapping is reported at the second occurrence."""
    text = rule("    metrics: {v: v}\n    device_id: other\n")
    assert "file.yaml:7: rules[0].device_id: duplicate key" in str(config_error(text))
    top = GOOD_RULE + "version: 1\n"
    assert "file.yaml:8: version: duplicate key" in str(config_error(top))


def test_all_errors_of_a_file_are_reported_together() -> None:
    """Several independent errors in one file are all reported in one ConfigErrors."""
    text = """\
version: 1
rules:
  - name: bad-topic
    topic: a/#/b
    device_id: x
    metrics: {v: v}
  - name: dup
    topic: d/{dev}
    device_id: "{site}"
    metrics: {v: v}
  - name: dup
    topic: n/{dev}
    payload: number
    metric: v
    device_id: "{dev}"
    timestamp: {field: t}
"""
    err = config_error(text)
    assert isinstance(err, ConfigErrors)
    assert str(err) == "\n".join(str(e) for e in err.errors)  # each with its excerpt
    lines = [e.headline for e in err.errors]
    assert len(lines) == 4
    assert lines[0].startswith("file.yaml:4: rules[0].topic: ")
    assert lines[1].startswith("file.yaml:9: rules[1].device_id: ")
    assert lines[2].startswith("file.yaml:11: rules[2].name: duplicate rule name")
    assert lines[3].startswith("file.yaml:16: rules[2].timestamp.field: ")
    assert [(e.file, e.line) for e in err.errors] == [
        ("file.yaml", 4),
        ("file.yaml", 9),
        ("file.yaml", 11),
        ("file.yaml", 16),
    ]


def test_schema_errors_of_several_rules_are_reported_together() -> None:
    """Structural errors in different rules are all listed, each with its own line."""
    text = rule("    metircs: {v: v}\n") + "  - name: r2\n    topic: x\n    device_id: y\n"
    text += "    metrics: {v: v}\n    on_eror: reject_message\n"
    err = config_error(text)
    assert isinstance(err, ConfigErrors)
    message = str(err)
    assert "file.yaml:6: rules[0].metircs: unknown key" in message
    assert "file.yaml:11: rules[1].on_eror: unknown key" in message


def test_errors_from_a_file_name_its_path(tmp_path: Path) -> None:
    """load_mappings reports errors with the file's path and line."""
    path = tmp_path / "topic-mappings.yaml"
    path.write_text(rule("    metircs: {v: v}\n"), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}:6: rules\[0\]\.metircs: unknown key"):
        load_mappings(path)


def test_file_problems_name_the_file(tmp_path: Path) -> None:
    """A missing file, a directory and a non-UTF-8 file are errors naming the path."""
    with pytest.raises(ConfigError, match="file not found") as info:
        load_mappings(tmp_path / "missing.yaml")
    assert str(tmp_path / "missing.yaml") in str(info.value)
    with pytest.raises(ConfigError, match="is a directory"):
        load_mappings(tmp_path)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"version: 1\nrules: \xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 18\)"):
        load_mappings(latin1)


def test_a_valid_file_loads_from_disk(tmp_path: Path) -> None:
    """load_mappings compiles a valid file on disk."""
    path = tmp_path / "topic-mappings.yaml"
    path.write_text(GOOD_RULE, encoding="utf-8")
    assert [r.name for r in load_mappings(path)] == ["env"]
