"""``dead-letters purge`` end to end on real spool files in tmp_path: a dry run unless --yes,
filters by reason, age and id, a count per reason, a filter required, and beside the running
owner of the spool."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bridge.cli.main import main
from bridge.errors import EX_NOINPUT, EX_USAGE
from bridge.models import DeadLetter
from bridge.settings import SpoolSettings
from bridge.spool.deadletters import DeadLetterFilter
from bridge.spool.store import Spool

HOUR_US = 3_600_000_000


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No METRIQO_BRIDGE_* variable of the caller leaks into the settings under test."""
    for name in list(os.environ):
        if name.startswith("METRIQO_BRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def dead(reason: str, topic: str, hours_ago: float) -> DeadLetter:
    """A dead letter received ``hours_ago`` hours before now."""
    at_us = int(time.time() * 1_000_000 - hours_ago * HOUR_US)
    return DeadLetter(reason, f"{reason} detail", topic, b"{oops", "meter", at_us)


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    """Six dead letters: ids 1-3 missing_field (72, 48, 1 h old), 4-5 invalid_json (30, 2 h),
    6 unmatched (0.1 h). Closed: the tool opens it shared."""
    path = tmp_path / "spool" / "bridge.db"
    spool = Spool(SpoolSettings(path, reserve_bytes=0))
    spool.open()
    spool.writer.commit(
        [],
        [
            dead("missing_field", "meter/m-1/reading", 72),
            dead("missing_field", "meter/m-2/reading", 48),
            dead("missing_field", "meter/m-3/reading", 1),
            dead("invalid_json", "meter/m-4/reading", 30),
            dead("invalid_json", "meter/m-5/reading", 2),
            dead("unmatched", "other/x", 0.1),
        ],
    )
    spool.close()
    return path


def left(path: Path) -> list[int]:
    """Ids of the dead letters still in the spool."""
    spool = Spool(SpoolSettings(path, reserve_bytes=0))
    spool.open_shared()
    try:
        return [r.id for r in spool.dead_letters.find(DeadLetterFilter())]
    finally:
        spool.close()


def purge(path: Path, *args: str) -> int:
    """``metriqo-bridge dead-letters purge --spool PATH ARGS``."""
    return main(["dead-letters", "purge", "--spool-path", str(path), *args])


def test_purge_shows_what_it_would_delete_and_deletes_only_with_yes(
    spool_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --yes (or with --dry-run) nothing goes; the report counts per reason either way."""
    assert purge(spool_path, "--reason", "missing_field", "--reason", "invalid_json") == 0
    assert capsys.readouterr().out == (
        "dry run: would delete 5 dead letter(s); nothing was deleted (--yes deletes)\n"
        "  invalid_json        2\n"
        "  missing_field       3\n"
    )
    assert purge(spool_path, "--reason", "missing_field", "--yes", "--dry-run") == 0
    assert capsys.readouterr().out.startswith("dry run: would delete 3 dead letter(s)")
    assert left(spool_path) == [1, 2, 3, 4, 5, 6]
    assert purge(spool_path, "--reason", "missing_field", "--yes") == 0
    assert capsys.readouterr().out == "deleted 3 dead letter(s)\n  missing_field       3\n"
    assert left(spool_path) == [4, 5, 6]
    assert purge(spool_path, "--reason", "missing_field", "--yes") == 0
    assert capsys.readouterr().out == "no dead letters match\n"


def test_purge_by_age_and_by_id(spool_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--older-than AGE is --until AGE; --id and --limit pick exactly those, oldest first."""
    assert purge(spool_path, "--older-than", "24h", "--yes") == 0
    out = capsys.readouterr().out
    assert out == ("deleted 3 dead letter(s)\n  invalid_json        1\n  missing_field       2\n")
    assert left(spool_path) == [3, 5, 6]
    assert purge(spool_path, "--until", "90m", "--older-than", "1d", "--yes") == 0
    assert capsys.readouterr().out == "no dead letters match\n"  # the earlier of the two
    assert purge(spool_path, "--id", "6", "--id", "3", "--yes") == 0
    assert capsys.readouterr().out.startswith("deleted 2 dead letter(s)\n")
    assert left(spool_path) == [5]
    assert purge(spool_path, "--all", "--limit", "1", "--yes") == 0
    assert left(spool_path) == []


def test_purge_needs_a_filter_or_all(spool_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Purging every dead letter has to be asked for; bad values are usage errors."""
    assert purge(spool_path, "--yes") == EX_USAGE
    assert "purge needs a filter" in capsys.readouterr().err
    assert left(spool_path) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(SystemExit) as exc:
        purge(spool_path, "--older-than", "2026-11-26", "--yes")
    assert exc.value.code == EX_USAGE
    assert "is not an age" in capsys.readouterr().err
    assert purge(spool_path, "--all", "--yes") == 0
    assert left(spool_path) == []
    missing = spool_path.parent / "nope.db"
    assert purge(missing, "--all", "--yes") == EX_NOINPUT


def test_purge_works_beside_the_running_owner_of_the_spool(
    spool_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The owner holds the lock and keeps committing; the tool deletes, and the owner's
    counters follow once it looks at the file again."""
    owner = Spool(SpoolSettings(spool_path, reserve_bytes=0))
    owner.open()
    try:
        assert owner.file.dead_letters.count == 6
        assert purge(spool_path, "--reason", "missing_field", "--yes") == 0
        assert "deleted 3 dead letter(s)" in capsys.readouterr().out
        owner.writer.commit([], [dead("unmatched", "other/y", 0)])
        owner.file.external_changes()
        assert owner.file.dead_letters.count == 4
        assert owner.file.dead_letters.exact
        assert [r.id for r in owner.dead_letters.find(DeadLetterFilter())] == [4, 5, 6, 7]
    finally:
        owner.close()
