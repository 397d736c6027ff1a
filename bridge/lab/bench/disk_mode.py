"""``bench disk``: the bytes the spool writes per point in a live flow, and where they go.

In this process, on the real spool (:class:`bridge.spool.store.Spool`, durable commits as
shipped) in a temporary directory: group commits of :data:`GROUP` four-metric messages, the
oldest waiting records taken in requests of 100 points and each request settled in a
transaction of its own while more than :data:`WAITING` records wait, as a live flow at a
steady rate runs. ``--sensors`` devices send in turn; their point timestamps span
``--span-seconds``, which is what the audit of accepted points (``verify``) grows with.

Two passes over the same flow:

- **bytes**: ``write_bytes`` of ``/proc/self/io`` over the run, per point, and the CPU time per
  message (the target is ``TARGET_DISK_BYTES_PER_POINT``, as in ``bench rate``);
- **census** (a third of the messages, automatic checkpoints off so the WAL keeps every
  frame): after each transaction, the pages it wrote (the WAL's frame headers), by the table
  or index they belong to (SQLite's ``dbstat``), per commit and per settlement. Skipped when
  this SQLite has no ``dbstat``.

Every point is accounted for: each must be committed once and settled once; anything else is a
problem (exit 1).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bridge.errors import EX_FAILURE, EX_OK
from bridge.lab.bench.report import TARGET_DISK_BYTES_PER_POINT, render_targets, target
from bridge.models import Record
from bridge.settings import SpoolSettings
from bridge.spool.census import PageCensus
from bridge.spool.store import Spool

GROUP = 48  # messages per group commit: about 25 ms of a 2,000 msg/s flow
WAITING = 500  # records left waiting: the requests in flight and the next batch
REQUEST_POINTS = 100  # the API's most points per request
METRICS = ("cpu_temp", "mem_used_mb", "uptime_sec", "error_count")
T0_US = 1_795_681_920_000_000


@dataclass(slots=True)
class DiskReport:
    """``bench disk``: bytes written per point, CPU per message, pages per transaction."""

    mode: str
    messages: int
    sensors: int
    span_seconds: float
    points: int = 0
    write_bytes: int = 0
    bytes_per_point: float = 0.0
    cpu_us_per_message: float = 0.0
    file_kib: int = 0
    census: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> b-tree -> pages
    transactions: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    targets: list[dict[str, object]] = field(default_factory=list)


def flow(messages: int, sensors: int, span_s: float) -> list[list[Record]]:
    """The messages, as the group commits they arrive in."""
    step_us = max(1, int(span_s * 1_000_000 / max(1, messages)))
    groups: list[list[Record]] = []
    for start in range(0, messages, GROUP):
        group = []
        for i in range(start, min(messages, start + GROUP)):
            ts = T0_US + i * step_us
            values = (20.0 + i % 7, 512.0 + i % 13, float(i), float(i % 3))
            group.append(
                Record(
                    f"site-{i % sensors // 100}-dev-{i % sensors}",
                    ts,
                    dict(zip(METRICS, values, strict=True)),
                    ts,
                )
            )
        groups.append(group)
    return groups


def _drive(
    spool: Spool,
    groups: list[list[Record]],
    after: Callable[[str], None] = lambda kind: None,
) -> tuple[int, int]:
    """Commit each group, settling requests while more than :data:`WAITING` wait (all of them
    at the end); returns (points committed, points settled)."""
    committed = settled = 0
    outbox = spool.outbox
    for n, group in enumerate(groups):
        committed += spool.commit(group, []).points_inserted
        after("commit")
        last = n == len(groups) - 1
        while spool.file.depth_records > (0 if last else WAITING):
            batches = outbox.take_batches(
                1, REQUEST_POINTS, single_object=False, newest_first=False
            )
            if not batches:
                break
            # With each record's points, as the bridge's delivery settles them.
            outbox.delivered(batches[0].seqs, [r.points for r in batches[0].records])
            settled += batches[0].points
            after("settle")
    return committed, settled


def _written() -> int:
    with open("/proc/self/io", encoding="ascii") as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def _open(workdir: Path, name: str) -> Spool:
    spool = Spool(SpoolSettings(workdir / name / "spool.db", reserve_bytes=0))
    spool.open()
    return spool


def measure(messages: int, sensors: int, span_s: float) -> DiskReport:
    """Both passes (module docstring), each on a new spool file."""
    report = DiskReport("disk", messages, sensors, span_s)
    groups = flow(messages, sensors, span_s)
    offered = sum(len(r.metrics) for g in groups for r in g)
    with tempfile.TemporaryDirectory(prefix="metriqo-bench-disk-") as tmp:
        spool = _open(Path(tmp), "bytes")
        try:
            written, cpu = _written(), time.process_time()
            committed, settled = _drive(spool, groups)
            report.write_bytes = _written() - written
            report.cpu_us_per_message = round((time.process_time() - cpu) / messages * 1e6, 1)
            report.file_kib = spool.file.path.stat().st_size // 1024
        finally:
            spool.close()
        report.points = settled
        report.bytes_per_point = round(report.write_bytes / max(1, settled), 1)
        if not committed == settled == offered:
            report.problems.append(
                f"{offered} points offered, {committed} committed, {settled} settled"
            )
        spool = _open(Path(tmp), "census")
        try:
            census = PageCensus(spool.file)
            if census.start():  # else this SQLite has no dbstat: no census
                _drive(spool, groups[: max(1, len(groups) // 3)], census.take)
                report.census = census.per_transaction()
                report.transactions = dict(census.transactions)
        finally:
            spool.close()
    report.targets = [
        asdict(
            target(
                "spool bytes written per point, live flow",
                report.bytes_per_point,
                "<=",
                TARGET_DISK_BYTES_PER_POINT,
            )
        )
    ]
    return report


def render_disk(report: DiskReport) -> str:
    lines = [
        f"the spool in a live flow: {report.messages} messages of 4 metrics from "
        f"{report.sensors} devices over {report.span_seconds:g} s of timestamps, commits of "
        f"{GROUP}, requests of {REQUEST_POINTS} points each settled alone, "
        f"{WAITING} waiting",
        f"  bytes written per point         {report.bytes_per_point:10.1f}",
        f"  CPU per message (commit+settle) {report.cpu_us_per_message:10.1f} µs",
        f"  spool file at the end           {report.file_kib:10d} KiB",
    ]
    for kind, pages in report.census.items():
        total = sum(pages.values())
        lines.append(f"  pages per {kind} ({report.transactions[kind]} transactions): {total:.1f}")
        lines += [f"    {name:36s} {n:6.2f}" for name, n in pages.items()]
    lines += render_targets(report.targets)
    ok = (
        "OK: every point committed and settled once"
        if not report.problems
        else ("PROBLEMS: " + "; ".join(report.problems))
    )
    return "\n".join([*lines, ok])


def run_disk_bench(args: argparse.Namespace) -> int:
    """``bench disk``: 0 when every point was committed and settled once."""
    report = measure(args.messages, args.sensors, args.span_seconds)
    print(render_disk(report))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return EX_OK if not report.problems else EX_FAILURE
