"""Tools for writing a mapping file: rule-order warnings for ``check`` and ``explain``.

Pure functions over compiled rules. ``check`` warns about rules that can never match (an earlier
filter matches every topic theirs can) and about rules whose filters overlap (topics in the
overlap go to the earlier rule). ``explain`` runs one message through the real :class:`Mapper`
and says which rule took it and why the earlier ones did not, down to the request body the
sender would POST (packed by the sender's own :mod:`bridge.batcher`).

Filter containment follows the MQTT matching rules exactly, as :meth:`TopicFilter.match` does:
``+`` and ``{name}`` match any one level, including an empty one; ``a/#`` also matches ``a``
itself; and a filter whose first level is a wildcard never matches a topic starting with ``$``.
Regex levels (``{name:REGEX}``) are judged conservatively, so that a warning is never wrong: a
regex level covers only a literal it matches or the same regex, and an overlap between regex
levels is reported only when one of a few sample levels fits both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from bridge.batcher import take_batch
from bridge.config.yamlfile import load_yaml_file
from bridge.mapping.mapper import Mapper, Rule
from bridge.mapping.timestamps import format_timestamp
from bridge.mapping.topics import TopicFilter
from bridge.models import Record
from bridge.spool.store import SpooledRecord

# Levels an example topic tries where both filters accept any level (regexes permitting).
_SAMPLES = ("x", "0", "1", "a", "A", "x1", "-", "_", "")


def _first_is_wildcard(filt: TopicFilter) -> bool:
    return filt.levels[0] is None if filt.levels else filt.tail


def _starts_with_dollar(filt: TopicFilter) -> bool:
    first = filt.levels[0] if filt.levels else None
    return first is not None and first.startswith("$")


def _min_levels(filt: TopicFilter) -> int:
    # A topic has at least one level, so "#" (no levels before the tail) needs one too.
    return max(len(filt.levels), 1) if filt.tail else len(filt.levels)


def _pattern(filt: TopicFilter, i: int) -> re.Pattern[str] | None:
    return filt.patterns[i] if i < len(filt.patterns) else None


def _fits(level: str, *patterns: re.Pattern[str] | None) -> bool:
    return all(p is None or p.fullmatch(level) for p in patterns)


def covers(a: TopicFilter, b: TopicFilter) -> bool:
    """True when every topic matching ``b`` also matches ``a`` (see the module docstring)."""
    na, nb = len(a.levels), len(b.levels)
    if a.tail:
        if _min_levels(b) < na:
            return False
    elif b.tail or nb != na:
        return False
    # [MQTT-4.7.2-1]: b's '$' topics (b's first level is a literal '$...') escape a's wildcard.
    if _first_is_wildcard(a) and _starts_with_dollar(b):
        return False
    for i, want in enumerate(a.levels):
        # Levels of b past its own length (under its '#') are unconstrained.
        got = b.levels[i] if i < nb else None
        if want is not None:
            if got != want:
                return False
            continue
        pattern = _pattern(a, i)
        if pattern is None:
            continue
        if got is not None:
            if not pattern.fullmatch(got):
                return False
            continue
        other = _pattern(b, i) if i < nb else None
        if other is None or (other.pattern, other.flags) != (pattern.pattern, pattern.flags):
            return False
    return True


def example_topic(a: TopicFilter, b: TopicFilter) -> str | None:
    """A topic matching both filters, or None when there is none (or none is found for regex
    levels)."""
    na, nb = len(a.levels), len(b.levels)
    if not a.tail and not b.tail:
        if na != nb:
            return None
        length = na
    elif not a.tail:
        if na < _min_levels(b):
            return None
        length = na
    elif not b.tail:
        if nb < _min_levels(a):
            return None
        length = nb
    else:
        length = max(na, nb, 1)
    parts: list[str] = []
    for i in range(length):
        x = a.levels[i] if i < na else None
        y = b.levels[i] if i < nb else None
        if x is not None and y is not None and x != y:
            return None
        literal = x if x is not None else y
        candidates = (literal,) if literal is not None else _SAMPLES
        pa = _pattern(a, i) if i < na else None
        pb = _pattern(b, i) if i < nb else None
        level = next((c for c in candidates if _fits(c, pa, pb)), None)
        if level is None:
            return None
        parts.append(level)
    if parts[0].startswith("$") and (_first_is_wildcard(a) or _first_is_wildcard(b)):
        return None
    return "/".join(parts)


def mismatch(filt: TopicFilter, levels: Sequence[str]) -> str | None:
    """Why a topic (split on ``/``) does not match ``filt``, in a few words; None if it does."""
    n, got = len(filt.levels), len(levels)
    if filt.tail and got < n:
        return f"topic has {_levels(got)}, filter needs at least {n}"
    if not filt.tail and got != n:
        return f"topic has {_levels(got)}, filter {n}"
    if levels[0].startswith("$") and _first_is_wildcard(filt):
        return "topic starts with '$', which a wildcard first level never matches"
    for i, want in enumerate(filt.levels):
        if want is not None and levels[i] != want:
            return f"level {i + 1} {levels[i]!r} ≠ {want!r}"
        pattern = _pattern(filt, i)
        if pattern is not None and not pattern.fullmatch(levels[i]):
            return f"level {i + 1} {levels[i]!r} does not match /{pattern.pattern}/"
    return None


def _levels(n: int) -> str:
    return f"{n} level" if n == 1 else f"{n} levels"


# --- check: rule-order warnings ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleWarning:
    """A rule that the first-match order makes unreachable or partly unreachable.

    Attributes:
        kind: ``shadowed`` (the rule never matches) or ``overlap`` (some of its topics go to
            an earlier rule).
        index: position of the rule in the file (0-based, as in ``rules[i]``).
        rule: its name.
        other_index: position of the earlier rule that takes the topics.
        other_rule: that rule's name.
        example: a topic both rules match, which goes to the earlier one (None when none was
            constructed: a shadowing regex level).
        message: the explanation, without file, line or rule.
        line: line of the rule's ``topic`` key, when known.
    """

    kind: Literal["shadowed", "overlap"]
    index: int
    rule: str
    other_index: int
    other_rule: str
    example: str | None
    message: str
    line: int | None = None


def rule_warnings(rules: Sequence[Rule], lines: Sequence[int | None] = ()) -> list[RuleWarning]:
    """Warnings about rule order, in rule order; ``lines[i]`` is rule i's ``topic`` line.

    A rule is reported as shadowed by the first earlier rule that covers it (and nothing else is
    said about it); otherwise each earlier rule it overlaps without either covering the other is
    reported. An earlier, narrower rule inside a later, broader one is the intended
    specific-before-general order and is not reported, and neither is an earlier rule with
    ``continue: true`` (its topics go on to later rules). Shadowing by the union of several
    earlier filters (``a/#`` after both ``a`` and ``a/+/#``) is not detected.
    """
    out: list[RuleWarning] = []
    for j, rule in enumerate(rules):
        line = lines[j] if j < len(lines) else None
        found: list[RuleWarning] = []
        for i, earlier in enumerate(rules[:j]):
            if earlier.keep_going and not earlier.ignore:
                continue  # "continue: true": its topics go on to later rules as well
            a, b = earlier.topic, rule.topic
            example = example_topic(a, b)
            if covers(a, b):
                message = (
                    f"never matches: rules[{i}] ({earlier.name}) {a.text!r} comes first and "
                    f"matches every topic {b.text!r} matches; move this rule above it or remove it"
                )
                found = [
                    RuleWarning("shadowed", j, rule.name, i, earlier.name, example, message, line)
                ]
                break
            if example is not None and not covers(b, a):
                fate = "are ignored by it" if earlier.ignore else f"go to {earlier.name} only"
                message = (
                    f"overlaps rules[{i}] ({earlier.name}) {a.text!r}: topics matching both, "
                    f"e.g. {example!r}, {fate}"
                )
                found.append(
                    RuleWarning("overlap", j, rule.name, i, earlier.name, example, message, line)
                )
        out.extend(found)
    return out


def topic_lines(path: Path) -> list[int | None]:
    """Line of each rule's ``topic`` key in a mapping file, in file order.

    Meant for a file :func:`bridge.mapping.loader.load_mappings` has accepted: it compiles every
    rule or raises, so index i here is index i of the compiled rules.
    """
    data, index = load_yaml_file(path)
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        return []
    return [index.line_of(("rules", i, "topic")) for i in range(len(rules))]


def format_warning(warning: RuleWarning, file: str) -> str:
    """``warning: FILE:LINE: rules[i] (name): message``."""
    where = file if warning.line is None else f"{file}:{warning.line}"
    return f"warning: {where}: rules[{warning.index}] ({warning.rule}): {warning.message}"


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
            :data:`MAX_POINTS` points, built by the sender's own batcher (see :attr:`body`).
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


def explain(mapper: Mapper, topic: str, payload: bytes, received_us: int) -> Explanation:
    """Run one message through ``mapper`` and record every decision on the way."""
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
        failures=tuple((f.reason, f.detail) for f in mapped.failures),
        ignored=mapped.ignored,
        fallback_times=mapped.replaced_timestamps,
        skipped_readings=mapped.skipped_readings,
        requests=request_bodies(mapped.records),
    )


MAX_POINTS = 100  # the API's limit per request, and the default batch.max_points


def request_bodies(
    records: Sequence[Record], max_points: int = MAX_POINTS
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


def _value(value: float) -> str:
    # Whole numbers print as integers (counters: "10422", not "10422.0"); the rest in full.
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


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
            f"{'points' if n == 0 else '':8}{p.metric} = {_value(p.value)}"
            for n, p in enumerate(points)
        )
    if ex.applied:
        for n, (reason, detail) in enumerate(ex.failures):
            text = f"{reason}: {detail}" if detail else reason
            lines.append(f"{'failed' if n == 0 else '':8}{text}")
    if ex.skipped_readings:
        lines.append(f"skipped {ex.skipped_readings} reading(s) left out by 'where'")
    for n, request in enumerate(ex.requests):
        lines.extend(_body_lines(list(request), n, len(ex.requests)))
    lines.append(f"result  {_result(ex)}")
    return "\n".join(lines)


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
        "dead_lettered": ex.dead_lettered,
        "partial": ex.partial,
    }
