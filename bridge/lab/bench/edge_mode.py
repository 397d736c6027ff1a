"""``bench edge``: a backlog and a live flow at once, on one core and in 256 MB
(:mod:`bridge.lab.bench.edge`).

The gateway was offline: ``--messages`` (100,000) are queued for the bridge's persistent
session while it is stopped. Then it starts, confined, while a publisher sends ``--rate``
(500) messages/s live for ``--seconds``. It keeps up when the backlog is gone and the live
flow is delivered as it comes: the report gives when the backlog's last point reached the API
(``seconds to catch up``, from the start), the live messages' latency after that, every point
checked (lost, duplicated), CPU, the bridge's peak RSS and the cgroup's peak, and the disk
writes per point. The live publisher's messages continue the backlog's numbering, so one
ledger checks both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bridge.errors import EX_FAILURE, EX_OK
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.apiserver.store import RequestRecord
from bridge.lab.bench.edge import Confinement, confined
from bridge.lab.bench.phases import FIELDS as PHASE_FIELDS
from bridge.lab.bench.report import (
    TARGET_LATENCY_OVER_LINGER_S,
    Report,
    Sample,
    add_disk_writes,
    percentile,
    render_targets,
    rss_target,
    summarize,
    target,
)
from bridge.lab.bench.workspace import (
    DEVICES,
    await_delivery,
    bridge_settings,
    collector_paused,
)
from bridge.lab.broker import LocalBroker, free_port
from bridge.lab.localrun import (
    BENCH_MAPPINGS,
    METRICS_PER_MESSAGE,
    BridgeProcess,
    ProcessPublisher,
    message_index_ms,
    message_payload,
)

EDGE_RATE = 500.0  # live messages/s while the backlog drains
EDGE_MEMORY_MB = 256


@dataclass(slots=True)
class EdgeReport:
    """What ``bench edge`` measured, beside the usual :class:`Report` of the whole run."""

    mode: str
    confinement: str
    backlog_messages: int
    live_messages: int
    live_rate: float
    seconds_to_catch_up: float
    live_latency_p99_after_catch_up_s: float
    cgroup_peak_mb: float
    run: dict[str, object] = field(default_factory=dict)
    targets: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class EdgeBench:
    """One edge run; see the module docstring."""

    def __init__(self, args: argparse.Namespace, workdir: Path, broker: LocalBroker) -> None:
        self.args = args
        self.workdir = workdir
        self.broker = broker
        self.rate = float(args.rate if args.rate is not None else EDGE_RATE)
        self.backlog = int(args.messages)
        self.live = int(self.rate * args.seconds)
        self.base_ms = int(time.time() * 1000) - 10 * 86_400_000
        self.token = "mqk_bench_" + secrets.token_hex(16)
        (workdir / "bench-mappings.yaml").write_text(BENCH_MAPPINGS, encoding="utf-8")
        self.api_port = free_port()
        self.settings = bridge_settings(args, broker, workdir, self.api_port, "metriqo-edge")
        self.samples: list[Sample] = []
        self.t0 = 0.0

    async def run(self) -> int:
        """Print the report (and write it as JSON); 0 when nothing was lost."""
        with confined("0", int(self.args.memory_mb)) as box, collector_paused():
            report = await self._measure(box)
        print(render_edge(report))
        if self.args.json_out is not None:
            self.args.json_out.write_text(
                json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8"
            )
        return EX_OK if not report.problems else EX_FAILURE

    async def _measure(self, box: Confinement) -> EdgeReport:
        bridge = BridgeProcess(self.workdir, self.settings, self.token, env=box.env)
        bridge.prefix = box.prefix
        queued = ProcessPublisher(self.broker.port, self.backlog, self.base_ms, DEVICES)
        live = ProcessPublisher(self.broker.port, self.live, self.base_ms + self.backlog, DEVICES)
        limit = self.args.api_limit  # none by default: the bridge's own speed, as in backlog
        async with LocalApi(self.token, port=self.api_port, rate_limit_per_minute=limit) as api:
            try:
                bridge.start()
                await asyncio.to_thread(bridge.wait_ready)
                bridge.stop()  # the session stays on the broker and queues the backlog
                await asyncio.to_thread(queued.run, None)
                print(f"bench: {self.backlog} messages queued; starting the confined bridge")
                self.t0 = t0 = time.time()
                bridge.start()
                # Up, not ready: on one busy core, connecting under a backlog can take long,
                # and the live flow goes on regardless (the broker queues it behind).
                await asyncio.to_thread(bridge.wait_alive, 120.0)
                sampler = asyncio.create_task(self._sample(bridge, t0))
                await asyncio.to_thread(live.run, self.rate)
                window = (0.0, time.time() - t0)
                delivered = await await_delivery(
                    api, bridge, (self.backlog + self.live) * METRICS_PER_MESSAGE, self.args.timeout
                )
                written = bridge.write_bytes()
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
                await self._sample_once(bridge, t0)
            finally:
                code = await asyncio.to_thread(bridge.stop)
                queued.close()
                live.close()
            await api.settle()  # see BridgeProcess.stop
            cgroup_peak = box.peak_mb()
            requests = list(api.store.requests)
        total = self.backlog + self.live
        report = summarize(
            "edge",
            total,
            self.base_ms,
            published_at=queued.published_at + live.published_at,
            requests=requests,
            samples=self.samples,
            publish_window=window,
            t0_wall=t0,
        )
        payload = sum(len(message_payload(i, self.base_ms)) for i in range(1000))
        add_disk_writes(report, written, payload / 1000)
        if not delivered:
            report.problems.append(f"not everything arrived within {self.args.timeout:.0f} s")
        if code != 0:
            report.problems.append(f"the bridge exited with {code}: {bridge.log()[-1000:]}")
        return self._edge_report(report, box, cgroup_peak, live.published_at, requests)

    def _edge_report(
        self,
        report: Report,
        box: Confinement,
        cgroup_peak: float,
        live_at: list[float],
        requests: list[RequestRecord],
    ) -> EdgeReport:
        caught = _backlog_delivered(requests, self.base_ms, self.backlog) - self.t0
        late = _live_latencies(requests, self.base_ms, self.backlog, live_at, self.t0 + caught)
        edge = EdgeReport(
            mode="edge",
            confinement=box.how,
            backlog_messages=self.backlog,
            live_messages=self.live,
            live_rate=self.rate,
            seconds_to_catch_up=round(caught, 1),
            live_latency_p99_after_catch_up_s=round(percentile(late, 99), 3),
            cgroup_peak_mb=cgroup_peak,
            run={k: v for k, v in asdict(report).items() if k not in ("targets", "problems")},
            problems=list(report.problems),
        )
        linger = float(self.settings.get("batch.linger_s", "1.0"))
        targets = [
            target("points lost", float(report.points_lost), "<=", 0.0),
            target("points duplicated", float(report.points_duplicated), "<=", 0.0),
            target(
                "seconds to catch up (last backlog point at the API, from the start)",
                edge.seconds_to_catch_up,
                "<=",
                float(self.args.seconds),
            ),
            target(
                "live p99 latency after catching up (s)",
                edge.live_latency_p99_after_catch_up_s,
                "<=",
                round(linger + TARGET_LATENCY_OVER_LINGER_S, 3),
            ),
            rss_target(report.peak_rss_mb),
        ]
        edge.targets = [asdict(t) for t in targets]
        return edge

    async def _sample(self, bridge: BridgeProcess, t0: float) -> None:
        while True:
            await self._sample_once(bridge, t0)
            await asyncio.sleep(0.5)

    async def _sample_once(self, bridge: BridgeProcess, t0: float) -> None:
        with contextlib.suppress(OSError, ValueError):
            points = await asyncio.to_thread(bridge.spool_points)
            cpu, rss = bridge.cpu_and_rss()
            self.samples.append(Sample(round(time.time() - t0, 3), points, cpu, rss))


def _backlog_delivered(requests: list[RequestRecord], base_ms: int, backlog: int) -> float:
    """When (wall clock) the last point of the backlog reached the API (NaN: never)."""
    last = math.nan
    for r in requests:
        if r.status != 201 or not isinstance(r.body, list):
            continue
        for obj in r.body:
            if isinstance(obj, dict):
                i = message_index_ms(str(obj["timestamp"])) - base_ms
                if 0 <= i < backlog:
                    t = r.received_wall.timestamp()
                    last = t if math.isnan(last) else max(last, t)
    return last


def _live_latencies(
    requests: list[RequestRecord], base_ms: int, backlog: int, live_at: list[float], after: float
) -> list[float]:
    """Publish-to-API latency of the live messages published after ``after`` (wall clock,
    when the bridge had caught up)."""
    if math.isnan(after):
        return []
    out: list[float] = []
    seen: set[int] = set()
    for r in requests:
        if r.status != 201 or not isinstance(r.body, list):
            continue
        arrived = r.received_wall.timestamp()
        for obj in r.body:
            if not isinstance(obj, dict):
                continue
            i = message_index_ms(str(obj["timestamp"])) - base_ms - backlog
            if 0 <= i < len(live_at) and i not in seen and live_at[i] >= after:
                seen.add(i)
                out.append(arrived - live_at[i])
    return out


def render_edge(report: EdgeReport) -> str:
    """The run's table, then the edge figures, targets and verdict."""
    run = report.run
    width = 36
    # The drain's phases are a backlog's alone: here a live flow runs through the drain.
    skip = ("settings", *PHASE_FIELDS)
    lines = [f"{k.replace('_', ' '):<{width}}  {v}" for k, v in run.items() if k not in skip]
    for k, v in asdict(report).items():
        if k not in ("run", "targets", "problems", "mode"):
            lines.append(f"{k.replace('_', ' '):<{width}}  {v}")
    lines += render_targets(report.targets)
    problems = report.problems
    verdict = "OK: nothing lost" if not problems else "PROBLEMS: " + "; ".join(problems)
    return "\n".join([*lines, verdict])
