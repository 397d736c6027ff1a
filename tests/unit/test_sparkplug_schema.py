"""The committed generated protobuf module is what ``sparkplug_b.proto`` compiles to, the
runtime loads it, and our plain ``DataType`` enum agrees with the proto's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import google.protobuf

from bridge.sparkplug import regenerate
from bridge.sparkplug import sparkplug_b_pb2 as pb
from bridge.sparkplug.datatypes import DataType
from tests.support import REPO

PACKAGE = REPO / "bridge" / "sparkplug"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_committed_generated_code_matches_the_proto(tmp_path: Path) -> None:
    """Regenerating (python -m bridge.sparkplug.regenerate) changes nothing: edit the .proto,
    then regenerate and commit both."""
    for fresh in regenerate.generate(tmp_path):
        committed = PACKAGE / fresh.name
        assert fresh.read_bytes() == committed.read_bytes(), (
            f"{committed.relative_to(REPO)} is stale: run python -m bridge.sparkplug.regenerate"
        )


def test_the_protobuf_lower_bound_is_the_generated_codes_version() -> None:
    """protobuf refuses generated code newer than the runtime: the dependency's lower bound is
    the gencode's version, and the installed runtime is at least that."""
    source = (PACKAGE / "sparkplug_b_pb2.py").read_text(encoding="utf-8")
    match = re.search(r"# Protobuf Python Version: ([0-9.]+)", source)
    assert match is not None
    gencode = match.group(1)
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    [pin] = [d for d in config["project"]["dependencies"] if d.startswith("protobuf")]
    assert pin == f"protobuf>={gencode},<{_version(gencode)[0] + 1}"
    assert _version(google.protobuf.__version__)[:3] >= _version(gencode)


def test_the_datatype_enum_is_the_protos() -> None:
    proto = dict(pb.DataType.items())
    ours = {t.spec_name: int(t) for t in DataType}
    assert ours == proto
    assert len(ours) == 35
