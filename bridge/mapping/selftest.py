"""Mapping tests kept in the mapping file (``tests:``), run by ``metriqo-bridge test``.

Each test is a topic, a payload and what must come of it: the exact points (device, time,
metric, value), the failure reasons, or that the message is ignored. The runner uses the real
mapper, so a passing test means the running bridge does the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from bridge.config.yamlfile import LineIndex
from bridge.mapping.mapper import Mapper, Rule
from bridge.mapping.spec import MappingTest
from bridge.mapping.timestamps import format_timestamp
from bridge.models import Record

Point = tuple[str, str | None, str, float]  # device, ISO time (None: receive time), metric, value


@dataclass(slots=True)
class TestOutcome:
    """The result of one mapping test."""

    index: int
    name: str
    line: int | None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when nothing differed."""
        return not self.problems


def run_mapping_tests(
    rules: list[Rule], tests: list[MappingTest], index: LineIndex | None = None
) -> list[TestOutcome]:
    """Run every test against ``rules``."""
    mapper = Mapper(rules)
    return [_run_one(mapper, i, t, index) for i, t in enumerate(tests)]


def payload_of(test: MappingTest) -> bytes:
    """A test's payload bytes (``ValueError`` for hex that is not)."""
    if test.payload_hex is not None:
        return bytes.fromhex(test.payload_hex)
    if test.payload is not None:
        return test.payload.encode("utf-8")
    return orjson.dumps(test.payload_json)


def _run_one(mapper: Mapper, i: int, test: MappingTest, index: LineIndex | None) -> TestOutcome:
    name = test.name or test.topic
    outcome = TestOutcome(i, name, index.line_of(("tests", i)) if index else None)
    given = [test.payload, test.payload_json, test.payload_hex]
    if sum(g is not None for g in given) != 1:
        outcome.problems.append(
            "give exactly one of 'payload' (text), 'payload_json' or 'payload_hex'"
        )
        return outcome
    try:
        payload = payload_of(test)
    except ValueError as exc:
        outcome.problems.append(f"payload_hex: {exc}")
        return outcome
    received_us = int(time.time() * 1_000_000)
    if test.received_at is not None:
        try:
            received = datetime.fromisoformat(test.received_at)
        except ValueError:
            outcome.problems.append(f"received_at {test.received_at!r} is not ISO 8601")
            return outcome
        received_us = int(received.timestamp() * 1_000_000)
    mapped = mapper.map(test.topic, payload, received_us)
    got_reasons = [f.reason for f in mapped.failures]
    if test.expect_ignored != mapped.ignored:
        state = "ignored" if test.expect_ignored else "not ignored"
        outcome.problems.append(f"expected the message to be {state} (rule {mapped.rule})")
    want_reasons = test.expect_failures or []
    if got_reasons != want_reasons:
        details = "; ".join(str(f) for f in mapped.failures) or "none"
        outcome.problems.append(f"failures: expected {want_reasons}, got {got_reasons} ({details})")
    got = _points_of(mapped.records, received_us)
    want = _expected_points(test)
    for p in sorted(want - got, key=str):
        outcome.problems.append(f"missing  {_show(p)}")
    for p in sorted(got - want, key=str):
        outcome.problems.append(f"extra    {_show(p)}")
    return outcome


def _points_of(records: list[Record], received_us: int) -> set[Point]:
    out: set[Point] = set()
    for r in records:
        ts = None if r.ts_us == received_us else format_timestamp(r.ts_us)
        for metric, value in r.metrics.items():
            out.add((r.device_id, ts, metric, round(value, 9)))
    return out


def _expected_points(test: MappingTest) -> set[Point]:
    out: set[Point] = set()
    for obj in test.expect or []:
        ts = None
        if obj.timestamp is not None:
            # Normalise the written form (offsets, precision) the way points are sent.
            parsed = datetime.fromisoformat(obj.timestamp)
            ts = format_timestamp(round(parsed.timestamp() * 1_000_000))
        for metric, value in obj.metrics.items():
            out.add((obj.device_id, ts, metric, round(value, 9)))
    return out


def _show(p: Point) -> str:
    device, ts, metric, value = p
    return f"{device} {metric} = {value!r} at {ts or 'receive time'}"


def format_outcomes(outcomes: list[TestOutcome], file: str) -> str:
    """PASS/FAIL lines with a diff per failure and a closing count."""
    lines = []
    for o in outcomes:
        where = f"{file}:{o.line}" if o.line else file
        lines.append(f"{'PASS' if o.passed else 'FAIL'}  {o.name}  ({where})")
        lines.extend(f"        {p}" for p in o.problems)
    failed = sum(1 for o in outcomes if not o.passed)
    lines.append(f"{len(outcomes) - failed} passed, {failed} failed")
    return "\n".join(lines)
