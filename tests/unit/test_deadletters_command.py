"""Unit tests of the ``dead-letters`` command end to end (list, export, requeue) on real spool
files in tmp_path, and of the paging under it. The pure core: ``test_deadletters_rows.py``."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import orjson
import pytest

from bridge.cli.dead_letters import pages
from bridge.cli.main import main
from bridge.errors import EX_CONFIG, EX_NOINPUT
from bridge.models import DeadLetter, Record
from bridge.settings import SpoolSettings
from bridge.spool.deadletters import DeadLetterFilter
from bridge.spool.store import Spool
from tests.support import TOKEN
from tests.support.dead_letters import MAPPINGS, T0_MS, T0_US, meter


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No METRIQO_BRIDGE_* variable of the caller leaks into the settings under test."""
    for name in list(os.environ):
        if name.startswith("METRIQO_BRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def dead(reason: str, topic: str, payload: bytes, at_us: int) -> DeadLetter:
    """A dead letter as the intake writes it."""
    return DeadLetter(reason, f"{reason} detail", topic, payload, "meter", at_us)


# -- paging through a real spool -----------------------------------------------------------------


def test_pages_visit_every_match_once_in_id_order_and_stop_at_the_newest(tmp_path: Path) -> None:
    """Gaps in the ids, filters and limits are honoured; rows added meanwhile are left alone."""
    spool = Spool(SpoolSettings(tmp_path / "s.db", reserve_bytes=0))
    spool.open()
    try:
        spool.writer.commit(
            [],
            [
                dead("invalid_json" if i % 3 else "missing_field", "t", b"%d" % i, T0_US + i)
                for i in range(1, 1301)
            ],
        )
        doomed = [r.id for r in spool.dead_letters.find(DeadLetterFilter()) if r.id % 7 == 0]
        spool.dead_letters.requeue(doomed, [])  # leaves gaps in the ids
        wanted = [
            r.id for r in spool.dead_letters.find(DeadLetterFilter()) if r.reason == "invalid_json"
        ]
        which = DeadLetterFilter(("invalid_json",))
        seen: list[int] = []
        for page in pages(spool, which, size=128):
            assert len(page) <= 128
            seen.extend(r.id for r in page)
            spool.writer.commit([], [dead("invalid_json", "t", b"new", T0_US)])  # not visited
        assert seen == wanted
        limited = [r.id for p in pages(spool, which, limit=300, size=128) for r in p]
        assert limited == wanted[:300]
        assert list(pages(spool, DeadLetterFilter(("nothing",)))) == []
    finally:
        spool.close()


# -- the command line end to end -----------------------------------------------------------------


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    """A spool holding five dead letters of both kinds (closed: the tools open it shared)."""
    path = tmp_path / "spool" / "bridge.db"
    spool = Spool(SpoolSettings(path, reserve_bytes=0))
    spool.open()
    spool.writer.commit(
        [],
        [
            dead("missing_field", "meter/m-1/reading", meter("m-1", 3.25), T0_US),
            dead(
                "missing_field",
                "meter/m-2/reading",
                meter("m-2", 1.5, T0_MS + 1),
                T0_US + 60_000_000,
            ),
            dead("invalid_json", "meter/m-3/reading", b"\x1f\x8b\x08binary", T0_US + 120_000_000),
            dead("missing_field", "meter/bench/reading", meter("b", 9), T0_US + 180_000_000),
        ],
    )
    spool.writer.commit([Record("d1", T0_US, {"v": 13.0}, T0_US + 5)], [])
    spool.outbox.reject(
        [r.seq for r in spool.outbox.fetch(0, 10)], "api_rejected", 'HTTP 400: {"error":"x"}'
    )
    spool.close()
    return path


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    """MAPPINGS as a file."""
    path = tmp_path / "mappings.yaml"
    path.write_text(MAPPINGS, encoding="utf-8")
    return path


def open_spool(path: Path) -> Spool:
    """The spool opened as the tools open it."""
    spool = Spool(SpoolSettings(path, reserve_bytes=0))
    spool.open_shared()
    return spool


def reasons_left(path: Path) -> list[str]:
    """Reasons of the dead letters still in the spool, oldest first."""
    spool = open_spool(path)
    try:
        return [r.reason for r in spool.dead_letters.find(DeadLetterFilter())]
    finally:
        spool.close()


def waiting(path: Path) -> list[tuple[str, int, dict[str, float], int]]:
    """Records waiting for delivery: device, ts_us, metrics, received_us."""
    spool = open_spool(path)
    try:
        return [
            (r.device_id, r.ts_us, r.metrics, r.received_us) for r in spool.outbox.fetch(0, 100)
        ]
    finally:
        spool.close()


def test_list_shows_a_table_and_counts_per_reason(
    spool_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every dead letter is one printable line; the summary counts the reasons."""
    assert main(["dead-letters", "list", "--spool-path", str(spool_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["TIME", "(UTC)", "ID", "REASON", "RULE", "TOPIC", "PAYLOAD", "DETAIL"]
    assert out[1].split()[:5] == [
        "2026-11-26T09:00:00.000Z",
        "1",
        "missing_field",
        "meter",
        "meter/m-1/reading",
    ]
    assert out[5].split()[:5] == ["2026-11-26T09:00:00.000Z", "5", "api_rejected", "-", "-"]
    assert "b'\\x1f\\x8b\\x08binary'" in out[3]
    assert "HTTP 400" in out[5]
    assert out[-1] == ("5 dead letter(s) match: api_rejected 1, invalid_json 1, missing_field 3")


def test_list_filters_combine(spool_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--reason, --since/--until and --id narrow the rows and the counts alike."""
    args = ["dead-letters", "list", "--spool-path", str(spool_path), "--reason", "missing_field"]
    assert main([*args, "--since", "2026-11-26T09:01:00Z", "--until", "2026-11-26T09:03Z"]) == 0
    out = capsys.readouterr().out
    assert "meter/m-2/reading" in out
    assert "m-1/" not in out
    assert "bench" not in out
    assert out.endswith("1 dead letter(s) match: missing_field 1\n")
    assert main([*args, "--limit", "2"]) == 0
    assert "(showing the oldest 2;" in capsys.readouterr().out
    assert (
        main(["dead-letters", "list", "--spool-path", str(spool_path), "--id", "3", "--id", "5"])
        == 0
    )
    assert capsys.readouterr().out.endswith("api_rejected 1, invalid_json 1\n")
    assert main([*args, "--until", "2026-11-26"]) == 0
    assert capsys.readouterr().out == "no dead letters match\n"


def test_ages_count_back_from_the_current_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--since 1h keeps the last hour, --until 1h everything before it."""
    now_us = int(time.time() * 1_000_000)
    path = tmp_path / "recent.db"
    spool = Spool(SpoolSettings(path, reserve_bytes=0))
    spool.open()
    spool.writer.commit(
        [],
        [
            dead("old_one", "t", b"1", now_us - 3 * 3_600_000_000),
            dead("new_one", "t", b"2", now_us - 600_000_000),
        ],
    )
    spool.close()
    args = ["dead-letters", "list", "--spool-path", str(path)]
    assert main([*args, "--since", "1h"]) == 0
    assert capsys.readouterr().out.endswith("1 dead letter(s) match: new_one 1\n")
    assert main([*args, "--until", "60m"]) == 0
    assert capsys.readouterr().out.endswith("1 dead letter(s) match: old_one 1\n")


def test_list_json_gives_export_objects_and_the_summary_on_stderr(
    spool_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one export object per line and nothing else on stdout."""
    assert main(["dead-letters", "list", "--spool-path", str(spool_path), "--json"]) == 0
    captured = capsys.readouterr()
    objects = [orjson.loads(line) for line in captured.out.splitlines()]
    assert [o["id"] for o in objects] == [1, 2, 3, 4, 5]
    assert "5 dead letter(s) match" in captured.err


def test_export_streams_json_lines_whose_bytes_round_trip(
    spool_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stdout and --output carry the same lines; base64 restores each stored payload."""
    assert main(["dead-letters", "export", "--spool-path", str(spool_path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "exported 5 dead letter(s)\n"
    out_file = tmp_path / "dead.jsonl"
    args = ["dead-letters", "export", "--spool-path", str(spool_path), "-o", str(out_file)]
    assert main(args) == 0
    assert out_file.read_text(encoding="utf-8") == captured.out
    spool = open_spool(spool_path)
    try:
        stored = {r.id: r.payload for r in spool.dead_letters.find(DeadLetterFilter())}
    finally:
        spool.close()
    objects = [orjson.loads(line) for line in captured.out.splitlines()]
    assert {o["id"]: base64.b64decode(o["payload_base64"]) for o in objects} == stored
    binary = objects[2]
    assert (binary["reason"], "payload" in binary) == ("invalid_json", False)
    rejected = objects[4]
    assert orjson.loads(rejected["payload"]) == {
        "device_id": "d1",
        "ts_us": T0_US,
        "metrics": {"v": 13.0},
    }
    assert rejected["detail"] == 'HTTP 400: {"error":"x"}'
    assert main([*args, "--reason", "api_rejected", "--limit", "1"]) == 0
    assert len(out_file.read_text(encoding="utf-8").splitlines()) == 1


def test_requeue_dry_run_reports_and_writes_nothing(
    spool_path: Path, mappings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run shows the plan and exit code; the spool is left exactly as it was."""
    before = (reasons_left(spool_path), waiting(spool_path))
    args = [
        "dead-letters",
        "requeue",
        "--spool-path",
        str(spool_path),
        "--mapping-file",
        str(mappings),
    ]
    assert main([*args, "--dry-run", "--drop-ignored"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(
        "dry run: would requeue 3 dead letter(s) → 3 record(s) / 5 point(s); nothing was written\n"
    )
    assert "still failing: 1 dead letter(s), kept" in out
    assert "now ignored by an ignore rule: 1 dead letter(s), would be removed" in out
    assert (reasons_left(spool_path), waiting(spool_path)) == before


def test_requeue_moves_what_now_maps_into_the_spool_and_keeps_the_rest(
    spool_path: Path, mappings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fixed messages and rejected records wait for delivery; failing and ignored ones stay."""
    args = [
        "dead-letters",
        "requeue",
        "--spool-path",
        str(spool_path),
        "--mapping-file",
        str(mappings),
    ]
    assert main(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "requeued 3 dead letter(s) → 3 record(s) / 5 point(s)"
    assert out[1] == "still failing: 1 dead letter(s), kept"
    assert out[2].split()[:4] == ["invalid_json", "1", "ids", "3"]
    assert (
        out[3]
        == "now ignored by an ignore rule: 1 dead letter(s), kept (--drop-ignored removes them)"
    )
    assert sorted(waiting(spool_path)) == [
        ("d1", T0_US, {"v": 13.0}, T0_US + 5),
        ("m-1", T0_US, {"kw": 3.25, "v": 230.0}, T0_US),
        ("m-2", T0_US + 1000, {"kw": 1.5, "v": 230.0}, T0_US + 60_000_000),
    ]
    assert reasons_left(spool_path) == ["invalid_json", "missing_field"]
    assert main([*args, "--drop-ignored", "--reason", "missing_field"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "requeued 0 dead letter(s) → 0 record(s) / 0 point(s)",
        "now ignored by an ignore rule: 1 dead letter(s), removed",
        "  bench          1  ids 4",
    ]
    assert reasons_left(spool_path) == ["invalid_json"]
    assert main([*args, "--reason", "api_rejected"]) == 0
    assert capsys.readouterr().out == "no dead letters match\n"


def test_requeue_works_beside_the_running_owner_of_the_spool(
    spool_path: Path, mappings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The owner holds the lock; the tool still writes and the owner sees the new points."""
    owner = Spool(SpoolSettings(spool_path, reserve_bytes=0))
    owner.open()
    try:
        args = [
            "dead-letters",
            "requeue",
            "--spool-path",
            str(spool_path),
            "--mapping-file",
            str(mappings),
        ]
        assert main([*args, "--limit", "1"]) == 0
        assert "requeued 1 dead letter(s) → 1 record(s) / 2 point(s)" in capsys.readouterr().out
        assert owner.file.external_changes() == 2
        assert owner.dead_letters.count() == 4
    finally:
        owner.close()


def test_settings_come_from_a_config_file_or_the_environment(
    spool_path: Path,
    mappings: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The spool and mapping paths are read like run reads them; the token is never shown."""
    config = tmp_path / "bridge.yaml"
    config.write_text(
        f"spool: {{path: {spool_path}}}\nmapping: {{file: {mappings}}}\napi: {{token: {TOKEN}}}\n",
        encoding="utf-8",
    )
    assert main(["dead-letters", "requeue", "--dry-run", "--config", str(config)]) == 1
    monkeypatch.setenv("METRIQO_BRIDGE_SPOOL__PATH", str(spool_path))
    monkeypatch.setenv("METRIQO_BRIDGE_TOKEN", TOKEN)
    assert main(["dead-letters", "list", "--id", "1"]) == 0
    assert main(["dead-letters", "export", "--reason", "api_rejected"]) == 0
    captured = capsys.readouterr()
    assert "meter/m-1/reading" in captured.out
    assert TOKEN not in captured.out + captured.err


@pytest.mark.parametrize(
    "extra",
    [
        ["--since", "yesterday"],
        ["--until", "2026-11-32"],
        ["--id", "0"],
        ["--id", "x"],
        ["--limit", "-1"],
    ],
)
def test_bad_filter_values_are_usage_errors(
    spool_path: Path, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse refuses them with exit 2 and a message naming the option, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(["dead-letters", "list", "--spool-path", str(spool_path), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {extra[0]}" in err
    assert "Traceback" not in err


def test_an_empty_window_and_a_missing_command_are_usage_errors(
    spool_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--since after --until is exit 2; so is dead-letters without list/export/requeue."""
    args = ["dead-letters", "list", "--spool-path", str(spool_path)]
    assert main([*args, "--since", "1h", "--until", "2h"]) == 2
    assert "must be earlier than --until" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["dead-letters"])
    assert exc.value.code == 2


def test_a_missing_spool_is_exit_66_naming_the_path(
    tmp_path: Path, mappings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No spool file: a clear message, EX_NOINPUT, and nothing is created. The path is named
    when its directory exists; a path that names nothing on this machine (a secret set by
    mistake?) is not echoed."""
    missing = tmp_path / "spool.db"
    nowhere = tmp_path / "nowhere" / "spool.db"
    for command in (["list"], ["export"], ["requeue", "--mapping-file", str(mappings)]):
        assert main(["dead-letters", *command, "--spool-path", str(missing)]) == EX_NOINPUT
        assert f"no spool at {missing}" in capsys.readouterr().err
        assert main(["dead-letters", *command, "--spool-path", str(nowhere)]) == EX_NOINPUT
        err = capsys.readouterr().err
        assert "no spool at spool.path (the value is not shown" in err
        assert "nowhere" not in err
    assert not missing.exists()
    assert not nowhere.parent.exists()


def test_a_broken_mapping_file_is_exit_78_before_the_spool_is_touched(
    spool_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The mapping is loaded like run loads it: file, line and key; nothing requeued."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nrules:\n  - name: x\n    topic: a/b\n    nope: 1\n")
    args = [
        "dead-letters",
        "requeue",
        "--spool-path",
        str(spool_path),
        "--mapping-file",
        str(broken),
    ]
    assert main(args) == EX_CONFIG
    assert "broken.yaml:" in capsys.readouterr().err
    assert len(reasons_left(spool_path)) == 5


def test_an_unwritable_output_file_is_exit_1(
    spool_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export --output into a missing directory says so and exits 1."""
    target = tmp_path / "no" / "such" / "dir.jsonl"
    assert main(["dead-letters", "export", "--spool-path", str(spool_path), "-o", str(target)]) == 1
    assert str(target) in capsys.readouterr().err
