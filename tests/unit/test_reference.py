"""The manual's reference pages are generated from the code and kept equal to it."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from bridge.cli import reference
from bridge.cli.main import build_parser
from bridge.config.model import SettingsModel
from bridge.errors import EXIT_CODES
from bridge.metrics import OPERATOR_NOTES, PREFIX, BridgeMetrics

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "docs" / "reference"


def test_every_generated_page_equals_what_the_code_says() -> None:
    """docs/reference/{configuration,cli,metrics,exit-codes}.md are what
    `python -m bridge.cli.reference` writes now (regenerate them after changing the code)."""
    assert reference.main(["--check", str(PAGES)]) == 0


def test_a_page_that_drifted_from_the_code_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--check fails and names the page when one differs from the code."""
    for name in reference.PAGES:
        shutil.copy(PAGES / name, tmp_path / name)
    page = tmp_path / "configuration.md"
    page.write_text(page.read_text(encoding="utf-8").replace("mqtt.host", "mqtt.hots"), "utf-8")
    assert reference.main(["--check", str(tmp_path)]) == 1
    assert "configuration.md" in capsys.readouterr().err


def test_every_setting_has_a_description_and_appears_on_its_page() -> None:
    """Each settings field carries a description, and the configuration page lists its key."""
    page = reference.configuration_page()
    for key, field, _ in reference._settings_rows(SettingsModel):
        assert field.description, f"{key} has no description on its field"
        assert f"| `{key}` |" in page


def test_every_command_appears_on_the_cli_page() -> None:
    """Each subcommand of the parser has a section on the commands page."""
    page = reference.cli_page()
    for name in reference._subcommands(build_parser()):
        assert f"## `metriqo-bridge {name}`" in page


def test_a_usage_line_without_groups_is_the_one_argparse_writes() -> None:
    """Put together part by part, a usage line says what argparse's own says (wrapping aside)."""
    for name, sub in reference._subcommands(build_parser()).items():
        if sub._mutually_exclusive_groups:
            continue
        own = " ".join(sub.format_usage().split()).removeprefix("usage: ")
        assert reference._usage(sub.prog, sub) == own, name


def test_a_group_of_an_option_and_a_positional_is_written_once_where_it_was_added() -> None:
    """The layout that differs between Python versions: the group stays whole, in the place of
    its first member, hidden members left out; a required group is in parentheses."""
    parser = argparse.ArgumentParser(prog="p")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--file", metavar="FILE")
    group.add_argument("--old", help=argparse.SUPPRESS)
    group.add_argument("path", nargs="?", metavar="FILE")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("name")
    needed = parser.add_mutually_exclusive_group(required=True)
    needed.add_argument("--a", action="store_true")
    needed.add_argument("--b", action="store_true")
    assert reference._usage("p", parser) == "p [-h] [--file FILE | FILE] [--json] (--a | --b) name"


def test_every_exported_metric_appears_and_every_note_names_one() -> None:
    """Each metric family of a bridge is on the metrics page, and each operator note belongs
    to an exported metric."""
    page = reference.metrics_page()
    families = {f.name.removeprefix(PREFIX) for f in BridgeMetrics().registry.collect()}
    exported = {name for name in families if not name.startswith(("process_", "python_"))}
    for name in exported:
        assert f"| `{name}" in page, name
    assert set(OPERATOR_NOTES) <= exported


def test_every_exit_code_is_on_its_page() -> None:
    """Each code of bridge.errors.EXIT_CODES is in the exit-codes page."""
    page = reference.exit_codes_page()
    for code, _meaning in EXIT_CODES:
        assert f"| `{code}` |" in page
