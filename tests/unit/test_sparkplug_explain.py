"""``explain`` on Sparkplug B payloads (hex, base64, @file) with and without their BIRTH."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson

from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.encode import EdgeNode, Metric
from tests.support.harness import run_cli

T0_MS = 1_795_680_000_000
RULES = """version: 1
rules:
  - name: sp
    topic: "spBv1.0/#"
    payload: sparkplug
    sparkplug: {separator: _}
"""


def node_messages(tmp_path: Path) -> tuple[Path, Path, str, bytes]:
    rules = tmp_path / "m.yaml"
    rules.write_text(RULES, encoding="utf-8")
    node = EdgeNode("G", "E")
    _topic, birth = node.nbirth(
        [Metric("Temp/In", DataType.FLOAT, 21.5), Metric("Count", DataType.INT16, -3)], T0_MS
    )
    birth_file = tmp_path / "birth.bin"
    birth_file.write_bytes(birth)
    topic, data = node.ndata({"Temp/In": 22.5, "Count": -4}, T0_MS + 1000)
    return rules, birth_file, topic, data


def test_explain_resolves_aliases_through_the_birth_given(tmp_path: Path) -> None:
    rules, birth, topic, data = node_messages(tmp_path)
    out = run_cli(
        "explain",
        "--mapping-file",
        str(rules),
        topic,
        "--payload-hex",
        data.hex(),
        "--birth",
        "spBv1.0/G/NBIRTH/E",
        f"@{birth}",
    )
    assert out.returncode == 0, out.stderr
    assert "alias 2 → Count (Int16 from the BIRTH): Count = -4" in out.stdout
    assert "Temp_In = 22.5" in out.stdout


def test_explain_says_an_alias_is_unknown_and_the_message_waits(tmp_path: Path) -> None:
    rules, _birth, topic, data = node_messages(tmp_path)
    encoded = base64.b64encode(data).decode()
    out = run_cli(
        "explain", "--mapping-file", str(rules), topic, "--payload-base64", encoded, "--json"
    )
    assert out.returncode == 1, out.stderr
    doc = orjson.loads(out.stdout)
    assert [m.get("unknown") for m in doc["sparkplug"]["metrics"]] == [True, True]
    assert doc["failures"][0]["reason"] == "sparkplug_unknown_alias"
    text = run_cli("explain", "--mapping-file", str(rules), topic, "--payload-base64", encoded)
    assert "parked until a BIRTH defines its aliases" in text.stdout


def test_a_bad_birth_payload_is_a_usage_error(tmp_path: Path) -> None:
    rules, _birth, topic, data = node_messages(tmp_path)
    out = run_cli(
        "explain",
        "--mapping-file",
        str(rules),
        topic,
        "--payload-hex",
        data.hex(),
        "--birth",
        "spBv1.0/G/NBIRTH/E",
        "hex:zz",
    )
    assert out.returncode == 2
    assert "not hex" in out.stderr
