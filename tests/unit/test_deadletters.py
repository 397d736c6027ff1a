"""Unit tests of the dead-letter tools: parsing, export, requeue planning and the CLI end to end
on real spool files in tmp_path."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import orjson
import pytest

from bridge.cli.dead_letter_rows import (
    NowIgnored,
    Requeue,
    StillFailing,
    export_object,
    iso_utc,
    make_filter,
    parse_time,
    plan_requeue,
    preview,
    printable,
    table_cells,
)
from bridge.cli.dead_letters import pages
from bridge.cli.main import main
from bridge.errors import EX_CONFIG, EX_NOINPUT
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.models import Coalesce, DeadLetter, DeadLetterRow, Record
from bridge.settings import SpoolSettings
from bridge.spool.deadletters import DeadLetterFilter
from bridge.spool.store import Spool
from tests.conftest import TOKEN

T0_US = 1_795_683_600_000_000  # 2026-11-26T09:00:00Z
T0_MS = T0_US // 1000
NOW_US = T0_US + 3_600_000_000  # "now" for relative ages: an hour later

MAPPINGS = """\
version: 1
rules:
  - name: bench
    topic: meter/bench/reading
    ignore: true
  - name: meter
    topic: "meter/{device}/reading"
    device_id: "{device}"
    metrics: {kw: power_kw, v: volts}
    timestamp: {field: ts}
  - name: plain
    topic: "tele/{device}/{metric}"
    device_id: "{device}"
    payload: number
    metric: "{metric}"
  - name: fast
    topic: "fast/{device}"
    device_id: "{device}"
    metrics: {v: v}
    coalesce: {window_s: 60, function: avg}
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No METRIQO_BRIDGE_* variable of the caller leaks into the settings under test."""
    for name in list(os.environ):
        if name.startswith("METRIQO_BRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    """The mapper for MAPPINGS with the bridge's default limits."""
    return Mapper(load_mappings_text(MAPPINGS, "mappings.yaml"))


def row(
    reason: str,
    topic: str,
    payload: bytes,
    *,
    at_us: int = T0_US + 1_000_000,
    size: int | None = None,
    rule: str = "meter",
    ident: int = 1,
) -> DeadLetterRow:
    """A dead letter as the spool returns it."""
    return DeadLetterRow(
        ident, at_us, reason, rule, topic, payload, len(payload) if size is None else size, ""
    )


def meter(device: str, kw: float, ts_ms: int = T0_MS, volts: float | None = 230.0) -> bytes:
    """A meter payload in the shape MAPPINGS expects (``volts`` None leaves the field out)."""
    doc: dict[str, float] = {"power_kw": kw, "ts": ts_ms}
    if volts is not None:
        doc["volts"] = volts
    return orjson.dumps(doc)


# -- times and filters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T09:00:00Z", T0_US),
        ("2026-11-26T09:00:00.25Z", T0_US + 250_000),
        ("2026-11-26T11:00:00+02:00", T0_US),
        ("2026-11-26T09:00:00", T0_US),  # no offset: UTC, like everything these tools print
        ("2026-11-26", T0_US - 9 * 3_600_000_000),
        ("30s", NOW_US - 30_000_000),
        ("30m", NOW_US - 1_800_000_000),
        ("1h", T0_US),
        ("7d", NOW_US - 7 * 86_400_000_000),
        ("2w", NOW_US - 14 * 86_400_000_000),
        (" 2h ", NOW_US - 7_200_000_000),
    ],
)
def test_times_are_iso_dates_or_ages(text: str, expected: int) -> None:
    """ISO 8601 times and dates (UTC unless an offset is given) and ages before now."""
    assert parse_time(text, NOW_US) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2h30m", "10", "-5m", "5 minutes", "2026-13-01"])
def test_garbage_times_are_refused_with_the_accepted_forms(text: str) -> None:
    """Anything else is a ValueError that shows what would have been understood."""
    with pytest.raises(ValueError, match=r"not a time: use ISO 8601 .* 30m, 2h or 7d"):
        parse_time(text, NOW_US)


def test_filters_are_checked_and_deduplicated() -> None:
    """An empty window or an empty reason is an error; repeated values count once."""
    f = make_filter(["a", "a", "b"], T0_US, T0_US + 1, [3, 3])
    assert f == DeadLetterFilter(("a", "b"), T0_US, T0_US + 1, (3,))
    with pytest.raises(ValueError, match="must be earlier than --until"):
        make_filter(since_us=T0_US, until_us=T0_US)
    with pytest.raises(ValueError, match="--reason needs"):
        make_filter([" "])


def test_iso_utc_keeps_microseconds() -> None:
    """Export times keep every microsecond; the table shows milliseconds."""
    assert iso_utc(T0_US + 123_456) == "2026-11-26T09:00:00.123456Z"
    assert iso_utc(T0_US + 123_456, 3) == "2026-11-26T09:00:00.123Z"


# -- export and display --------------------------------------------------------------------------


def test_export_round_trips_text_and_binary_payloads() -> None:
    """payload_base64 always restores the bytes; payload is present only when it is UTF-8."""
    text = row("invalid_json", "plant/a/b/env", b'{"t": 21.5,}')
    binary = row("invalid_json", "plant/a/b/env", b"\x1f\x8b\x08\x00\xff\xfe")
    for r in (text, binary):
        obj = orjson.loads(orjson.dumps(export_object(r)))
        assert base64.b64decode(obj["payload_base64"]) == r.payload
        assert (obj["id"], obj["at_us"], obj["reason"], obj["topic"]) == (
            r.id,
            r.at_us,
            r.reason,
            r.topic,
        )
        assert obj["at"] == "2026-11-26T09:00:01.000000Z"
        assert obj["truncated"] is False
    assert export_object(text)["payload"] == '{"t": 21.5,}'
    assert "payload" not in export_object(binary)


def test_export_marks_a_truncated_payload_and_keeps_its_original_size() -> None:
    """The spool keeps 64 KiB of a larger payload: truncated is true, payload_size the original."""
    cut = row("too_large", "plant/a/b/env", b"x" * 100, size=70_000)
    obj = export_object(cut)
    assert (obj["truncated"], obj["payload_size"]) == (True, 70_000)
    rejected = row("api_rejected", "", b'{"device_id":"d"}', size=0, rule="")
    assert (export_object(rejected)["payload_size"], export_object(rejected)["truncated"]) == (
        17,
        False,
    )


def test_previews_never_carry_control_characters() -> None:
    """Escapes, newlines and binary are shown escaped and cut, so the table stays one line each."""
    assert printable("a\nb\x1b[31mc\u200b") == "a\\nb\\x1b[31mc\\u200b"
    assert preview(b"\xff\xfe\x00abc", 40) == "b'\\xff\\xfe\\x00abc'"
    assert preview(b"", 40) == "(empty)"
    assert preview(b"x" * 100, 10) == "xxxxxxxxx…"
    assert preview(b"short", 10, truncated=True) == "short…"
    cells = table_cells(row("invalid_json", "plant/\x1b[2J/env", b"{\n\x07}"))
    assert all(cell.isprintable() for cell in cells)


# -- requeue planning against a real mapper ------------------------------------------------------


def test_a_fixed_rule_maps_the_dead_letter_with_its_original_receive_time(mapper: Mapper) -> None:
    """The records are what the bridge would have made: payload time, received_us = at_us."""
    outcome = plan_requeue(row("missing_field", "meter/m-1/reading", meter("m-1", 3.25)), mapper)
    assert outcome == Requeue((Record("m-1", T0_US, {"kw": 3.25, "v": 230.0}, T0_US + 1_000_000),))


def test_a_receive_time_timestamp_comes_out_as_the_first_time(mapper: Mapper) -> None:
    """A payload without a time gets at_us, so its point id is the one it would have had."""
    outcome = plan_requeue(row("unmatched", "tele/pump-3/bar", b"2.5", rule=""), mapper)
    assert isinstance(outcome, Requeue)
    assert outcome.records[0].ts_us == T0_US + 1_000_000


def test_a_still_broken_message_reports_its_current_reason(mapper: Mapper) -> None:
    """No rule fixes it: the current failure label and detail, nothing to requeue."""
    assert plan_requeue(row("invalid_json", "meter/m-1/reading", b"{oops"), mapper) == (
        StillFailing("invalid_json", plan_requeue_detail(mapper, b"{oops"))
    )
    unmatched = plan_requeue(row("unmatched", "nowhere/x", b"1", rule=""), mapper)
    assert isinstance(unmatched, StillFailing)
    assert unmatched.reason == "unmatched"


def plan_requeue_detail(mapper: Mapper, payload: bytes) -> str:
    """The detail the mapper gives for ``payload`` on the meter topic."""
    failures = mapper.map("meter/m-1/reading", payload, T0_US).failures
    return "; ".join(str(f) for f in failures)


def test_a_message_that_would_again_be_partial_stays(mapper: Mapper) -> None:
    """Its good points were delivered when it arrived: a partial remap requeues nothing."""
    outcome = plan_requeue(
        row("missing_field", "meter/m-1/reading", meter("m-1", 3.25, volts=None)), mapper
    )
    assert isinstance(outcome, StillFailing)
    assert outcome.reason == "missing_field"
    assert "volts" in outcome.detail


def test_an_ignore_rule_now_taking_the_message_is_reported(mapper: Mapper) -> None:
    """An ignore rule matching is neither a failure nor a record."""
    outcome = plan_requeue(row("missing_field", "meter/bench/reading", meter("b", 1)), mapper)
    assert outcome == NowIgnored("bench")


def test_requeued_points_are_not_coalesced(mapper: Mapper) -> None:
    """A coalescing rule's point is requeued raw: its window may have been sent long ago."""
    assert mapper.map("fast/f-1", b'{"v": 4}', T0_US).records[0].coalesce == Coalesce(
        60_000_000, "avg"
    )
    outcome = plan_requeue(row("invalid_json", "fast/f-1", b'{"v": 4}', rule="fast"), mapper)
    assert isinstance(outcome, Requeue)
    assert outcome.records[0].coalesce is None


def test_a_truncated_payload_cannot_be_requeued(mapper: Mapper) -> None:
    """Only the first 64 KiB were kept: mapping them would map something else."""
    outcome = plan_requeue(
        row("too_large", "meter/m-1/reading", meter("m-1", 1)[:-1], size=70_000), mapper
    )
    assert isinstance(outcome, StillFailing)
    assert outcome.reason == "payload_truncated"


def test_an_api_rejected_record_is_rebuilt_as_it_was(mapper: Mapper) -> None:
    """The stored device, time and metrics come back unchanged, at their receive time."""
    stored = orjson.dumps({"device_id": "d1", "ts_us": T0_US, "metrics": {"v": 13.0, "n": 2}})
    outcome = plan_requeue(row("api_rejected", "", stored, size=0, rule=""), mapper)
    assert outcome == Requeue((Record("d1", T0_US, {"v": 13.0, "n": 2.0}, T0_US + 1_000_000),))


@pytest.mark.parametrize(
    "stored",
    [
        b"{not json",
        b"[1]",
        b'{"ts_us": 1, "metrics": {"v": 1}}',
        b'{"device_id": "d", "ts_us": "1", "metrics": {"v": 1}}',
        b'{"device_id": "d", "ts_us": 1, "metrics": {}}',
        b'{"device_id": "d", "ts_us": 1, "metrics": {"v": null}}',
        b'{"device_id": "d", "ts_us": 1, "metrics": {"v": true}}',
    ],
)
def test_an_unreadable_api_rejected_record_stays(mapper: Mapper, stored: bytes) -> None:
    """A damaged stored record is reported as bad_record, never guessed at."""
    outcome = plan_requeue(row("api_rejected", "", stored, size=0, rule=""), mapper)
    assert isinstance(outcome, StillFailing)
    assert outcome.reason == "bad_record"


# -- paging through a real spool -----------------------------------------------------------------


def dead(reason: str, topic: str, payload: bytes, at_us: int) -> DeadLetter:
    """A dead letter as the intake writes it."""
    return DeadLetter(reason, f"{reason} detail", topic, payload, "meter", at_us)


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
    assert main(["dead-letters", "list", "--spool", str(spool_path)]) == 0
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
    args = ["dead-letters", "list", "--spool", str(spool_path), "--reason", "missing_field"]
    assert main([*args, "--since", "2026-11-26T09:01:00Z", "--until", "2026-11-26T09:03Z"]) == 0
    out = capsys.readouterr().out
    assert "meter/m-2/reading" in out
    assert "m-1/" not in out
    assert "bench" not in out
    assert out.endswith("1 dead letter(s) match: missing_field 1\n")
    assert main([*args, "--limit", "2"]) == 0
    assert "(showing the oldest 2;" in capsys.readouterr().out
    assert main(["dead-letters", "list", "--spool", str(spool_path), "--id", "3", "--id", "5"]) == 0
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
    args = ["dead-letters", "list", "--spool", str(path)]
    assert main([*args, "--since", "1h"]) == 0
    assert capsys.readouterr().out.endswith("1 dead letter(s) match: new_one 1\n")
    assert main([*args, "--until", "60m"]) == 0
    assert capsys.readouterr().out.endswith("1 dead letter(s) match: old_one 1\n")


def test_list_json_gives_export_objects_and_the_summary_on_stderr(
    spool_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one export object per line and nothing else on stdout."""
    assert main(["dead-letters", "list", "--spool", str(spool_path), "--json"]) == 0
    captured = capsys.readouterr()
    objects = [orjson.loads(line) for line in captured.out.splitlines()]
    assert [o["id"] for o in objects] == [1, 2, 3, 4, 5]
    assert "5 dead letter(s) match" in captured.err


def test_export_streams_json_lines_whose_bytes_round_trip(
    spool_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stdout and --output carry the same lines; base64 restores each stored payload."""
    assert main(["dead-letters", "export", "--spool", str(spool_path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "exported 5 dead letter(s)\n"
    out_file = tmp_path / "dead.jsonl"
    args = ["dead-letters", "export", "--spool", str(spool_path), "-o", str(out_file)]
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
    args = ["dead-letters", "requeue", "--spool", str(spool_path), "--mappings", str(mappings)]
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
    args = ["dead-letters", "requeue", "--spool", str(spool_path), "--mappings", str(mappings)]
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
        args = ["dead-letters", "requeue", "--spool", str(spool_path), "--mappings", str(mappings)]
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
        main(["dead-letters", "list", "--spool", str(spool_path), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {extra[0]}" in err
    assert "Traceback" not in err


def test_an_empty_window_and_a_missing_command_are_usage_errors(
    spool_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--since after --until is exit 2; so is dead-letters without list/export/requeue."""
    args = ["dead-letters", "list", "--spool", str(spool_path)]
    assert main([*args, "--since", "1h", "--until", "2h"]) == 2
    assert "must be earlier than --until" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["dead-letters"])
    assert exc.value.code == 2


def test_a_missing_spool_is_exit_66_naming_the_path(
    tmp_path: Path, mappings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No spool file: a clear message, EX_NOINPUT, and nothing is created."""
    missing = tmp_path / "nowhere" / "spool.db"
    for command in (["list"], ["export"], ["requeue", "--mappings", str(mappings)]):
        assert main(["dead-letters", *command, "--spool", str(missing)]) == EX_NOINPUT
        assert f"no spool at {missing}" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_a_broken_mapping_file_is_exit_78_before_the_spool_is_touched(
    spool_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The mapping is loaded like run loads it: file, line and key; nothing requeued."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nrules:\n  - name: x\n    topic: a/b\n    nope: 1\n")
    args = ["dead-letters", "requeue", "--spool", str(spool_path), "--mappings", str(broken)]
    assert main(args) == EX_CONFIG
    assert "broken.yaml:" in capsys.readouterr().err
    assert len(reasons_left(spool_path)) == 5


def test_an_unwritable_output_file_is_exit_1(
    spool_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export --output into a missing directory says so and exits 1."""
    target = tmp_path / "no" / "such" / "dir.jsonl"
    assert main(["dead-letters", "export", "--spool", str(spool_path), "-o", str(target)]) == 1
    assert str(target) in capsys.readouterr().err
