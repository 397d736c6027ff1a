"""The demo's read-back check: ask the API over HTTP, as a user would (GET /devices, GET /metrics),
for every device and series the fleet produced, and compare with what it published.

Expectations per series:

- plain points with a payload time: there at exactly that time with exactly that value, once;
- points stamped with the bridge's receive time: matched by value and count (the fleet cannot
  know when the bridge received them);
- coalesced points with a payload time: one point per window, stamped with the window start,
  with the window's function of the published values (windows are aligned to the epoch);
- coalesced points stamped on receipt: the fleet publishes one constant value per series, so
  every window's last/avg/min/max is that value (a sum or count adds up to the published total),
  whichever windows the receive times fell into;
- points under a deadband: the spool's own decision (:func:`bridge.deadband.decide`) run over
  the series in publishing order gives the points that must arrive; the others are held back.
  Receive-stamped ones are decided in order with the heartbeat never reached (the demo is far
  shorter than any heartbeat), and then matched by value and count;
- ignore rules: nothing arrives, so the API lists no device the fleet did not expect (and the
  demo checks the bridge's ignored counter).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from bridge.deadband import Sent, decide
from bridge.lab.fleet_devices import ExpectedPoint

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_VALUE_FOLDS = ("last", "avg", "min", "max")


@dataclass(slots=True)
class Verification:
    """What querying the API over HTTP found, compared with what the fleet published."""

    devices_expected: int = 0
    devices_listed: int = 0
    devices_missing: list[str] = field(default_factory=list)
    devices_unexpected: list[str] = field(default_factory=list)
    series: int = 0
    receive_stamped: int = 0
    coalesced_series: int = 0
    points_expected: int = 0  # what the API must hold: coalesced windows count once
    points_found: int = 0
    missing: int = 0
    duplicated: int = 0
    unexpected: int = 0

    def problems(self) -> list[str]:
        """The failures as short phrases ("3 missing, 0 duplicated"); empty when all is well."""
        out = []
        if self.missing or self.duplicated:
            out.append(f"{self.missing} missing, {self.duplicated} duplicated")
        if self.unexpected:
            out.append(f"{self.unexpected} unexpected")
        if self.devices_missing:
            out.append(f"{len(self.devices_missing)} device(s) not listed")
        if self.devices_unexpected:
            out.append(f"{len(self.devices_unexpected)} unexpected device(s) listed")
        return out


def by_series(expected: list[ExpectedPoint]) -> dict[tuple[str, str], list[ExpectedPoint]]:
    """The expected points grouped per (device id, metric), in publishing order."""
    out: dict[tuple[str, str], list[ExpectedPoint]] = {}
    for p in expected:
        out.setdefault((p.device_id, p.metric), []).append(p)
    return out


def windows(points: list[ExpectedPoint]) -> list[ExpectedPoint]:
    """The points the spool makes of one coalesced series with payload times: one per window,
    at the window start, with the window's function of its values."""
    c = points[0].coalesce
    assert c is not None
    buckets: dict[int, list[ExpectedPoint]] = {}
    for p in points:
        assert p.timestamp_us is not None
        buckets.setdefault(p.timestamp_us - p.timestamp_us % c.window_us, []).append(p)
    out = []
    for start, group in buckets.items():
        values = [p.value for p in group]
        folded = {
            "last": max(group, key=lambda p: p.timestamp_us or 0).value,
            "avg": sum(values) / len(values),
            "min": min(values),
            "max": max(values),
            "sum": sum(values),
        }.get(c.function, float(len(values)))
        out.append(ExpectedPoint(group[0].device_id, group[0].metric, start, folded))
    return out


def sent_points(points: list[ExpectedPoint]) -> list[ExpectedPoint]:
    """The points of one series the spool sends: all of them without a deadband, else those
    its decision lets through, in publishing order."""
    if points[0].deadband is None:
        return points
    out: list[ExpectedPoint] = []
    last: Sent | None = None
    for i, p in enumerate(points):
        assert p.deadband is not None
        ts_us = p.timestamp_us if p.timestamp_us is not None else i
        send, last = decide(last, p.value, ts_us, p.deadband)
        if send:
            out.append(p)
    return out


def held_back(expected: list[ExpectedPoint]) -> int:
    """How many published points the spool's deadbands keep from the API."""
    return sum(len(s) - len(sent_points(s)) for s in by_series(expected).values())


def lowest_count(expected: list[ExpectedPoint]) -> int:
    """How many points the API holds at least once everything is delivered."""
    total = 0
    for series in by_series(expected).values():
        points = sent_points(series)
        if points[0].coalesce is None:
            total += len(points)
        elif points[0].timestamp_us is not None:
            total += len(windows(points))
        else:
            total += 1  # receive-time windows: at least one
    return total


def compare_series(
    points: list[ExpectedPoint], rows: list[dict[str, Any]], v: Verification
) -> None:
    """Count missing, duplicated and unexpected points of one series (see the module doc)."""
    points = sent_points(points)
    if points[0].coalesce is None:
        v.points_expected += len(points)
        _compare(points, rows, v)
    elif all(p.timestamp_us is not None for p in points):
        folded = windows(points)
        v.points_expected += len(folded)
        _compare(folded, rows, v)
    else:
        v.points_expected += len(rows) or 1
        _compare_folded(points, rows, v)


def _compare(points: list[ExpectedPoint], rows: list[dict[str, Any]], v: Verification) -> None:
    """Points with a payload timestamp must be there at exactly that time with exactly that
    value. Points stamped with the bridge's receive time can only be matched by value and
    count."""
    stamped = all(p.timestamp_us is not None for p in points)
    want: Counter[tuple[int | None, float]] = Counter(
        (p.timestamp_us if stamped else None, p.value) for p in points
    )
    got: Counter[tuple[int | None, float]] = Counter(
        (_micros(row["t"]) if stamped else None, float(row["avg"])) for row in rows
    )
    v.missing += (want - got).total()
    for key, extra in (got - want).items():
        if key in want:
            v.duplicated += extra
        else:
            v.unexpected += extra


def _compare_folded(
    points: list[ExpectedPoint], rows: list[dict[str, Any]], v: Verification
) -> None:
    """A series coalesced by receive time: which window a point fell into is the bridge's
    business, so check what holds for any split into windows."""
    c = points[0].coalesce
    assert c is not None
    if not rows:
        v.missing += 1
        return
    times = [row["t"] for row in rows]
    v.duplicated += len(times) - len(set(times))
    got = [float(row["avg"]) for row in rows]
    values = {p.value for p in points}
    if c.function in _VALUE_FOLDS and len(values) == 1:
        v.unexpected += sum(1 for g in got if g != next(iter(values)))
    elif c.function == "sum":
        v.unexpected += sum(got) != sum(p.value for p in points)
    elif c.function == "count":
        v.unexpected += sum(got) != len(points)
    if len(rows) > len(points):
        v.unexpected += len(rows) - len(points)


async def list_devices(http: aiohttp.ClientSession, base_url: str) -> set[str]:
    """Every device id GET /devices lists, page by page."""
    found: set[str] = set()
    page = 1
    while True:
        params = {"page": str(page), "per_page": "100"}
        async with http.get(f"{base_url}/devices", params=params) as resp:
            resp.raise_for_status()
            doc = await resp.json()
        found.update(row["device_id"] for row in doc["data"])
        if not doc["data"] or page * doc["pagination"]["per_page"] >= doc["pagination"]["total"]:
            return found
        page += 1


async def series(
    http: aiohttp.ClientSession,
    base_url: str,
    device_id: str,
    metric: str,
    window: tuple[datetime, datetime],
) -> list[dict[str, Any]]:
    """The points of one series in the time window, from GET /metrics."""
    start, end = window
    params = {
        "device_id": device_id,
        "metric": metric,
        "from": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "to": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    async with http.get(f"{base_url}/metrics", params=params) as resp:
        if resp.status == 404:  # the API knows no such device: every point of it is missing
            return []
        resp.raise_for_status()
        doc = await resp.json()
    rows: list[dict[str, Any]] = doc["data"]
    return rows


def _micros(text: str) -> int:
    return (datetime.fromisoformat(text) - _EPOCH) // _MICROSECOND
