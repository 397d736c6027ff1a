"""The example files shipped inside the package stay equal to the repository's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.lab.examples import EXAMPLE_MAPPING, MOSQUITTO_CONF, choose_mapping
from tests.support import REPO


def test_packaged_copies_equal_the_top_level_files() -> None:
    """bridge/lab/examples holds byte-for-byte copies of topic-mappings.yaml and
    mosquitto/mosquitto.conf: edit the top-level file, then copy it over."""
    assert EXAMPLE_MAPPING.read_bytes() == (REPO / "topic-mappings.yaml").read_bytes()
    assert MOSQUITTO_CONF.read_bytes() == (REPO / "mosquitto" / "mosquitto.conf").read_bytes()


def test_a_named_mapping_is_used_even_when_missing(tmp_path: Path) -> None:
    """A file the user names is taken as it is, so a typo is an error naming it."""
    named = tmp_path / "nope.yaml"
    assert choose_mapping(named)[0] == named


def test_the_current_directory_wins_over_the_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """./topic-mappings.yaml is used when there is one; otherwise the packaged example, and
    the note says so."""
    monkeypatch.chdir(tmp_path)
    path, note = choose_mapping(None)
    assert path == EXAMPLE_MAPPING
    assert "example mapping shipped with metriqo-bridge" in note
    (tmp_path / "topic-mappings.yaml").write_text("version: 1\nrules: []\n", encoding="utf-8")
    path, note = choose_mapping(None)
    assert path == Path("topic-mappings.yaml")
    assert "current directory" in note
