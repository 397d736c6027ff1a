"""The ``dead-letters`` tools: list, export and requeue what the spool kept as undeliverable.

Pure core first (time and filter parsing, the export object, the table, requeue planning: one
dead letter → records or a reason), then a thin blocking shell that pages through an open
:class:`~bridge.spool.store.Spool` and writes to a text stream. The shell works beside a running
bridge: the spool is opened with :meth:`~bridge.spool.store.Spool.open_shared`, every requeue
chunk is one transaction, and the bridge picks the records up within about a second.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from bridge.mapping.mapper import Mapper
from bridge.models import DeadLetterRow, Record
from bridge.spool.deadletters import DeadLetterFilter

API_REJECTED = "api_rejected"
PAGE = 500  # dead letters per query and per requeue transaction
LIST_LIMIT = 100  # rows ``list`` shows unless --limit says otherwise
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_AGE = re.compile(r"(\d{1,9})([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SAMPLE_IDS = 5  # ids named per reason in the requeue report

# -- pure core: times and filters ----------------------------------------------------------------


def parse_time(text: str, now_us: int) -> int:
    """Epoch µs of an ISO-8601 time, a date, or an age meaning "that long before ``now_us``".

    ``2026-11-26T10:00:00Z`` and ``2026-11-26T12:00:00+02:00`` are exact; a time without an
    offset and a bare date (midnight) are UTC, the zone every output of these tools uses.
    ``30s``, ``30m``, ``2h``, ``7d`` and ``2w`` are ages.

    Raises:
        ValueError: anything else, with a message that shows the accepted forms.
    """
    value = text.strip()
    age = _AGE.fullmatch(value)
    if age is not None:
        return now_us - int(age[1]) * _UNIT_S[age[2]] * 1_000_000
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-26T10:00:00Z or 2026-11-26, UTC "
            "unless an offset is given) or an age such as 30m, 2h or 7d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(microseconds=1)


def parse_age(text: str, now_us: int) -> int:
    """Epoch µs of "``text`` before ``now_us``" for an age (``30m``, ``2h``, ``7d``, ``2w``).

    Raises:
        ValueError: anything but an age, with a message that shows the accepted forms.
    """
    age = _AGE.fullmatch(text.strip())
    if age is None:
        raise ValueError(f"{text!r} is not an age: use a number and s, m, h, d or w, e.g. 30d")
    return now_us - int(age[1]) * _UNIT_S[age[2]] * 1_000_000


def make_filter(
    reasons: Iterable[str] = (),
    since_us: int | None = None,
    until_us: int | None = None,
    ids: Iterable[int] = (),
) -> DeadLetterFilter:
    """The spool filter for the command-line options (``since`` inclusive, ``until`` not).

    Raises:
        ValueError: an empty reason, or a window that cannot hold anything.
    """
    reason_list = tuple(dict.fromkeys(reasons))
    if any(not r.strip() for r in reason_list):
        raise ValueError("--reason needs a reason label such as invalid_json or api_rejected")
    if since_us is not None and until_us is not None and since_us >= until_us:
        raise ValueError(
            f"--since ({iso_utc(since_us)}) must be earlier than --until ({iso_utc(until_us)})"
        )
    return DeadLetterFilter(reason_list, since_us, until_us, tuple(dict.fromkeys(ids)))


def iso_utc(at_us: int, digits: int = 6) -> str:
    """``2026-11-26T10:00:00.123456Z`` for epoch µs, with ``digits`` fractional digits."""
    when = _EPOCH + timedelta(microseconds=at_us)
    fraction = f"{when.microsecond:06d}"[:digits]
    return when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


# -- pure core: showing and exporting ------------------------------------------------------------


def is_truncated(row: DeadLetterRow) -> bool:
    """True when the spool kept only the first part of the payload."""
    return row.payload_size > len(row.payload)


def original_size(row: DeadLetterRow) -> int:
    """The payload's size as received (``api_rejected`` rows store 0 and are never cut)."""
    return max(row.payload_size, len(row.payload))


def export_object(row: DeadLetterRow) -> dict[str, str | int | bool]:
    """One JSON Lines object of ``export``; ``payload_base64`` always holds the stored bytes."""
    obj: dict[str, str | int | bool] = {
        "id": row.id,
        "at": iso_utc(row.at_us),
        "at_us": row.at_us,
        "reason": row.reason,
        "rule": row.rule,
        "topic": row.topic,
    }
    # Binary, or cut inside a character: left out, and payload_base64 still has every byte.
    with contextlib.suppress(UnicodeDecodeError):
        obj["payload"] = row.payload.decode("utf-8")
    obj["payload_base64"] = base64.b64encode(row.payload).decode("ascii")
    obj["payload_size"] = original_size(row)
    obj["truncated"] = is_truncated(row)
    obj["detail"] = row.detail
    return obj


def export_line(row: DeadLetterRow) -> str:
    """:func:`export_object` as one line of JSON, newline included."""
    return orjson.dumps(export_object(row)).decode() + "\n"


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped, so no byte of a payload, topic or
    detail can move the cursor, recolour the terminal or start a new line of the table."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``…`` when cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def preview(payload: bytes, width: int, *, truncated: bool = False) -> str:
    """A safe one-line view of a payload: escaped text, or ``b'…'`` for bytes that are not
    UTF-8; ends in ``…`` when cut here or by the spool."""
    if not payload:
        return "(empty)"
    try:
        text = printable(payload.decode("utf-8")[: width * 2])
    except UnicodeDecodeError:
        text = repr(payload[:width])
    if truncated and len(text) <= width:
        return text[: width - 1] + "…"
    return shorten(text, width)


TABLE_HEADER = ("TIME (UTC)", "ID", "REASON", "RULE", "TOPIC", "PAYLOAD", "DETAIL")


def table_cells(row: DeadLetterRow) -> tuple[str, ...]:
    """The cells of one table row, each printable and of bounded width."""
    return (
        iso_utc(row.at_us, 3),
        str(row.id),
        shorten(printable(row.reason), 24),
        shorten(printable(row.rule), 24) or "-",
        shorten(printable(row.topic), 40) or "-",
        preview(row.payload, 40, truncated=is_truncated(row)),
        shorten(printable(row.detail), 80),
    )


def format_table(cells: Sequence[tuple[str, ...]]) -> list[str]:
    """Aligned lines (header first); the id column is right-aligned, the last is not padded."""
    rows = [TABLE_HEADER, *cells]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER) - 1)]
    lines = []
    for r in rows:
        parts = [
            r[i].rjust(widths[i]) if i == 1 else r[i].ljust(widths[i]) for i in range(len(widths))
        ]
        lines.append("  ".join([*parts, r[-1]]).rstrip())
    return lines


def format_counts(counts: dict[str, int], shown: int) -> str:
    """The summary under ``list``: how many match, per reason, and how many were shown."""
    total = sum(counts.values())
    if not total:
        return "no dead letters match"
    per_reason = ", ".join(f"{printable(r)} {n}" for r, n in sorted(counts.items()))
    line = f"{total} dead letter(s) match: {per_reason}"
    if shown < total:
        line += f" (showing the oldest {shown}; use --limit, --since or export for the rest)"
    return line


# -- pure core: requeue planning -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requeue:
    """The dead letter now yields these records (never coalesced nor screened by a deadband:
    they go out as they are)."""

    records: tuple[Record, ...]

    @property
    def points(self) -> int:
        """Data points in the records."""
        return sum(len(r.metrics) for r in self.records)


@dataclass(frozen=True, slots=True)
class StillFailing:
    """The dead letter still cannot be delivered; ``reason`` is its current failure label."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class NowIgnored:
    """An ``ignore`` rule takes the message now: nothing to deliver, nothing wrong with it."""

    rule: str


Outcome = Requeue | StillFailing | NowIgnored


def plan_requeue(row: DeadLetterRow, mapper: Mapper) -> Outcome:
    """What requeueing ``row`` under the current mapping would do. Pure: no spool, no clock.

    A message is mapped again exactly as the bridge maps it, with its original receive time
    (``at_us``), so timestamps taken from the receive time, the future/past checks and the
    record ids come out as they would have the first time. It is requeued only when it maps
    without any failure; a message that would again be partially mapped stays a dead letter
    (its good points were delivered when it arrived). An ``api_rejected`` row is rebuilt from
    the stored record and requeued unchanged.
    """
    if row.reason == API_REJECTED:
        return _rebuild(row)
    if is_truncated(row):
        return StillFailing(
            "payload_truncated",
            f"only the first {len(row.payload)} of {row.payload_size} bytes were kept",
        )
    mapped = mapper.map(row.topic, row.payload, row.at_us)
    if mapped.failures:
        return StillFailing(mapped.failures[0].reason, "; ".join(str(f) for f in mapped.failures))
    if mapped.ignored:
        return NowIgnored(mapped.rule or "")
    if not mapped.records:
        return StillFailing("no_metrics", "the current mapping skips every reading of it")
    # A requeued point is sent as it is: folding it into a coalescing window that may have
    # been sent long ago would change a value the API already holds.
    return Requeue(
        tuple(dataclasses.replace(r, coalesce=None, deadband=None) for r in mapped.records)
    )


def _rebuild(row: DeadLetterRow) -> Outcome:
    """The record of an ``api_rejected`` row ({"device_id", "ts_us", "metrics"} as JSON)."""
    try:
        doc = orjson.loads(row.payload)
    except orjson.JSONDecodeError:
        return StillFailing("bad_record", "the stored record is not JSON")
    if not isinstance(doc, dict):
        return StillFailing("bad_record", "the stored record is not a JSON object")
    device, ts_us, metrics = doc.get("device_id"), doc.get("ts_us"), doc.get("metrics")
    if not isinstance(device, str) or not device:
        return StillFailing("bad_record", "the stored record has no device_id")
    if not isinstance(ts_us, int) or isinstance(ts_us, bool):
        return StillFailing("bad_record", "the stored record has no integer ts_us")
    if not isinstance(metrics, dict) or not metrics:
        return StillFailing("bad_record", "the stored record has no metrics")
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return StillFailing("bad_record", f"metric {name!r} holds no number")
        values[str(name)] = float(value)
    return Requeue((Record(device, ts_us, values, row.at_us),))


@dataclass(slots=True)
class RequeueTally:
    """Counts of one requeue run, for its report and exit code."""

    letters: int = 0  # dead letters requeued
    records: int = 0
    points_offered: int = 0
    points_stored: int = 0  # by the spool; fewer when a record was already waiting there
    failing: Counter[str] = field(default_factory=Counter)
    failing_ids: dict[str, list[int]] = field(default_factory=dict)
    failing_example: dict[str, str] = field(default_factory=dict)
    ignored: Counter[str] = field(default_factory=Counter)  # by rule
    ignored_ids: dict[str, list[int]] = field(default_factory=dict)

    def add(self, row: DeadLetterRow, outcome: Outcome) -> None:
        """Count the outcome planned for ``row``."""
        if isinstance(outcome, Requeue):
            self.letters += 1
            self.records += len(outcome.records)
            self.points_offered += outcome.points
        elif isinstance(outcome, StillFailing):
            self.failing[outcome.reason] += 1
            self.failing_ids.setdefault(outcome.reason, []).append(row.id)
            self.failing_example.setdefault(outcome.reason, outcome.detail)
        else:
            self.ignored[outcome.rule] += 1
            self.ignored_ids.setdefault(outcome.rule, []).append(row.id)


def _ids(ids: list[int]) -> str:
    more = ", …" if len(ids) > _SAMPLE_IDS else ""
    return "ids " + ", ".join(str(i) for i in ids[:_SAMPLE_IDS]) + more


def format_tally(tally: RequeueTally, *, dry_run: bool, drop_ignored: bool) -> list[str]:
    """The report printed after ``requeue``."""
    seen = tally.letters + sum(tally.failing.values()) + sum(tally.ignored.values())
    if not seen:
        return ["no dead letters match"]
    verb = "would requeue" if dry_run else "requeued"
    points = tally.points_offered if dry_run else tally.points_stored
    head = f"{verb} {tally.letters} dead letter(s) → {tally.records} record(s) / {points} point(s)"
    if not dry_run and tally.points_stored < tally.points_offered:
        waiting = tally.points_offered - tally.points_stored
        head += f" ({waiting} point(s) were already waiting in the spool)"
    lines = [f"dry run: {head}; nothing was written" if dry_run else head]
    width = max([len(r) for r in (*tally.failing, *tally.ignored)] + [8])
    if tally.failing:
        lines.append(f"still failing: {sum(tally.failing.values())} dead letter(s), kept")
        for reason, n in sorted(tally.failing.items()):
            example = shorten(printable(tally.failing_example[reason]), 100)
            lines.append(
                f"  {printable(reason):<{width}}  {n:>6}  {_ids(tally.failing_ids[reason])}"
                f"  e.g. {example}"
            )
    if tally.ignored:
        n_ignored = sum(tally.ignored.values())
        if drop_ignored:
            fate = "would be removed" if dry_run else "removed"
        else:
            fate = "kept (--drop-ignored removes them)"
        lines.append(f"now ignored by an ignore rule: {n_ignored} dead letter(s), {fate}")
        for rule, n in sorted(tally.ignored.items()):
            lines.append(f"  {printable(rule):<{width}}  {n:>6}  {_ids(tally.ignored_ids[rule])}")
    return lines


# -- pure core: the purge report -----------------------------------------------------------------


def format_purge(counts: dict[str, int], *, dry_run: bool) -> list[str]:
    """The report printed after ``purge``: the total, then the number per reason."""
    total = sum(counts.values())
    if not total:
        return ["no dead letters match"]
    if dry_run:
        head = f"dry run: would delete {total} dead letter(s); nothing was deleted (--yes deletes)"
    else:
        head = f"deleted {total} dead letter(s)"
    width = max([len(printable(r)) for r in counts] + [8])
    return [head] + [f"  {printable(r):<{width}}  {n:>6}" for r, n in sorted(counts.items())]
