"""Unit tests of the dead-letter tools' pure core (bridge/cli/dead_letter_rows.py): parsing
times and filters, export and display, and requeue planning against a real mapper. The
``dead-letters`` command against spool files: ``test_deadletters_command.py``."""

from __future__ import annotations

import base64

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
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.models import Coalesce, DeadLetterRow, Record
from bridge.spool.deadletters import DeadLetterFilter
from tests.support.dead_letters import MAPPINGS, T0_US, meter

NOW_US = T0_US + 3_600_000_000  # "now" for relative ages: an hour later


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
