"""Template filters ``segment`` and ``re`` (and the simple ones around them), the check errors for
unknown filters and stray braces, and properties of the compiled filters (hypothesis)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cli.main import main
from bridge.errors import ConfigError, PayloadError
from bridge.mapping.filters import MAX_INPUT, split_filters
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.mapping.templates import compile_template
from tests.support import REPO

PROPS = settings(derandomize=True, database=None, deadline=None, max_examples=200)
RECV_US = 1_795_681_920_000_000


def render(template: str, tag: str) -> str:
    return compile_template(template, {"tag"}, payload_fields=False).render({"tag": tag})


def config_error(rules_yaml: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_mappings_text("version: 1\nrules:\n" + rules_yaml, "file.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("template", "tag", "out"),
    [
        ("{tag|segment:.:-1}", "Plant.Line3.Temp", "Temp"),
        ("{tag|segment:.:0}", "Plant.Line3.Temp", "Plant"),
        ("{tag|segment:.:0:-1}", "Plant.Line3.Temp", "Plant.Line3"),
        ("{tag|segment:.:1:}", "Plant.Line3.Temp", "Line3.Temp"),
        ("{tag|segment:/:-2|lower}", "a/B/c", "b"),
        ("{tag|segment:__:1}", "a__b__c", "b"),
        (r"{tag|re:^Line(\d+)\.:1}", "Line12.Temp", "12"),
        ("{tag|re:(?P<unit>[a-z]+)$:unit}", "tank7_level_cm", "cm"),
        ("{tag|re:_(level|temp)_:1|upper}", "tank7_level_cm", "LEVEL"),
        ("{tag|re:.*:0}", "whole", "whole"),
        ("{tag|trim|segment:-:-1}", "  a-b ", "b"),
    ],
)
def test_filters_pick_parts_of_names(template: str, tag: str, out: str) -> None:
    """segment picks from either end by a separator, re takes a numbered or named group, and
    filters chain left to right."""
    assert render(template, tag) == out


@pytest.mark.parametrize(
    ("template", "tag", "detail"),
    [
        ("{tag|segment:.:3}", "a.b", "has no segment 3"),
        ("{tag|segment:.:-3}", "a.b", "has no segment -3"),
        ("{tag|segment:.:5:}", "a.b", "has no segments 5:None"),
        (r"{tag|re:^Line(\d+):1}", "Hall2", "does not match"),
        ("{tag|re:(a)|(b):1}", "b", "does not match"),
    ],
)
def test_a_filter_miss_fails_the_template(template: str, tag: str, detail: str) -> None:
    """A segment that does not exist or a pattern that does not match is missing_field, never a
    half-built id."""
    with pytest.raises(PayloadError) as info:
        render(template, tag)
    assert info.value.reason == "missing_field"
    assert detail in str(info.value)


def test_re_refuses_inputs_over_the_cap() -> None:
    """The regex runs on at most MAX_INPUT characters: its cost stays bounded."""
    with pytest.raises(PayloadError):
        render("{tag|re:x:0}", "x" * (MAX_INPUT + 1))


@pytest.mark.parametrize(
    ("pattern", "refused"),
    [
        ("(a+)+", True),
        ("(a*)*", True),
        ("(?:a+)+", True),
        ("((ab)+)+", True),
        (r"(\w+\.)+", True),
        ("(x(a+)y)*", True),
        ("(?:ab)+", False),
        (r"(?P<n>\d)+", False),
        (r"(\+1)+", False),
        (r"([+-]\d)+", False),
        ("(a|b)*", False),
        ("((a)(b))+", False),
        (r"^Line(\d+)\.", False),
    ],
)
def test_only_repeats_nested_in_repeated_groups_are_refused(pattern: str, refused: bool) -> None:
    """The exponential shape is refused at any depth; escapes, classes and group openers are not
    taken for repeats."""
    template = f"{{tag|re:{pattern}:0}}"
    if refused:
        with pytest.raises(ValueError, match="a repeated group holds a repeat"):
            compile_template(template, {"tag"}, payload_fields=False)
    else:
        compile_template(template, {"tag"}, payload_fields=False)


def test_split_filters_keeps_alternation_inside_re() -> None:
    """'|' inside an re filter is alternation: the filter runs to its ':GROUP'."""
    assert split_filters("re:(a|b):1|upper") == ["re:(a|b):1", "upper"]
    assert split_filters("lower|segment:.:-1") == ["lower", "segment:.:-1"]


@pytest.mark.parametrize(
    ("device_id", "message"),
    [
        ("'{x|lowr}'", "unknown template filter 'lowr'; did you mean 'lower'?"),
        ("'{x|segmnt:.:1}'", "did you mean 'segment'?"),
        ("'{x|segment:.}'", "write it as segment:SEP:INDEX or segment:SEP:FROM:TO"),
        ("'{x|segment:.:last}'", "INDEX, FROM and TO are whole numbers"),
        ("'{x|re:(a:1}'", "missing ), unterminated subpattern"),
        ("'{x|re:(a)b:2}'", "no group 2 in the pattern"),
        ("'{x|re:(?P<n>a):m}'", "no group 'm' (named groups: n)"),
        ("'{x|re:(a+)+:1}'", "a repeated group holds a repeat"),
        ("'{x|re:ab}'", "write it as re:PATTERN:GROUP"),
        ("'{x|upper:1}'", "upper (it takes no arguments)"),
        ("'{x'", "unbalanced '{' in template '{x'"),
    ],
)
def test_bad_filters_are_check_errors_with_file_line_and_key(device_id: str, message: str) -> None:
    """Every bad filter or brace is refused at load time, naming file, line and key."""
    err = config_error(
        f"  - name: r\n    topic: 'a/{{x}}'\n    device_id: {device_id}\n    metrics: {{t: t}}\n"
    )
    assert "file.yaml:5: rules[0].device_id: " in err
    assert message in err


@pytest.mark.parametrize(
    ("block", "line", "key"),
    [
        (
            "    readings: {name: n, value: v, prefix: '{measurement}_'}\n",
            6,
            "rules[0].readings.prefix",
        ),
        (
            "    collect: {path: '', rename: {t: '{measurement}_x'}}\n",
            6,
            "rules[0].collect.rename.t",
        ),
    ],
)
def test_braces_where_templates_are_not_allowed_are_check_errors(
    block: str, line: int, key: str
) -> None:
    """A readings prefix or a renamed name is literal text: a template written there is
    refused (collect.prefix is a template: tests/unit/test_mapping_collect_naming.py)."""
    err = config_error("  - name: r\n    topic: 'a/{x}'\n    device_id: '{x}'\n" + block)
    assert f"file.yaml:{line}: {key}: " in err
    assert "templates are not allowed here" in err


def test_filters_work_in_device_ids_and_metric_names_end_to_end_of_the_mapper() -> None:
    """A rule over OPC-UA-like tags: device from the tag's head, metric from its last segment."""
    m = Mapper(
        load_mappings_text(
            "version: 1\nrules:\n"
            "  - name: tags\n    topic: 'opc/{tag}'\n"
            "    device_id: '{tag|segment:.:0:-1|replace:.:-|lower}'\n"
            "    payload: number\n    metric: '{tag|segment:.:-1|lower}'\n",
            "file.yaml",
        )
    )
    mapped = m.map("opc/Plant1.Line3.Temp", b"21.5", RECV_US)
    assert [(r.device_id, r.metrics) for r in mapped.records] == [("plant1-line3", {"temp": 21.5})]
    missing = m.map("opc/Temp", b"1", RECV_US)
    assert [f.reason for f in missing.failures] == ["missing_field"]


# Any separator without ":" (which separates the filter's own arguments).
_SEP = st.sampled_from([".", "/", "_", "-", "__", ";"])
_WORD = st.text(st.characters(categories=("L", "N")), min_size=0, max_size=6)


@PROPS
@given(_SEP, st.lists(_WORD, min_size=1, max_size=6), st.integers(-8, 8))
def test_segment_index_is_pythons_list_index(sep: str, words: list[str], index: int) -> None:
    """segment:SEP:I is value.split(SEP)[I], and a miss exactly when that index does not exist."""
    value = sep.join(words)
    template = f"{{tag|segment:{sep}:{index}}}"
    if -len(words) <= index < len(words):
        assert render(template, value) == words[index]
    else:
        with pytest.raises(PayloadError):
            render(template, value)


@PROPS
@given(_SEP, st.lists(_WORD, min_size=1, max_size=6))
def test_head_and_last_segment_rebuild_the_value(sep: str, words: list[str]) -> None:
    """segment:SEP:0:-1 + SEP + segment:SEP:-1 gives back the value (when there are two parts)."""
    value = sep.join(words)
    last = render(f"{{tag|segment:{sep}:-1}}", value)
    assert last == words[-1]
    if len(words) > 1:
        head = render(f"{{tag|segment:{sep}:0:-1}}", value)
        assert head + sep + last == value


@PROPS
@given(st.text(st.characters(codec="utf-8"), max_size=40))
def test_re_group_is_pythons_search_group(value: str) -> None:
    """re:PATTERN:GROUP returns re.search's group, or fails as missing_field when it is None."""
    pattern = r"(\d+)([a-z]*)"
    found = re.search(pattern, value)
    template = f"{{tag|re:{pattern}:2}}"
    if found is not None:
        assert render(template, value) == found.group(2)
    else:
        with pytest.raises(PayloadError):
            render(template, value)


@PROPS
@given(st.text(max_size=30))
def test_any_filter_text_compiles_or_is_a_value_error(chain: str) -> None:
    """Whatever is written after '|', compiling gives filters or a ValueError, and the filters
    then give text or a missing_field failure: never another exception."""
    try:
        template = compile_template("{tag|" + chain + "}", {"tag"}, payload_fields=False)
    except ValueError:
        return
    reason = None
    try:
        template.render({"tag": "Plant.Line3.Temp"})
    except PayloadError as exc:
        reason = exc.reason
    assert reason in (None, "missing_field")


def test_the_guides_tag_example_passes_its_tests_and_its_typo_is_the_shown_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The opc-tags example of docs/guide/mapping-file.md passes check --strict and test, and
    the misspelt filter gives the error the guide prints."""
    page = (REPO / "docs" / "guide" / "mapping-file.md").read_text(encoding="utf-8")
    block = next(b.split("```")[0] for b in page.split("```yaml\n")[1:] if "opc-tags" in b)
    path = tmp_path / "tags.yaml"
    path.write_text("version: 1\n" + block, encoding="utf-8")
    assert main(["check", "--strict", str(path)]) == 0
    assert main(["test", str(path)]) == 0
    assert " 0 failed" in capsys.readouterr().out
    path.write_text("version: 1\n" + block.replace("segment", "segmnt", 1), encoding="utf-8")
    assert main(["check", str(path)]) == 78
    shown = page.split("$ metriqo-bridge check tags.yaml\n")[1].split("\n")[0]
    assert shown.replace("tags.yaml", str(path)) in capsys.readouterr().err
