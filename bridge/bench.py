"""``metriqo-bridge bench``: measure the bridge on this machine the way a plant would use it.

A throwaway mosquitto, the local Metriqo-compatible API (in this process) and the bridge as its
own process (so its CPU time and memory are its own), with 4-metric JSON published at QoS 1:

- ``rate``: R messages/s for T seconds while the bridge runs. With ``--api-limit`` the API
  enforces a request rate limit (1,000/min is the real API's), so an input above what the API
  takes shows the backlog growing, then draining once the input stops.
- ``backlog``: N messages queued for the bridge's persistent session while it is stopped, then
  drained.

Every point is checked at the end: lost and duplicated points are reported, not assumed. The
summary functions are pure; :func:`run_bench` is the shell around them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bridge.apiserver import LocalApi, RequestRecord
from bridge.broker import BrokerUnavailable, LocalBroker, free_port
from bridge.localrun import (
    BENCH_MAPPINGS,
    METRICS_PER_MESSAGE,
    BridgeProcess,
    Publisher,
    message_index_ms,
)

EX_UNAVAILABLE = 69
_DEVICES = 20


# -- pure summary ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the bridge: seconds since the start, points waiting, CPU seconds, RSS."""

    t: float
    spool_points: float
    cpu_s: float
    rss_bytes: int


@dataclass(slots=True)
class Report:
    """What a run measured; ``problems`` is empty when nothing was lost."""

    mode: str
    messages: int
    points_published: int
    points_delivered: int
    points_lost: int
    points_duplicated: int
    seconds_publishing: float
    seconds_to_last_delivery: float
    messages_per_s_end_to_end: float
    points_per_s_end_to_end: float
    requests_accepted: int
    requests_429: int
    requests_other_errors: int
    points_per_request: float
    requests_per_min_mean: float
    requests_max_in_any_60s: int
    cpu_s_per_1000_messages: float
    peak_rss_mb: float
    latency_p50_s: float
    latency_p99_s: float
    backlog_peak_points: float
    backlog_growth_points_per_s: float
    backlog_growth_r2: float
    backlog_drained: bool
    settings: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def max_in_window(times: Sequence[float], window: float) -> int:
    """Most events in any half-open span of ``window`` seconds (the API's sliding window)."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and R² (NaN when there are fewer than 3 points or no spread)."""
    n = len(xs)
    if n < 3:
        return math.nan, math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    if sxx == 0 or syy == 0:
        return math.nan, math.nan
    return sxy / sxx, sxy * sxy / (sxx * syy)


def summarize(
    mode: str,
    messages: int,
    base_ms: int,
    *,
    published_at: Sequence[float],
    requests: Sequence[RequestRecord],
    samples: Sequence[Sample],
    publish_window: tuple[float, float],
    t0_wall: float,
) -> Report:
    """Turn what the API recorded and the bridge samples into a :class:`Report`.

    Args:
        published_at: wall-clock publish time of each message, by index.
        publish_window: (start, end) of publishing, seconds since ``t0_wall``.
    """
    seen: dict[tuple[int, str], int] = {}
    latencies: list[float] = []  # publish to first arrival: a duplicate is not a delay
    first_arrival: dict[int, float] = {}
    accepted = [r for r in requests if r.status == 201]
    for r in accepted:
        arrived = r.received_wall.timestamp()
        assert isinstance(r.body, list)
        for obj in r.body:
            assert isinstance(obj, dict)
            index = message_index_ms(str(obj["timestamp"])) - base_ms
            metrics = obj["metrics"]
            assert isinstance(metrics, dict)
            for name in metrics:
                key = (index, name)
                seen[key] = seen.get(key, 0) + 1
            if 0 <= index < len(published_at) and index not in first_arrival:
                first_arrival[index] = arrived
                latencies.append(arrived - published_at[index])
    published = messages * METRICS_PER_MESSAGE
    delivered_unique = sum(1 for (i, _m) in seen if 0 <= i < messages)
    duplicated = sum(n - 1 for n in seen.values())
    last = max((r.received_wall.timestamp() for r in accepted), default=t0_wall) - t0_wall
    start, end = publish_window
    elapsed = max(1e-9, last - start)
    points_accepted = sum(r.points_written for r in accepted)
    times = [r.received_wall.timestamp() for r in accepted]
    span_min = max(1e-9, (max(times) - min(times)) / 60) if len(times) > 1 else math.nan
    growing = [s for s in samples if start + 2 <= s.t <= end]
    slope, r2 = linear_fit([s.t for s in growing], [s.spool_points for s in growing])
    cpu = samples[-1].cpu_s - samples[0].cpu_s if len(samples) > 1 else math.nan
    report = Report(
        mode=mode,
        messages=messages,
        points_published=published,
        points_delivered=delivered_unique,
        points_lost=published - delivered_unique,
        points_duplicated=duplicated,
        seconds_publishing=round(end - start, 3),
        seconds_to_last_delivery=round(elapsed, 3),
        messages_per_s_end_to_end=round(messages / elapsed, 1),
        points_per_s_end_to_end=round(delivered_unique / elapsed, 1),
        requests_accepted=len(accepted),
        requests_429=sum(1 for r in requests if r.status == 429),
        requests_other_errors=sum(1 for r in requests if r.status not in (201, 429)),
        points_per_request=round(points_accepted / max(1, len(accepted)), 2),
        requests_per_min_mean=round(len(accepted) / span_min, 1) if len(times) > 1 else math.nan,
        requests_max_in_any_60s=max_in_window(times, 60.0),
        cpu_s_per_1000_messages=round(cpu / messages * 1000, 4) if messages else math.nan,
        peak_rss_mb=round(max((s.rss_bytes for s in samples), default=0) / 2**20, 1),
        latency_p50_s=round(percentile(latencies, 50), 3),
        latency_p99_s=round(percentile(latencies, 99), 3),
        backlog_peak_points=max((s.spool_points for s in samples), default=0.0),
        backlog_growth_points_per_s=round(slope, 1),
        backlog_growth_r2=round(r2, 4),
        backlog_drained=bool(samples) and samples[-1].spool_points == 0,
    )
    if report.points_lost:
        report.problems.append(f"{report.points_lost} point(s) never arrived")
    if not report.backlog_drained:
        report.problems.append("the spool still held points at the end")
    return report


def render(report: Report) -> str:
    """A human table of the report."""
    rows = [(k, v) for k, v in asdict(report).items() if k not in ("settings", "problems")]
    width = max(len(k) for k, _v in rows)
    lines = [f"{k.replace('_', ' '):<{width}}  {v}" for k, v in rows]
    lines.append("settings".ljust(width) + "  " + json.dumps(report.settings, sort_keys=True))
    verdict = (
        "OK: nothing lost" if not report.problems else "PROBLEMS: " + "; ".join(report.problems)
    )
    return "\n".join([*lines, verdict])


# -- the shell ------------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> int:
    """Run one bench; 0 when every point arrived, 1 otherwise, 69 without mosquitto."""
    try:
        with tempfile.TemporaryDirectory(prefix="metriqo-bench-") as tmp, LocalBroker() as broker:
            return asyncio.run(_Bench(args, Path(tmp), broker).run())
    except BrokerUnavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE


class _Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, broker: LocalBroker) -> None:
        self.args = args
        self.workdir = workdir
        self.broker = broker
        self.messages = int(args.rate * args.seconds) if args.mode == "rate" else int(args.messages)
        self.base_ms = int(time.time() * 1000) - 10 * 86_400_000  # ten days ago, one ms apart
        self.token = "mqk_bench_" + secrets.token_hex(16)
        mappings = workdir / "bench-mappings.yaml"
        mappings.write_text(BENCH_MAPPINGS, encoding="utf-8")
        self.api_port = free_port()
        self.settings = {
            "mqtt.port": str(broker.port),
            "mqtt.client_id": "metriqo-bench",
            "mqtt.protocol": args.protocol,
            "api.base_url": f"http://127.0.0.1:{self.api_port}/api/v2",
            "api.requests_per_minute": str(args.requests_per_minute or args.api_limit or 1_000_000),
            "spool.path": str(workdir / "spool.db"),
            "mapping.file": str(mappings),
            "mapping.reload_interval_s": "0",
            "log_level": "WARNING",
        }
        for item in args.set:
            key, _, value = str(item).partition("=")
            self.settings[key] = value
        self.samples: list[Sample] = []

    async def run(self) -> int:
        a = self.args
        bridge = BridgeProcess(self.workdir, self.settings, self.token)
        publisher = Publisher(self.broker.port, self.messages, self.base_ms, _DEVICES)
        async with LocalApi(
            self.token, port=self.api_port, rate_limit_per_minute=a.api_limit
        ) as api:
            try:
                t0 = time.time()
                bridge.start()
                await asyncio.to_thread(bridge.wait_ready)
                if a.mode == "backlog":
                    bridge.stop()  # the session stays on the broker and queues the backlog
                    p_start = time.time() - t0
                    await asyncio.to_thread(publisher.run, None)
                    p_end = time.time() - t0
                    print(f"bench: {self.messages} messages queued; starting the bridge")
                    t0 = time.time()  # the drain is what is measured
                    p_start, p_end = 0.0, 0.0
                    bridge.start()
                else:
                    p_start = time.time() - t0
                    pub = asyncio.create_task(asyncio.to_thread(publisher.run, a.rate))
                sampler = asyncio.create_task(self._sample(bridge, t0))
                if a.mode == "rate":
                    await pub
                    p_end = time.time() - t0
                    print(f"bench: published {self.messages} messages in {p_end - p_start:.1f} s")
                delivered = await self._await_delivery(api, bridge, t0)
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
                await self._sample_once(bridge, t0)
            finally:
                code = await asyncio.to_thread(bridge.stop)
                publisher.close()
            requests = list(api.store.requests)
        report = summarize(
            a.mode,
            self.messages,
            self.base_ms,
            published_at=publisher.published_at,
            requests=requests,
            samples=self.samples,
            publish_window=(p_start, p_end),
            t0_wall=t0,
        )
        report.settings = {k: v for k, v in self.settings.items() if "token" not in k}
        report.settings["api_limit_per_min"] = a.api_limit
        if not delivered:
            report.problems.append(f"not everything arrived within {a.timeout:.0f} s")
        if code != 0:
            report.problems.append(f"the bridge exited with {code}: {bridge.log()[-1000:]}")
        print(render(report))
        if a.json_out is not None:
            a.json_out.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
        return 0 if not report.problems else 1

    async def _sample(self, bridge: BridgeProcess, t0: float) -> None:
        while True:
            await self._sample_once(bridge, t0)
            await asyncio.sleep(1.0)

    async def _sample_once(self, bridge: BridgeProcess, t0: float) -> None:
        try:
            points = await asyncio.to_thread(bridge.spool_points)
            cpu, rss = bridge.cpu_and_rss()
        except (OSError, ValueError):
            return  # the bridge is starting or stopping: skip this look
        self.samples.append(Sample(round(time.time() - t0, 3), points, cpu, rss))
        if len(self.samples) % 15 == 0:
            s = self.samples[-1]
            print(f"bench: t={s.t:6.1f}s  spool={s.spool_points:9.0f} points  cpu={s.cpu_s:7.1f}s")

    async def _await_delivery(self, api: LocalApi, bridge: BridgeProcess, t0: float) -> bool:
        try:
            await api.store.wait_for_points(self.messages * METRICS_PER_MESSAGE, self.args.timeout)
        except TimeoutError:
            return False
        # Wait for the spool to be empty too: the deletes follow the 201s.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if await asyncio.to_thread(bridge.spool_points) == 0:
                    return True
            await asyncio.sleep(0.2)
        return True
