"""``collect`` naming: the separator between nested keys and a prefix that is a template over
the topic's captures (issue 16, item 6)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config.yamlfile import load_yaml_text
from bridge.errors import ConfigError
from bridge.mapping.loader import compile_mappings, load_mappings_text
from bridge.mapping.mapper import Mapped, Mapper
from bridge.mapping.selftest import run_mapping_tests
from bridge.mapping.spec import MappingFile
from tests.support import REPO

RECV_US = 1_795_681_920_000_000

TELEGRAF = """version: 1
rules:
  - name: telegraf
    topic: "telegraf/{host}/{measurement}"
    device_id: "{host}"
    collect: COLLECT
"""


def mapper(collect: str) -> Mapper:
    return Mapper(load_mappings_text(TELEGRAF.replace("COLLECT", collect), "m.yaml"))


def metrics(m: Mapped) -> dict[str, float]:
    assert not m.failures, m.failures
    assert len(m.records) == 1
    return m.records[0].metrics


def config_error(collect: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_mappings_text(TELEGRAF.replace("COLLECT", collect), "m.yaml")
    return str(info.value)


DOC = json.dumps({"fields": {"usage_idle": 97.5, "io": {"read": 3, "write": 4}}}).encode()


def test_names_use_dots_by_default() -> None:
    got = metrics(mapper("{path: fields}").map("telegraf/h1/cpu", DOC, RECV_US))
    assert got == {"usage_idle": 97.5, "io.read": 3, "io.write": 4}


def test_separator_joins_nested_keys() -> None:
    got = metrics(mapper('{path: fields, separator: "_"}').map("telegraf/h1/cpu", DOC, RECV_US))
    assert got == {"usage_idle": 97.5, "io_read": 3, "io_write": 4}


def test_prefix_is_a_template_over_the_captures() -> None:
    m = mapper('{path: fields, prefix: "{measurement}_", separator: "_"}')
    got = metrics(m.map("telegraf/h1/cpu", DOC, RECV_US))
    assert got == {"cpu_usage_idle": 97.5, "cpu_io_read": 3, "cpu_io_write": 4}
    other = m.map("telegraf/h1/disk", DOC, RECV_US)
    assert metrics(other) == {"disk_usage_idle": 97.5, "disk_io_read": 3, "disk_io_write": 4}


def test_prefix_template_takes_filters() -> None:
    m = mapper('{path: fields, prefix: "{measurement|upper}."}')
    assert "CPU.io.read" in metrics(m.map("telegraf/h1/cpu", DOC, RECV_US))


def test_globs_and_rename_see_the_dotted_path_whatever_the_separator() -> None:
    collect = (
        '{path: fields, separator: "_", include: ["io.*"], rename: {io.read: bytes_in},'
        ' prefix: "{measurement}_"}'
    )
    got = metrics(mapper(collect).map("telegraf/h1/disk", DOC, RECV_US))
    assert got == {"disk_bytes_in": 3, "disk_io_write": 4}


def test_a_literal_prefix_is_unchanged() -> None:
    got = metrics(mapper('{path: fields, prefix: "env_"}').map("telegraf/h1/cpu", DOC, RECV_US))
    assert set(got) == {"env_usage_idle", "env_io.read", "env_io.write"}


def test_an_unknown_capture_in_the_prefix_is_a_check_error_with_a_suggestion() -> None:
    text = config_error('{path: fields, prefix: "{measurment}_"}')
    assert "m.yaml:6: rules[0].collect.prefix:" in text
    assert "did you mean 'measurement'?" in text


def test_a_payload_field_in_the_prefix_is_a_check_error() -> None:
    text = config_error('{path: fields, prefix: "{$name}_"}')
    assert "rules[0].collect.prefix" in text
    assert "payload fields" in text


def test_an_unbalanced_brace_in_the_prefix_is_a_check_error() -> None:
    assert "unbalanced" in config_error('{path: fields, prefix: "{measurement_"}')


def test_an_empty_separator_is_a_check_error() -> None:
    assert "rules[0].collect.separator" in config_error('{path: fields, separator: ""}')


_KEY = st.text(alphabet="abcxyz019", min_size=1, max_size=6)
_TREE = st.recursive(
    st.integers(-1000, 1000),
    lambda children: st.dictionaries(_KEY, children, min_size=1, max_size=4),
    max_leaves=12,
)


def _leaves(node: object, keys: tuple[str, ...] = ()) -> dict[tuple[str, ...], float]:
    if isinstance(node, dict):
        out: dict[tuple[str, ...], float] = {}
        for k, v in node.items():
            out.update(_leaves(v, (*keys, k)))
        return out
    return {keys: float(node)}  # type: ignore[arg-type]


@settings(max_examples=150, derandomize=True, database=None, deadline=None)
@given(
    tree=st.dictionaries(_KEY, _TREE, min_size=1, max_size=4),
    separator=st.sampled_from(["_", "-", ".", "__"]),
    measurement=st.from_regex(re.compile(r"[a-z][a-z0-9]{0,7}"), fullmatch=True),
)
def test_every_leaf_is_named_prefix_plus_keys_joined_by_the_separator(
    tree: dict[str, object], separator: str, measurement: str
) -> None:
    """Each numeric leaf becomes exactly one metric, named ``<measurement>_`` + its keys joined
    by the separator (when two paths join to one name, the later value wins, as before)."""
    m = mapper(f'{{path: fields, prefix: "{{measurement}}_", separator: "{separator}"}}')
    got = m.map(f"telegraf/h1/{measurement}", json.dumps({"fields": tree}).encode(), RECV_US)
    want: dict[str, float] = {}
    for keys, value in _leaves(tree).items():
        want[f"{measurement}_" + separator.join(keys)] = value
    assert metrics(got) == want


def test_the_guides_telegraf_example_passes_its_tests() -> None:
    """The collect example of docs/guide/mapping-file.md is a whole file whose tests pass."""
    page = (REPO / "docs" / "guide" / "mapping-file.md").read_text(encoding="utf-8")
    blocks = [b.split("```")[0] for b in page.split("```yaml\n")[1:]]
    (block,) = [b for b in blocks if "name: telegraf" in b]
    data, index = load_yaml_text(block, "mapping-file.md")
    rules = compile_mappings(data, index)
    tests = MappingFile.model_validate(data).tests or []
    assert len(tests) == 1
    outcomes = run_mapping_tests(rules, tests, index)
    assert [o.problems for o in outcomes] == [[]]
