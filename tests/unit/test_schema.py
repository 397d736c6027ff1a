"""Unit tests of the JSON Schema of topic-mappings.yaml (``metriqo-bridge schema``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from bridge.cli.main import main
from bridge.mapping.schema import DIALECT, REPO_PATH, mapping_schema
from tests.support import REPO

# Keywords draft-07 and draft 2020-12 read alike: the Red Hat YAML language server validates
# with draft-07 rules, so the schema must not depend on newer keywords.
_DRAFT_07_KEYWORDS = frozenset(
    {
        "$schema", "$defs", "$ref", "title", "description", "default", "type", "properties",
        "required", "additionalProperties", "anyOf", "enum", "const", "items", "minItems",
        "maxItems", "minLength", "maxLength", "minimum", "maximum", "pattern", "minProperties",
        "maxProperties", "exclusiveMinimum", "exclusiveMaximum",
    }
)  # fmt: skip


def _resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` ("#/$defs/Name") to its definition."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return _resolve(target, schema)


def _unknown_keys(data: object, node: dict[str, Any], schema: dict[str, Any], at: str) -> list[str]:
    """Key paths in ``data`` that the schema node does not declare (a tiny structural check)."""
    node = _resolve(node, schema)
    branches = [_resolve(b, schema) for b in node.get("anyOf", [])]
    if branches:
        fitting = [b for b in branches if _fits_type(data, b)]
        return _unknown_keys(data, fitting[0], schema, at) if fitting else [f"{at} (type)"]
    out: list[str] = []
    if isinstance(data, dict):
        properties = node.get("properties")
        extra = node.get("additionalProperties", True)
        for key, value in data.items():
            if properties is not None and key in properties:
                out += _unknown_keys(value, properties[key], schema, f"{at}.{key}")
            elif isinstance(extra, dict):
                out += _unknown_keys(value, extra, schema, f"{at}.{key}")
            elif extra is False:
                out.append(f"{at}.{key}")
    elif isinstance(data, list) and "items" in node:
        for i, item in enumerate(data):
            out += _unknown_keys(item, node["items"], schema, f"{at}[{i}]")
    return out


def _fits_type(data: object, node: dict[str, Any]) -> bool:
    kinds: dict[str, type] = {"object": dict, "array": list, "string": str, "null": type(None)}
    wanted = node.get("type")
    if wanted in kinds:
        return isinstance(data, kinds[wanted])
    return "$ref" in node or "properties" in node or wanted is None or not isinstance(data, dict)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """The generated schema."""
    return mapping_schema()


def test_the_shipped_mapping_file_uses_only_keys_the_schema_declares(
    schema: dict[str, Any],
) -> None:
    """Every key of the shipped topic-mappings.yaml (top level, rule, nested) is in the schema."""
    data = yaml.safe_load((REPO / "topic-mappings.yaml").read_text())
    assert set(data) <= set(schema["properties"])
    rule_properties = _resolve(schema["properties"]["rules"]["items"], schema)["properties"]
    for rule in data["rules"]:
        assert set(rule) <= set(rule_properties), rule["name"]
    assert _unknown_keys(data, schema, schema, "") == []


def test_the_key_check_finds_a_misspelt_key(schema: dict[str, Any]) -> None:
    """The structural check above is not vacuous: a misspelt rule or timestamp key is found."""
    data = {
        "version": 1,
        "rules": [{"name": "a", "topic": "t", "metircs": {}, "timestamp": {"feild": "ts"}}],
        "extra": True,
    }
    assert sorted(_unknown_keys(data, schema, schema, "")) == [
        ".extra",
        ".rules[0].metircs",
        ".rules[0].timestamp.feild",
    ]


def test_rules_and_every_object_forbid_unknown_keys(schema: dict[str, Any]) -> None:
    """Like the loader (extra="forbid"), the schema rejects unknown keys everywhere."""
    rule = _resolve(schema["properties"]["rules"]["items"], schema)
    assert rule["additionalProperties"] is False
    assert {"name", "topic", "continue"} <= set(rule["properties"])  # the YAML spelling
    assert "continue_" not in rule["properties"]
    assert schema["additionalProperties"] is False
    for name, definition in schema["$defs"].items():
        assert definition["additionalProperties"] is False, name


def test_dialect_title_descriptions_and_draft_07_keywords(schema: dict[str, Any]) -> None:
    """It declares draft 2020-12, has a title and key descriptions, and uses draft-07 keywords."""
    assert (schema["$schema"], schema["title"]) == (DIALECT, "metriqo-bridge topic-mappings.yaml")
    assert "first rule" in schema["properties"]["rules"]["description"]
    assert (
        "receive_time"
        in schema["$defs"]["TimestampSpec"]["properties"]["on_invalid"]["description"]
    )

    def keywords(node: object) -> set[str]:
        if isinstance(node, list):
            return set().union(*(keywords(n) for n in node))
        if not isinstance(node, dict):
            return set()
        found = set(node)
        for key, value in node.items():
            if key in ("properties", "$defs"):
                found |= set().union(*(keywords(v) for v in value.values()))
            elif key != "default":
                found |= keywords(value)
        return found

    assert keywords(schema) <= _DRAFT_07_KEYWORDS


def test_the_committed_schema_file_is_up_to_date(schema: dict[str, Any]) -> None:
    """deploy/topic-mappings.schema.json is what the models generate now."""
    committed = orjson.loads((REPO / REPO_PATH).read_bytes())
    assert committed == schema, (
        f"{REPO_PATH} is stale; regenerate it with: metriqo-bridge schema --output {REPO_PATH}"
    )


def test_schema_command_prints_or_writes_the_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], schema: dict[str, Any]
) -> None:
    """schema prints the schema; --output writes the same bytes to a file; a bad path exits 1."""
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert orjson.loads(printed) == schema
    out = tmp_path / "s.json"
    assert main(["schema", "--output", str(out)]) == 0
    assert out.read_text() == printed
    assert capsys.readouterr().out == ""
    assert main(["schema", "--output", str(tmp_path / "missing" / "s.json")]) == 1
    assert "missing" in capsys.readouterr().err
