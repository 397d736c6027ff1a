"""``metriqo-bridge bench replicas``: the same backlog drained by 1, 2, 3 … bridges in one MQTT
share group, each with its own client id, session and spool.

For each group size: start the bridges once (their sessions and shared subscriptions exist),
stop them, queue ``--messages`` messages (the broker spreads them over the members' sessions),
start them all and time the drain to the API. Every point is checked exactly once across the
group. On one machine the bridges share its cores with the broker, the publisher and the API,
so this shows how the group divides the work, not what N machines would do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bridge.errors import EX_FAILURE, EX_OK
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker, free_port
from bridge.lab.localrun import (
    BENCH_MAPPINGS,
    METRICS_PER_MESSAGE,
    BridgeProcess,
    ProcessPublisher,
)

_DEVICES = 20


@dataclass(slots=True)
class GroupRun:
    """One group size: how fast the group drained and how it split the work."""

    replicas: int
    messages: int
    seconds: float = 0.0
    messages_per_s: float = 0.0
    points_delivered: int = 0
    points_lost: int = 0
    points_duplicated: int = 0
    share_per_replica: list[int] = field(default_factory=list)
    cpu_s_per_1000_messages: float = 0.0
    peak_rss_mb_per_replica: float = 0.0
    problems: list[str] = field(default_factory=list)


def check_points(
    expected_ms: set[int], arrived: list[tuple[str, str, int]], metrics: int
) -> tuple[int, int, int]:
    """(delivered distinct, lost, duplicated) points, from (device, metric, ts_ms) arrivals and
    the message timestamps that were published (each carries ``metrics`` points)."""
    seen: dict[tuple[str, str, int], int] = {}
    for key in arrived:
        seen[key] = seen.get(key, 0) + 1
    per_message: dict[int, int] = {}
    for _device, _metric, ts in seen:
        per_message[ts] = per_message.get(ts, 0) + 1
    lost = sum(max(0, metrics - per_message.get(ts, 0)) for ts in expected_ms)
    duplicated = sum(n - 1 for n in seen.values())
    return len(seen), lost, duplicated


def render(runs: list[GroupRun]) -> str:
    """A table, one row per group size."""
    lines = [
        "replicas  messages/s  seconds  cpu s/1000 msgs  peak rss MB (each)  share per replica",
    ]
    for r in runs:
        lines.append(
            f"{r.replicas:8d}  {r.messages_per_s:10.1f}  {r.seconds:7.2f}  "
            f"{r.cpu_s_per_1000_messages:15.4f}  {r.peak_rss_mb_per_replica:18.1f}  "
            f"{r.share_per_replica}"
        )
    for r in runs:
        for p in r.problems:
            lines.append(f"PROBLEM ({r.replicas} replicas): {p}")
    return "\n".join(lines)


async def run_replicas(args: argparse.Namespace, workdir: Path, broker: LocalBroker) -> int:
    """Run each group size in turn; 0 when every point arrived exactly once."""
    sizes = [int(x) for x in str(args.replicas).split(",")]
    token = "mqk_bench_" + secrets.token_hex(16)
    (workdir / "bench-mappings.yaml").write_text(BENCH_MAPPINGS, encoding="utf-8")
    runs = []
    for size in sizes:
        print(f"bench: {args.messages} messages for a group of {size}", flush=True)
        runs.append(await _one_group(args, workdir, broker, token, size))
    print(render(runs))
    if args.json_out is not None:
        args.json_out.write_text(
            json.dumps([asdict(r) for r in runs], indent=2) + "\n", encoding="utf-8"
        )
    return EX_OK if all(not r.problems for r in runs) else EX_FAILURE


async def _one_group(
    args: argparse.Namespace, workdir: Path, broker: LocalBroker, token: str, size: int
) -> GroupRun:
    run = GroupRun(size, args.messages)
    api_port = free_port()
    group = f"bench-{size}"
    base_ms = int(time.time() * 1000) - 10 * 86_400_000  # one ms apart: base_ms + index
    bridges = []
    for i in range(size):
        home = workdir / f"group{size}-replica{i}"
        home.mkdir(parents=True)
        settings = {
            "mqtt.port": str(broker.port),
            "mqtt.client_id": f"metriqo-bench-{size}-{i}",
            "mqtt.share_group": group,
            "api.base_url": f"http://127.0.0.1:{api_port}/api/v2",
            "api.requests_per_minute": "1000000",
            "spool.path": str(home / "spool.db"),
            "mapping.file": str(workdir / "bench-mappings.yaml"),
            "mapping.reload_interval_s": "0",
            "log_level": "WARNING",
        }
        bridges.append(BridgeProcess(home, settings, token))
    async with LocalApi(token, port=api_port, rate_limit_per_minute=None) as api:
        try:
            for b in bridges:  # sessions and shared subscriptions first
                b.start()
            for b in bridges:
                await asyncio.to_thread(b.wait_ready)
            for b in bridges:
                await asyncio.to_thread(b.stop)
            publisher = ProcessPublisher(broker.port, args.messages, base_ms, _DEVICES)
            try:
                await asyncio.to_thread(publisher.run, None)
            finally:
                publisher.close()
            t0 = time.monotonic()
            for b in bridges:
                b.start()
            want = args.messages * METRICS_PER_MESSAGE
            deadline = t0 + args.timeout
            peak_rss = 0
            while len(api.store.points()) < want and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                for b in bridges:
                    if b.running:
                        peak_rss = max(peak_rss, b.rss_now())
            run.seconds = round(time.monotonic() - t0, 3)
            await asyncio.sleep(0.5)  # late duplicates would arrive now
            cpu = 0.0
            for b in bridges:
                used, hwm = b.cpu_and_rss()
                cpu += used
                peak_rss = max(peak_rss, hwm)
                run.share_per_replica.append(int(b.metric("metriqo_bridge_points_delivered_total")))
        finally:
            for b in bridges:
                await asyncio.to_thread(b.stop)
        await api.settle()  # see BridgeProcess.stop
        arrived = [
            (p.device_id, p.metric, round(p.timestamp.timestamp() * 1000))
            for p in api.store.points()
        ]
    expected = {base_ms + i for i in range(args.messages)}
    run.points_delivered, run.points_lost, run.points_duplicated = check_points(
        expected, arrived, METRICS_PER_MESSAGE
    )
    run.messages_per_s = round(args.messages / max(run.seconds, 1e-9), 1)
    run.cpu_s_per_1000_messages = round(cpu / args.messages * 1000, 4)
    run.peak_rss_mb_per_replica = round(peak_rss / 1e6, 1)
    if run.points_lost:
        run.problems.append(f"{run.points_lost} point(s) lost")
    if run.points_duplicated:
        run.problems.append(f"{run.points_duplicated} point(s) delivered twice")
    return run
