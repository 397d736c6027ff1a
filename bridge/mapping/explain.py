"""``explain``: one message through the real :class:`Mapper`, and what would come of it.

Says which rule took the message and why the earlier ones did not, the device, time and points,
failures, and the request body the sender would POST (packed by the sender's own
:mod:`bridge.batcher`). Pure: the receive time is an argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.batcher import take_batch
from bridge.deadband import describe, label
from bridge.limits import MAX_POINTS_PER_REQUEST
from bridge.mapping.explain_steps import ConversionStep, conversions, number_text
from bridge.mapping.mapper import Mapper, Rule
from bridge.mapping.overlap import mismatch
from bridge.mapping.sparkplug_explain import parked_failure
from bridge.mapping.sparkplug_rule import UNKNOWN_ALIAS
from bridge.mapping.timestamps import format_timestamp
from bridge.models import Deadband, Record, SpooledRecord

# The default of mapping.coalesce_grace_s: explain reads the mapping file, not the settings.
DEFAULT_GRACE_US = 2_000_000

# --- explain: one message through the mapper --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Miss:
    """A rule that was tried and did not match."""

    index: int
    rule: str
    topic_filter: str
    reason: str


@dataclass(frozen=True, slots=True)
class Applied:
    """A rule the message went through: the first match, and more after ``continue: true``."""

    index: int
    rule: str
    topic_filter: str
    captures: tuple[tuple[str, str], ...]
    ignore: bool
    time_source: str | None  # e.g. "payload field 'ts'"; None: the receive time


@dataclass(frozen=True, slots=True)
class Point:
    """One data point the message became."""

    device_id: str
    ts_us: int
    metric: str
    value: float


@dataclass(frozen=True, slots=True)
class Window:
    """The coalescing window a point falls in, and what the window sends."""

    device_id: str
    metric: str
    function: str
    start_us: int
    end_us: int
    send_us: int  # the window is sent once the clock passes this (end + grace)
    late: bool  # the window had closed when the message arrived: a second point for it
    value: float  # what the window sends if no other message falls in it


@dataclass(frozen=True, slots=True)
class Explanation:
    """What the bridge would do with one message.

    Attributes:
        topic: the message's topic.
        rule_count: rules in the mapping.
        tried: rules before the last applied one that did not match (all, when none did).
        applied: the matching rules the message went through, in order.
        received_us: the receive time used.
        points: every data point produced, in order.
        failures: (reason, detail) of every problem; any failure dead-letters the message.
        ignored: an ``ignore`` rule took the message: counted, neither delivered nor
            dead-lettered.
        fallback_times: timestamps replaced by the receive time (``on_invalid: receive_time``).
        skipped_readings: readings left out by a ``readings.where`` condition.
        requests: the JSON objects POSTed for the points, one tuple per request of at most
            :data:`~bridge.limits.MAX_POINTS_PER_REQUEST` points, built by the sender's own
            batcher (see :attr:`body`); a coalesced point appears as its window's point.
        windows: the coalescing window of each coalesced point, in order.
        conversions: the numeric steps of the applied rules' metrics that have any.
        bands: the deadbands of the applied rules, as (rule, metric or None for the rule's
            own, band); the points above are what the message maps to, the spool may hold
            them back (one message cannot show that: it depends on the last sent values).
    """

    topic: str
    rule_count: int
    tried: tuple[Miss, ...]
    applied: tuple[Applied, ...]
    received_us: int
    points: tuple[Point, ...]
    failures: tuple[tuple[str, str], ...]
    ignored: bool = False
    fallback_times: int = 0
    skipped_readings: int = 0
    requests: tuple[tuple[dict[str, object], ...], ...] = ()
    windows: tuple[Window, ...] = ()
    conversions: tuple[ConversionStep, ...] = ()
    bands: tuple[tuple[str, str | None, Deadband], ...] = ()

    @property
    def body(self) -> list[dict[str, object]]:
        """The objects of every request, in order: what the API receives for this message."""
        return [obj for request in self.requests for obj in request]

    @property
    def rule(self) -> str | None:
        """Name of the first matching rule (the one the message is counted under), or None."""
        return self.applied[0].rule if self.applied else None

    @property
    def dead_lettered(self) -> bool:
        """True when the message (or part of it) would go to the dead-letter table."""
        return bool(self.failures)

    @property
    def partial(self) -> bool:
        """True when some points are delivered and the message is also dead-lettered."""
        return bool(self.points) and bool(self.failures)

    @property
    def ok(self) -> bool:
        """True when the message becomes points without failures, or is ignored on purpose."""
        return not self.failures and (bool(self.points) or self.ignored)


def _time_source(rule: Rule) -> str | None:
    ts = rule.timestamp
    if ts is not None and ts.capture is not None:
        return f"topic capture {{{ts.capture}}}"
    field = ts.field if ts is not None else rule.ts_field
    return f"payload field {field.text!r}" if field is not None else None


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be the topic of a published message, or None.

    A topic name never holds the wildcards ``+`` or ``#`` (MQTT 3.1.1 §4.7.1: they belong to
    subscription filters), a NUL, or nothing at all: a broker refuses such a publish, so no
    rule could ever receive it, and "matching" it would only mislead.
    """
    if not topic:
        return "the topic is empty; a message's topic has at least one character"
    if "+" in topic or "#" in topic:
        return (
            f"{topic!r} holds a wildcard ('+' or '#'): those belong to subscription filters, "
            "a broker never delivers a message with such a topic; give a concrete topic, "
            "e.g. tele/plug-1/SENSOR"
        )
    if "\0" in topic:
        return "the topic holds a NUL character, which MQTT forbids in topic names"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "the topic is not valid UTF-8, which MQTT requires of topic names"
    if size > 65535:
        return f"the topic is {size} bytes; MQTT topic names are at most 65535"
    return None


def _window(record: Record, metric: str, value: float, grace_us: int) -> Window:
    c = record.coalesce
    assert c is not None
    start = record.ts_us - record.ts_us % c.window_us
    end = start + c.window_us
    alone = 1.0 if c.function == "count" else value
    late = end + grace_us <= record.received_us
    return Window(record.device_id, metric, c.function, start, end, end + grace_us, late, alone)


def _sent_records(records: Sequence[Record], windows: Sequence[Window]) -> list[Record]:
    # What reaches the API: plain records as they are, a coalesced point as its window's point.
    sent = [r for r in records if r.coalesce is None]
    by_window: dict[tuple[str, int], dict[str, float]] = {}
    for w in windows:
        by_window.setdefault((w.device_id, w.start_us), {})[w.metric] = w.value
    received = records[0].received_us if records else 0
    sent.extend(Record(d, start, m, received) for (d, start), m in by_window.items())
    return sent


def explain(
    mapper: Mapper,
    topic: str,
    payload: bytes,
    received_us: int,
    grace_us: int = DEFAULT_GRACE_US,
) -> Explanation:
    """Run one message through ``mapper`` and record every decision on the way.

    ``grace_us`` is ``mapping.coalesce_grace_s``: how long after its end a window is sent.
    """
    levels = topic.split("/")
    tried: list[Miss] = []
    applied: list[Applied] = []
    for i, rule in enumerate(mapper.rules):
        reason = mismatch(rule.topic, levels)
        if reason is not None:
            tried.append(Miss(i, rule.name, rule.topic.text, reason))
            continue
        captured = rule.topic.match(levels) or {}
        applied.append(
            Applied(
                i,
                rule.name,
                rule.topic.text,
                tuple(captured.items()),
                rule.ignore,
                _time_source(rule),
            )
        )
        # The Mapper's order: an ignore rule or a rule without "continue: true" ends matching.
        if rule.ignore or not rule.keep_going:
            break
    mapped = mapper.map(topic, payload, received_us)
    assert mapped.rule == (applied[0].rule if applied else None)
    windows = tuple(
        _window(rec, name, value, grace_us)
        for rec in mapped.records
        if rec.coalesce is not None
        for name, value in rec.metrics.items()
    )
    return Explanation(
        topic=topic,
        rule_count=len(mapper.rules),
        tried=tuple(tried),
        applied=tuple(applied),
        received_us=received_us,
        points=tuple(
            Point(rec.device_id, rec.ts_us, name, value)
            for rec in mapped.records
            for name, value in rec.metrics.items()
        ),
        failures=tuple((f.reason, f.detail) for f in mapped.failures) + parked_failure(mapped),
        ignored=mapped.ignored,
        fallback_times=mapped.replaced_timestamps,
        skipped_readings=mapped.skipped_readings,
        requests=request_bodies(_sent_records(mapped.records, windows)),
        windows=windows,
        conversions=tuple(
            c for a in applied for c in conversions(mapper.rules[a.index], payload) if not a.ignore
        ),
        bands=tuple(
            band
            for a in applied
            if (d := mapper.rules[a.index].deadband) is not None
            for band in (
                *(((d.rule, None, d.default),) if d.default is not None else ()),
                *((d.rule, name, b) for name, b in d.metrics),
            )
        ),
    )


def request_bodies(
    records: Sequence[Record], max_points: int = MAX_POINTS_PER_REQUEST
) -> tuple[tuple[dict[str, object], ...], ...]:
    """The request bodies (arrays of API objects) the sender would POST for ``records``.

    Packed and merged by :mod:`bridge.batcher`, as the delivery loop does: records in order,
    at most ``max_points`` points a request, records of one device and timestamp merged into one
    object. A running bridge may also pack records of other messages into the same requests.
    """
    # Positions stand in for spool seqs: only the packing and the objects are used.
    rows = [
        SpooledRecord(seq, r.device_id, r.ts_us, dict(r.metrics), r.received_us)
        for seq, r in enumerate(records, start=1)
    ]
    requests: list[tuple[dict[str, object], ...]] = []
    while rows:
        batch = take_batch(rows, max_points)
        requests.append(tuple(batch.body_objects()))
        rows = rows[len(batch.records) :]
    return tuple(requests)


def _count(n: int, what: str) -> str:
    return f"1 {what}" if n == 1 else f"{n} {what}s"


def _result(ex: Explanation) -> str:
    if not ex.applied:
        # Subscriptions are exactly the rules' filters: what no rule matches is never delivered.
        return "no rule matches: the bridge does not subscribe to this topic, it never sees it"
    if ex.ignored:
        return "ignored: counted, neither delivered nor dead-lettered"
    if not ex.failures:
        return f"{_count(len(ex.points), 'point')}, nothing dead-lettered"
    if ex.failures[0][0] == UNKNOWN_ALIAS:
        return "no points now: parked until a BIRTH defines its aliases (Sparkplug)"
    failures = _count(len(ex.failures), "failure")
    if ex.points:
        points = _count(len(ex.points), "point")
        return f"{points} delivered, {failures}: dead-lettered as partially mapped"
    return f"no points, {failures}: the whole message is dead-lettered ({ex.failures[0][0]})"


def _time_line(ex: Explanation, ts_us: int) -> str:
    if ts_us != ex.received_us:
        source = next((a.time_source for a in ex.applied if a.time_source), None)
        return f"{format_timestamp(ts_us)} (from {source or 'the payload'})"
    if ex.fallback_times:
        return f"{format_timestamp(ts_us)} (receive time: the payload's time was unusable)"
    return f"{format_timestamp(ts_us)} (receive time)"


def format_explanation(ex: Explanation) -> str:
    """The human-readable form: one labelled line per decision."""
    lines = [f"topic   {ex.topic}"]
    steps: list[tuple[int, str]] = [
        (m.index, f"tried   {m.rule} (rule {m.index + 1}) {m.topic_filter}: {m.reason}")
        for m in ex.tried
    ]
    for n, step in enumerate(ex.applied):
        label = "rule    " if n == 0 else "also    "
        text = f"{label}{step.rule} (rule {step.index + 1} of {ex.rule_count})"
        if step.ignore:
            text += "   ignore: true"
        if step.captures:
            text += "   captures: " + " ".join(f"{k}={v}" for k, v in step.captures)
        steps.append((step.index, text))
    lines.extend(text for _, text in sorted(steps))
    # One block per record: a rule with "continue: true" may write another device or time.
    blocks: dict[tuple[str, int], list[Point]] = {}
    for point in ex.points:
        blocks.setdefault((point.device_id, point.ts_us), []).append(point)
    for (device_id, ts_us), points in blocks.items():
        lines.append(f"device  {device_id}")
        lines.append(f"time    {_time_line(ex, ts_us)}")
        lines.extend(
            f"{'points' if n == 0 else '':8}{p.metric} = {number_text(p.value)}"
            for n, p in enumerate(points)
        )
    if ex.applied:
        for n, (reason, detail) in enumerate(ex.failures):
            text = f"{reason}: {detail}" if detail else reason
            lines.append(f"{'failed' if n == 0 else '':8}{text}")
    for c in ex.conversions:
        given = f"x = {c.raw} → " if c.raw is not None else ""
        lines.append(f"convert {c.metric}: {given}{c.steps} {c.outcome}".rstrip())
    lines.extend(_window_lines(ex.windows))
    lines.extend(_band_lines(ex.bands))
    if ex.skipped_readings:
        lines.append(f"skipped {ex.skipped_readings} reading(s) left out by 'where'")
    for n, request in enumerate(ex.requests):
        lines.extend(_body_lines(list(request), n, len(ex.requests)))
    lines.append(f"result  {_result(ex)}")
    return "\n".join(lines)


def _window_lines(windows: Sequence[Window]) -> list[str]:
    lines = []
    for n, w in enumerate(windows):
        span = f"{format_timestamp(w.start_us)} to {format_timestamp(w.end_us)}"
        lines.append(
            f"{'window' if n == 0 else '':8}{w.device_id} {w.metric}: {w.function} over {span}"
        )
        if w.late:
            lines.append(f"{'':8}  closed before the message arrived: sent as a second point")
        else:
            lines.append(f"{'':8}  folded in; sent at about {format_timestamp(w.send_us)}")
        lines.append(
            f"{'':8}  stamped {format_timestamp(w.start_us)}, {w.function} = "
            f"{number_text(w.value)} if no other message falls in the window"
        )
    return lines


def _band_lines(bands: Sequence[tuple[str, str | None, Deadband]]) -> list[str]:
    lines = []
    several_rules = len({rule for rule, _m, _b in bands}) > 1
    for n, (rule, metric, band) in enumerate(bands):
        if metric is None:
            others = any(r == rule and m is not None for r, m, _b in bands)
            what = "every metric without its own" if others else "every metric"
        else:
            what = metric
        heartbeat = f"heartbeat {band.heartbeat_us / 1_000_000:g} s"
        of_rule = f" (rule {rule})" if several_rules else ""
        lines.append(
            f"{'deadband' if n == 0 else '':9}{label(band)} on {what}, {heartbeat}{of_rule}"
        )
        lines.append(f"{'':9}  {describe(band)}")
    if bands:
        lines.append(
            f"{'':9}  the points above go out if they are the first of their series or left "
            "their band:"
        )
        lines.append(
            f"{'':9}  the spool decides against the last sent values (one message cannot "
            "show holding back)"
        )
    return lines


def _body_lines(objects: list[dict[str, object]], n: int, total: int) -> list[str]:
    # Exactly the bytes the sender's orjson.dumps writes, only indented.
    text = orjson.dumps(objects, option=orjson.OPT_INDENT_2).decode()
    lines = [" " * 8 + line for line in text.splitlines()]
    if total == 1:
        return ["body    " + lines[0][8:], *lines[1:]]
    points = sum(len(m) for o in objects if isinstance(m := o["metrics"], dict))
    return [f"{'body' if n == 0 else '':8}request {n + 1} of {total}, {points} points:", *lines]


def explanation_json(ex: Explanation) -> dict[str, Any]:
    """The machine-readable form (for ``explain --json``); plain JSON types only."""
    first = ex.applied[0] if ex.applied else None
    return {
        "topic": ex.topic,
        "rule": ex.rule,
        "rule_index": first.index if first is not None else None,
        "rule_count": ex.rule_count,
        "captures": dict(first.captures) if first is not None else {},
        "rules": [
            {
                "rule": a.rule,
                "index": a.index,
                "filter": a.topic_filter,
                "captures": dict(a.captures),
                "ignore": a.ignore,
                "time_source": a.time_source,
            }
            for a in ex.applied
        ],
        "tried": [
            {"rule": m.rule, "index": m.index, "filter": m.topic_filter, "reason": m.reason}
            for m in ex.tried
        ],
        "received": format_timestamp(ex.received_us),
        "points": [
            {
                "device_id": p.device_id,
                "timestamp": format_timestamp(p.ts_us),
                "timestamp_source": "payload" if p.ts_us != ex.received_us else "receive_time",
                "metric": p.metric,
                "value": p.value,
            }
            for p in ex.points
        ],
        "failures": [{"reason": reason, "detail": detail} for reason, detail in ex.failures],
        "body": ex.body,
        "requests": len(ex.requests),
        "subscribed": bool(ex.applied),
        "ignored": ex.ignored,
        "skipped_readings": ex.skipped_readings,
        "windows": [
            {
                "device_id": w.device_id,
                "metric": w.metric,
                "function": w.function,
                "start": format_timestamp(w.start_us),
                "end": format_timestamp(w.end_us),
                "sent_after": format_timestamp(w.send_us),
                "late": w.late,
                "value_if_alone": w.value,
            }
            for w in ex.windows
        ],
        "conversions": [
            {
                "rule": c.rule,
                "metric": c.metric,
                "raw": c.raw,
                "steps": c.steps,
                "outcome": c.outcome,
            }
            for c in ex.conversions
        ],
        "deadbands": [
            {
                "rule": rule,
                "metric": metric,
                "kind": band.kind,
                "band": band.band,
                "heartbeat_s": band.heartbeat_us / 1_000_000,
                "means": describe(band),
            }
            for rule, metric, band in ex.bands
        ],
        "dead_lettered": ex.dead_lettered,
        "partial": ex.partial,
    }
