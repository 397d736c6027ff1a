"""``metriqo-bridge verify``: prove that accepted points landed, from the spool's audit and
``GET /metrics?interval=1m`` (the verdicts and what they can prove:
:mod:`bridge.reconcile.landed`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime

import orjson

from bridge.api.client import ApiClient
from bridge.api.models import Aggregate
from bridge.cli.api_tools import (
    add_location,
    api_client,
    api_failed,
    duration_s,
    read_spool,
    settings_and_notes,
)
from bridge.cli.command import Subparsers
from bridge.errors import EX_FAILURE, EX_OK, ApiError, ApiNotFound
from bridge.reconcile.landed import VERDICTS, Finding, Report, judge, sample, series_windows
from bridge.spool.audit import MINUTE_US, AuditRow


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "verify",
        help="check a sample of the accepted points against GET /metrics (1m aggregates)",
        description="Compare a random sample of the minutes in the spool's audit of accepted "
        "points (count, sum, min, max per device, metric and minute) with what GET /metrics "
        "answers at interval=1m: gaps (the API lacks the minute), missing (an accepted min or "
        "max is not stored), extra (the API holds values the bridge did not send) and avg (a "
        "point between them differs). One query per device and metric, within the metrics "
        "budget (300/min). Safe beside a running bridge. See docs/guide/verify.md.",
        epilog="exit codes: 0 every checked minute agrees (or there was nothing to check), 1 a "
        "gap or mismatch, 66 no spool, 69 the API failed, 78 invalid settings.",
    )
    add_location(p)
    p.add_argument(
        "--since",
        type=duration_s,
        default=3600.0,
        metavar="AGE",
        help="minutes of points timestamped within AGE (30m, 1h, 2d; default 1h)",
    )
    p.add_argument(
        "--device",
        action="append",
        default=[],
        dest="devices",
        metavar="D",
        help="only this device (repeatable)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=50,
        metavar="N",
        help="minutes to check, chosen at random (default 50)",
    )
    p.add_argument("--seed", type=int, metavar="S", help="random seed, to repeat a sample")
    p.add_argument(
        "--settle",
        type=duration_s,
        default=60.0,
        metavar="AGE",
        help="skip minutes that ended less than AGE ago: points of them may still be in "
        "flight (default 60s; 0s checks every minute)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_and_notes(args)
    now_us = int(time.time() * 1_000_000)
    since_us = now_us - int(args.since * 1_000_000)
    until_us = now_us - int(args.settle * 1_000_000) - MINUTE_US + 1  # minute ended by then
    rows = read_spool(settings, lambda s: s.audit.rows(since_us, until_us, args.devices))
    chosen = sample(rows, max(0, args.sample), args.seed)
    try:
        report = asyncio.run(check_sample(api_client(settings), chosen, len(rows)))
    except ApiError as exc:
        return api_failed(exc)
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_json()).decode() + "\n")
    else:
        _print(report)
    return EX_OK if report.ok else EX_FAILURE


async def check_sample(client: ApiClient, rows: list[AuditRow], candidates: int) -> Report:
    findings: list[Finding] = []
    queries = 0
    async with client as api:
        for (device, metric), (start, end) in series_windows(rows).items():
            queries += 1
            try:
                series = await api.metrics(device, metric, _time(start), _time(end), "1m")
                buckets = {_us(a.t): a for a in series.data}
            except ApiNotFound:
                buckets = {}  # the API knows no such device: every minute is a gap
            findings.extend(
                judge(r, buckets.get(r.minute_us))
                for r in rows
                if (r.device_id, r.metric) == (device, metric)
            )
    return Report(tuple(findings), candidates, queries)


def _time(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


def _us(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000 + t.microsecond


def _minute(us: int) -> str:
    return _time(us).strftime("%Y-%m-%dT%H:%MZ")


def _print(report: Report) -> None:
    counts = ", ".join(f"{report.count(v)} {v}" for v in VERDICTS if report.count(v))
    print(
        f"verify: {len(report.findings)} of {report.candidates} accepted minute(s) checked "
        f"with {report.queries} GET /metrics quer{'y' if report.queries == 1 else 'ies'}"
        + (f": {counts}" if counts else "")
    )
    bad = [f for f in report.findings if f.verdict != "agree"]
    if not bad:
        return
    head = ("VERDICT", "DEVICE", "METRIC", "MINUTE", "ACCEPTED n/min/max/avg", "API min/max/avg")
    lines = [head]
    for f in bad:
        r = f.row
        api = "-" if f.api is None else _triple(f.api)
        lines.append(
            (
                f.verdict,
                r.device_id,
                r.metric,
                _minute(r.minute_us),
                f"{r.n}/{r.lo:g}/{r.hi:g}/{f.accepted_avg:g}",
                api,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _triple(a: Aggregate) -> str:
    return f"{a.min:g}/{a.max:g}/{a.avg:g}"
