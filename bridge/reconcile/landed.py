"""``verify``: the spool's audit of accepted points against ``GET /metrics?interval=1m``.

For each sampled (device, metric, minute) the audit knows the count, sum, min and max of the
points the API accepted (:mod:`bridge.spool.audit`); the API answers the min, max and average
of the points it holds in that minute. The verdicts, strongest first:

- ``gap``: the API has no bucket for the minute: every accepted point of it is gone.
- ``missing``: the API's min is above the accepted min, or its max below the accepted max:
  an accepted extreme value is not stored (deleted or changed).
- ``extra``: the API's min is below or its max above what the bridge delivered: it holds
  values the bridge did not send (another writer of the same device and metric, or a batch
  accepted but not yet settled in the spool when the audit was read).
- ``avg``: min and max agree, the average does not: a point between them is missing, changed
  or extra (a batch re-sent after a crash is stored twice by an API without de-duplication,
  which moves the average but never the min or max).
- ``agree``: all three agree (within :func:`avg_tolerance` for the average).

What this cannot prove: that a point whose value equals its minute's average, or one of
several equal extremes, is stored (removing it changes nothing the API reports); nor the
timestamp of a point within its minute. The API's aggregates have no count, so two changes
that cancel out in the average go unseen.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from bridge.api.models import Aggregate
from bridge.spool.audit import MINUTE_US, AuditRow

Verdict = Literal["agree", "gap", "missing", "extra", "avg"]
VERDICTS: tuple[Verdict, ...] = ("agree", "gap", "missing", "extra", "avg")
_EPS = 1e-9  # relative: the API's average and the audit's sum/count round differently


@dataclass(frozen=True, slots=True)
class Finding:
    """One sampled minute and its verdict."""

    row: AuditRow
    verdict: Verdict
    api: Aggregate | None  # None: no bucket (gap)

    @property
    def accepted_avg(self) -> float:
        return self.row.total / self.row.n

    def as_json(self) -> dict[str, object]:
        r = self.row
        return {
            "device_id": r.device_id,
            "metric": r.metric,
            "minute": datetime.fromtimestamp(r.minute_us // 1_000_000, UTC)
            .isoformat()
            .replace("+00:00", "Z"),
            "minute_us": r.minute_us,
            "verdict": self.verdict,
            "accepted": {"count": r.n, "min": r.lo, "max": r.hi, "avg": self.accepted_avg},
            "api": None
            if self.api is None
            else {"min": self.api.min, "max": self.api.max, "avg": self.api.avg},
        }


def avg_tolerance(row: AuditRow) -> float:
    """How far the averages may differ by rounding alone: relative to the largest magnitude,
    growing with the count (each addition to the sum may round)."""
    scale = max(1.0, abs(row.lo), abs(row.hi))
    return _EPS * scale * max(1, row.n)


def judge(row: AuditRow, api: Aggregate | None) -> Finding:
    """The verdict of one audit row against the API's bucket of its minute (module docstring)."""
    if api is None:
        return Finding(row, "gap", None)
    if api.min > row.lo or api.max < row.hi:
        return Finding(row, "missing", api)
    if api.min < row.lo or api.max > row.hi:
        return Finding(row, "extra", api)
    if not math.isclose(api.avg, row.total / row.n, rel_tol=0.0, abs_tol=avg_tolerance(row)):
        return Finding(row, "avg", api)
    return Finding(row, "agree", api)


def sample(rows: Sequence[AuditRow], n: int, seed: int | None = None) -> list[AuditRow]:
    """Up to ``n`` rows chosen at random (all of them when there are fewer), in the audit's
    order (device, metric, minute), so each series needs one query."""
    if len(rows) <= n:
        return list(rows)
    picked = sorted(random.Random(seed).sample(range(len(rows)), n))  # noqa: S311 - not secret
    return [rows[i] for i in picked]


def series_windows(rows: Iterable[AuditRow]) -> dict[tuple[str, str], tuple[int, int]]:
    """(device, metric) → [first minute, end of the last minute) to query, in µs."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for r in rows:
        key = (r.device_id, r.metric)
        lo, hi = out.get(key, (r.minute_us, r.minute_us + MINUTE_US))
        out[key] = (min(lo, r.minute_us), max(hi, r.minute_us + MINUTE_US))
    return out


@dataclass(frozen=True, slots=True)
class Report:
    """The findings of a run, and the queries it took."""

    findings: tuple[Finding, ...]
    candidates: int  # audit rows in the window, before sampling
    queries: int

    def count(self, verdict: Verdict) -> int:
        return sum(1 for f in self.findings if f.verdict == verdict)

    @property
    def ok(self) -> bool:
        return all(f.verdict == "agree" for f in self.findings)

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "candidates": self.candidates,
            "checked": len(self.findings),
            "queries": self.queries,
            "counts": {v: self.count(v) for v in VERDICTS},
            "findings": [f.as_json() for f in self.findings if f.verdict != "agree"],
        }
