"""``metriqo-bridge bench``: measure the bridge on this machine the way a plant would use it.

A throwaway mosquitto, the local Metriqo-compatible API (in this process) and the bridge as its
own process (so its CPU time and memory are its own), with 4-metric JSON published at QoS 1:

- ``rate``: R messages/s for T seconds while the bridge runs. With ``--api-limit`` the API
  enforces a request rate limit (1,000/min is the real API's), so an input above what the API
  takes shows the backlog growing, then draining once the input stops.
- ``backlog``: N messages queued for the bridge's persistent session while it is stopped, then
  drained; the same backlog is queued for a bare paho-mqtt client and ``mosquitto_sub``
  (:mod:`bridge.lab.bench.baselines`), whose drains are the ceilings the bridge is compared with.
- ``spool``: a spool pre-filled with P points, the bridge started on it with the API down (idle,
  then with live traffic), then the API up while it drains: its memory throughout.
- ``rules``: the per-message cost of 10 against 1,000 mapping rules, in this process
  (:mod:`bridge.lab.bench.rules`) and end to end.

Every point is checked at the end: lost and duplicated points are reported, not assumed. Each
mode also prints whether the performance targets are met; a missed target is reported, while
the exit code only says whether anything was lost. The summary functions are pure; the classes
at the end are the shell around them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import secrets
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bridge.errors import EX_UNAVAILABLE
from bridge.lab.apiserver.server import LocalApi, RequestRecord
from bridge.lab.bench.baselines import PAHO, Baseline, BaselineClients
from bridge.lab.bench.rules import (
    RULES_TARGET_RATIO,
    RulesReport,
    ratio,
    rules_yaml,
    time_rule_sets,
)
from bridge.lab.broker import BrokerUnavailable, LocalBroker, free_port
from bridge.lab.localrun import (
    BENCH_MAPPINGS,
    METRICS_PER_MESSAGE,
    BridgeProcess,
    ProcessPublisher,
    message_index_ms,
)
from bridge.models import Record
from bridge.settings import SpoolSettings
from bridge.spool.store import Spool

_DEVICES = 20
_BENCH_TOPIC = "bench/+/env"  # the bridge's subscription for BENCH_MAPPINGS

# The targets of the performance work, checked by every run that measures them.
TARGET_DRAIN_VS_PAHO = 0.5  # backlog drain end to end / a bare paho client's drain
TARGET_RATE, TARGET_SECONDS = 5000.0, 60.0  # the live flow the next three are stated for
TARGET_LATENCY_OVER_LINGER_S = 0.25  # p99 publish-to-API latency <= batch linger + this
TARGET_CPU_PERCENT = 50.0  # of one core, while publishing
TARGET_RSS_MB = 100.0  # at all times, also with 5,000,000 points in the spool


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
    cpu_percent_of_one_core: float = math.nan
    seconds_connected_to_last_delivery: float = math.nan
    messages_per_s_from_connect: float = math.nan
    settings: dict[str, object] = field(default_factory=dict)
    baselines: list[dict[str, object]] = field(default_factory=list)
    targets: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Target:
    """One performance target: what was measured against what is asked, and whether it holds.

    ``note`` says when the run's conditions differ from the ones the target is stated for.
    """

    name: str
    measured: float
    comparison: str  # "<=" or ">="
    limit: float
    met: bool
    note: str = ""


def target(name: str, measured: float, comparison: str, limit: float, note: str = "") -> Target:
    """A :class:`Target`; an unmeasured (NaN) value never meets it."""
    if comparison not in ("<=", ">="):
        raise ValueError(f"comparison must be <= or >=, not {comparison!r}")
    met = not math.isnan(measured) and (
        measured <= limit if comparison == "<=" else measured >= limit
    )
    return Target(name, measured, comparison, limit, met, note)


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


def cpu_percent(cpu_s: float, wall_s: float) -> float:
    """CPU time as a percentage of one core over ``wall_s`` seconds (NaN for no time)."""
    if not wall_s > 0 or math.isnan(cpu_s):
        return math.nan
    return round(100 * cpu_s / wall_s, 1)


def rss_target(peak_rss_mb: float) -> Target:
    """Peak resident memory of the bridge against the 100 MB target."""
    return target("bridge peak RSS (MB)", peak_rss_mb, "<=", TARGET_RSS_MB)


def drain_targets(report: Report, baselines: Sequence[Baseline]) -> list[Target]:
    """Backlog mode: the bridge's end-to-end drain against a bare paho client's, and memory."""
    out: list[Target] = []
    paho = next((b for b in baselines if b.client == PAHO), None)
    if paho is not None:
        # Both timed from their connect: a process start is not part of a drain.
        measured = ratio(_drain_rate(report), paho.messages_per_s)
        note = "" if paho.complete else f"the paho baseline did not finish: {paho.detail}"
        if not paho.complete:
            measured = math.nan
        out.append(
            target(
                "backlog drain end to end / bare paho drain",
                measured,
                ">=",
                TARGET_DRAIN_VS_PAHO,
                note,
            )
        )
    out.append(rss_target(report.peak_rss_mb))
    return out


def rate_targets(report: Report, *, linger_s: float, rate: float, seconds: float) -> list[Target]:
    """Rate mode: nothing lost, p99 latency, CPU and memory, each against its target.

    The first three are stated for 5,000 msg/s for 60 s; at another rate or duration they are
    still checked, with a note saying so.
    """
    notes = []
    if (rate, seconds) != (TARGET_RATE, TARGET_SECONDS):
        notes.append(
            f"stated for {TARGET_RATE:,.0f} msg/s for {TARGET_SECONDS:.0f} s; "
            f"this run: {rate:,.0f} msg/s for {seconds:g} s"
        )
    achieved = report.messages / report.seconds_publishing if report.seconds_publishing else 0.0
    if achieved < 0.95 * rate:
        # On a busy machine the publisher (in its own process) may still not keep the pace.
        notes.append(f"the publisher reached only {achieved:,.0f} msg/s")
    note = "; ".join(notes)
    limit = round(linger_s + TARGET_LATENCY_OVER_LINGER_S, 3)
    return [
        target("points lost", float(report.points_lost), "<=", 0.0, note),
        target("p99 publish-to-API latency (s)", report.latency_p99_s, "<=", limit, note),
        target(
            "bridge CPU while publishing (% of one core)",
            report.cpu_percent_of_one_core,
            "<=",
            TARGET_CPU_PERCENT,
            note,
        ),
        rss_target(report.peak_rss_mb),
    ]


def render_targets(targets: Iterable[dict[str, object]]) -> list[str]:
    """One line per target: MET or MISSED, the measurement and the limit."""
    lines = []
    for t in targets:
        verdict = "MET   " if t["met"] else "MISSED"
        line = f"target {verdict} {t['name']}: {t['measured']} {t['comparison']} {t['limit']}"
        lines.append(line + (f"  ({t['note']})" if t["note"] else ""))
    return lines


def render_baselines(baselines: Iterable[dict[str, object]]) -> list[str]:
    """One line per baseline client."""
    return [
        f"baseline {b['client']}: {b['messages_per_s']} msg/s "
        f"({b['messages_received']} of {b['messages_expected']} messages in {b['seconds']} s)"
        + ("" if b["complete"] else f"  INCOMPLETE: {b['detail']}")
        for b in baselines
    ]


def render(report: Report | SpoolReport | RulesReport) -> str:
    """A human table of a report: scalar fields, then baselines, targets and the verdict."""
    data = asdict(report)
    special = ("settings", "problems", "baselines", "targets")
    rows = [(k, v) for k, v in data.items() if k not in special]
    width = max(len(k) for k, _v in rows)
    lines = [
        f"{k.replace('_', ' '):<{width}}  {v if not isinstance(v, dict | list) else _js(v)}"
        for k, v in rows
    ]
    if "settings" in data:
        lines.append("settings".ljust(width) + "  " + _js(data["settings"]))
    lines += render_baselines(data.get("baselines", []))
    lines += render_targets(data["targets"])
    problems = data["problems"]
    verdict = "OK: nothing lost" if not problems else "PROBLEMS: " + "; ".join(problems)
    return "\n".join([*lines, verdict])


def _js(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _drain_rate(report: Report) -> float:
    """A backlog's drain rate from the bridge's connect (a process start, and here the loading
    of the mapping file, is not part of the drain), else from its start."""
    if math.isnan(report.messages_per_s_from_connect):
        return report.messages_per_s_end_to_end
    return report.messages_per_s_from_connect


# -- spool mode: accounting ------------------------------------------------------------------------

_METRIC_BITS = {"temp": 1, "rh": 2, "kw": 4, "hz": 8}  # the 4 points of a bench message
_ALL_BITS = 15


class PointLedger:
    """Which of the points of messages ``0..n-1`` were delivered, and which are still waiting.

    A bit per point (not a set of tuples): at 5,000,000 points a set would cost the bench
    process gigabytes.
    """

    def __init__(self, messages: int, base_ms: int) -> None:
        self.messages = messages
        self._base_ms = base_ms
        self._delivered = bytearray(messages)
        self._waiting = bytearray(messages)
        self.duplicated = 0
        self.foreign = 0  # points that belong to no message of this run

    def index(self, ts_ms: int) -> int:
        """The message an epoch-ms timestamp belongs to (see :func:`message_payload`)."""
        return ts_ms - self._base_ms

    def delivered(self, ts_ms: int, metrics: Iterable[str]) -> None:
        """Points the API accepted; a point accepted twice counts as a duplicate."""
        self._mark(self._delivered, ts_ms, metrics, count_twice=True)

    def waiting(self, ts_ms: int, metrics: Iterable[str]) -> None:
        """Points still in the spool at the end."""
        self._mark(self._waiting, ts_ms, metrics, count_twice=False)

    def _mark(
        self, bits: bytearray, ts_ms: int, metrics: Iterable[str], *, count_twice: bool
    ) -> None:
        i = self.index(ts_ms)
        for name in metrics:
            bit = _METRIC_BITS.get(name, 0)
            if not 0 <= i < self.messages or not bit:
                self.foreign += 1
                continue
            if bits[i] & bit and count_twice:
                self.duplicated += 1
            bits[i] |= bit

    def totals(self) -> tuple[int, int, int]:
        """(points delivered, points still waiting and never delivered, points lost)."""
        delivered = waiting = lost = 0
        for d, w in zip(self._delivered, self._waiting, strict=True):
            delivered += _POPCOUNT[d]
            waiting += _POPCOUNT[w & ~d & _ALL_BITS]
            lost += _POPCOUNT[_ALL_BITS & ~(d | w)]
        return delivered, waiting, lost


_POPCOUNT = [bin(v).count("1") for v in range(256)]


@dataclass(slots=True)
class SpoolReport:
    """What ``bench spool`` measured; ``problems`` is empty when nothing was lost."""

    mode: str
    points_prefilled: int
    seconds_to_prefill: float
    spool_mb: float
    seconds_to_ready: float
    live_messages: int
    points_total: int
    points_delivered: int
    points_duplicated: int
    points_still_waiting: int
    points_lost: int
    drained: bool
    seconds_draining: float
    points_per_s_draining: float
    peak_rss_mb_api_down_idle: float
    peak_rss_mb_api_down_live: float
    peak_rss_mb_draining: float
    peak_rss_mb: float
    settings: dict[str, object] = field(default_factory=dict)
    targets: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def spool_problems(report: SpoolReport, foreign: int) -> list[str]:
    """What is wrong with a spool run: lost, duplicated or unknown points."""
    problems = []
    if report.points_lost:
        problems.append(f"{report.points_lost} point(s) neither delivered nor in the spool")
    if report.points_duplicated:
        problems.append(f"{report.points_duplicated} point(s) delivered twice")
    if foreign:
        problems.append(f"{foreign} point(s) that belong to no message of this run")
    return problems


# -- the shell ------------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> int:
    """Run one bench; 0 when every point arrived, 1 otherwise, 69 without mosquitto."""
    try:
        with tempfile.TemporaryDirectory(prefix="metriqo-bench-") as tmp, LocalBroker() as broker:
            workdir = Path(tmp)
            if args.mode == "spool":
                return asyncio.run(_SpoolBench(args, workdir, broker).run())
            if args.mode == "rules":
                return asyncio.run(_run_rules(args, workdir, broker))
            if args.mode == "replicas":
                from bridge.lab.bench.replicas import run_replicas

                return asyncio.run(run_replicas(args, workdir, broker))
            return asyncio.run(_Bench(args, workdir, broker).run())
    except BrokerUnavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE


def _bridge_settings(
    args: argparse.Namespace, broker: LocalBroker, workdir: Path, api_port: int, client_id: str
) -> dict[str, str]:
    settings = {
        "mqtt.port": str(broker.port),
        "mqtt.client_id": client_id,
        "mqtt.protocol": args.protocol,
        "api.base_url": f"http://127.0.0.1:{api_port}/api/v2",
        "api.requests_per_minute": str(args.requests_per_minute or args.api_limit or 1_000_000),
        "spool.path": str(workdir / "spool.db"),
        "mapping.file": str(workdir / "bench-mappings.yaml"),
        "mapping.reload_interval_s": "0",
        "log_level": "WARNING",
    }
    for item in args.set:
        key, _, value = str(item).partition("=")
        settings[key] = value
    return settings


@dataclass(frozen=True, slots=True)
class _Drive:
    """How a run went: its start (wall clock), the publishing window since then, (bridge CPU
    seconds, wall seconds) to rate its CPU by, when the bridge was connected (backlog mode),
    and whether everything arrived."""

    t0: float
    window: tuple[float, float]
    cpu_window: tuple[float, float]
    connected: float
    delivered: bool


class _Bench:
    """``rate`` and ``backlog``; ``rules`` runs the backlog once per mapping file."""

    def __init__(
        self,
        args: argparse.Namespace,
        workdir: Path,
        broker: LocalBroker,
        *,
        mode: str | None = None,
        mappings: str = BENCH_MAPPINGS,
        client_id: str = "metriqo-bench",
        baselines: bool = True,
    ) -> None:
        self.args = args
        self.mode = mode or args.mode
        self.workdir = workdir
        self.broker = broker
        self.messages = int(args.rate * args.seconds) if self.mode == "rate" else int(args.messages)
        self.base_ms = int(time.time() * 1000) - 10 * 86_400_000  # ten days ago, one ms apart
        self.token = "mqk_bench_" + secrets.token_hex(16)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "bench-mappings.yaml").write_text(mappings, encoding="utf-8")
        self.api_port = free_port()
        self.settings = _bridge_settings(args, broker, workdir, self.api_port, client_id)
        self.samples: list[Sample] = []
        self.baselines: BaselineClients | None = None
        if self.mode == "backlog" and baselines and not args.no_baselines:
            self.baselines = BaselineClients(
                broker.port,
                _BENCH_TOPIC,
                str(self.settings["mqtt.protocol"]),
                receive_maximum=int(self.settings.get("mqtt.receive_maximum", "1000")),
            )

    async def run(self) -> int:
        """Print the report (and write it as JSON); 0 when nothing was lost."""
        report = await self.measure()
        print(render(report))
        if self.args.json_out is not None:
            self.args.json_out.write_text(
                json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8"
            )
        return 0 if not report.problems else 1

    async def measure(self) -> Report:
        """Run the bench and the baselines; the report with its targets."""
        a = self.args
        bridge = BridgeProcess(self.workdir, self.settings, self.token)
        publisher = ProcessPublisher(self.broker.port, self.messages, self.base_ms, _DEVICES)
        async with LocalApi(
            self.token, port=self.api_port, rate_limit_per_minute=a.api_limit
        ) as api:
            try:
                run = await self._drive(api, bridge, publisher)
            finally:
                code = await asyncio.to_thread(bridge.stop)
                publisher.close()
            requests = list(api.store.requests)
        report = summarize(
            self.mode,
            self.messages,
            self.base_ms,
            published_at=publisher.published_at,
            requests=requests,
            samples=self.samples,
            publish_window=run.window,
            t0_wall=run.t0,
        )
        report.cpu_percent_of_one_core = cpu_percent(*run.cpu_window)
        if not math.isnan(run.connected):
            connected = max(1e-9, report.seconds_to_last_delivery - run.connected)
            report.seconds_connected_to_last_delivery = round(connected, 3)
            report.messages_per_s_from_connect = round(self.messages / connected, 1)
        report.settings = {k: v for k, v in self.settings.items() if "token" not in k}
        report.settings["api_limit_per_min"] = a.api_limit
        if not run.delivered:
            report.problems.append(f"not everything arrived within {a.timeout:.0f} s")
        if code != 0:
            report.problems.append(f"the bridge exited with {code}: {bridge.log()[-1000:]}")
        if self.mode == "rate":
            linger = float(self.settings.get("batch.linger_s", "1.0"))
            targets = rate_targets(report, linger_s=linger, rate=a.rate, seconds=a.seconds)
        else:
            baselines = await self._drain_baselines()
            report.baselines = [asdict(b) for b in baselines]
            report.problems += [f"{b.client}: {b.detail}" for b in baselines if not b.complete]
            targets = drain_targets(report, baselines)
        report.targets = [asdict(t) for t in targets]
        return report

    async def _drive(
        self, api: LocalApi, bridge: BridgeProcess, publisher: ProcessPublisher
    ) -> _Drive:
        """Publish and wait for delivery."""
        t0 = time.time()
        bridge.start()
        await asyncio.to_thread(bridge.wait_ready)
        connected = math.nan
        if self.mode == "backlog":
            bridge.stop()  # the session stays on the broker and queues the backlog
            if self.baselines is not None:
                await asyncio.to_thread(self.baselines.prepare)
            await asyncio.to_thread(publisher.run, None)
            print(f"bench: {self.messages} messages queued; starting the bridge")
            t0 = time.time()  # the drain is what is measured
            window = (0.0, 0.0)
            bridge.start()
            sampler = asyncio.create_task(self._sample(bridge, t0))
            # Ready = connected and subscribed: from here the drain compares with the
            # baselines', which are timed from their connect.
            await asyncio.to_thread(bridge.wait_ready)
            connected = time.time() - t0
        else:
            sampler = asyncio.create_task(self._sample(bridge, t0))
            cpu_start = bridge.cpu_and_rss()[0]
            p_start = time.time() - t0
            await asyncio.to_thread(publisher.run, self.args.rate)
            window = (p_start, time.time() - t0)
            cpu_window = (bridge.cpu_and_rss()[0] - cpu_start, window[1] - window[0])
            print(f"bench: published {self.messages} messages in {cpu_window[1]:.1f} s")
        delivered = await self._await_delivery(api, bridge, t0)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await self._sample_once(bridge, t0)
        if self.mode == "backlog":
            cpu_window = (math.nan, math.nan)
            if len(self.samples) > 1:
                first, last = self.samples[0], self.samples[-1]
                cpu_window = (last.cpu_s - first.cpu_s, last.t - first.t)
        return _Drive(t0, window, cpu_window, connected, delivered)

    async def _drain_baselines(self) -> list[Baseline]:
        """The baseline clients drain the backlog queued for them, one after the other."""
        if self.baselines is None:
            return []
        print("bench: the same backlog, drained by the baseline clients")
        out = [await asyncio.to_thread(self.baselines.drain_paho, self.messages, self.args.timeout)]
        sub = await asyncio.to_thread(
            self.baselines.drain_mosquitto_sub, self.messages, self.args.timeout, self.workdir
        )
        if sub is not None:
            out.append(sub)
        return out

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


# -- rules mode -----------------------------------------------------------------------------------


async def _run_rules(args: argparse.Namespace, workdir: Path, broker: LocalBroker) -> int:
    """Map in this process with each rule set, then drain the same backlog end to end with each
    (a session and a spool of their own)."""
    sizes = sorted({int(n) for n in str(args.rules).split(",")})
    base_ms = int(time.time() * 1000) - 10 * 86_400_000
    print(f"bench: mapping {args.iterations} messages x {args.rounds} rounds with {sizes} rules")
    timings, problems = await asyncio.to_thread(
        time_rule_sets, sizes, args.iterations, args.rounds, base_ms
    )
    few, many = timings[0], timings[-1]
    report = RulesReport(
        mode="rules",
        timings=timings,
        repeated_topic_ratio=ratio(many.repeated_topic_us, few.repeated_topic_us),
        first_seen_topic_ratio=ratio(many.first_seen_topic_us, few.first_seen_topic_us),
        problems=problems,
    )
    name = f"{many.rules} rules / {few.rules} rules, time per message"
    targets = [
        target(
            f"mapping, repeated topic: {name}",
            report.repeated_topic_ratio,
            "<=",
            RULES_TARGET_RATIO,
        ),
        target(
            f"mapping, first-seen topic: {name}",
            report.first_seen_topic_ratio,
            "<=",
            RULES_TARGET_RATIO,
        ),
    ]
    if args.messages > 0:
        drains: dict[int, Report] = {}
        for n in (few.rules, many.rules):
            print(f"bench: backlog of {args.messages} messages with {n} rules")
            bench = _Bench(
                args,
                workdir / f"rules-{n}",
                broker,
                mode="backlog",
                mappings=rules_yaml(n),
                client_id=f"metriqo-bench-rules-{n}",
                baselines=False,
            )
            drains[n] = await bench.measure()
            report.problems += [f"{n} rules: {p}" for p in drains[n].problems]
        slow = ratio(_drain_rate(drains[few.rules]), _drain_rate(drains[many.rules]))
        report.end_to_end = {
            "messages": args.messages,
            **{
                f"rules_{n}": {
                    "messages_per_s_end_to_end": r.messages_per_s_end_to_end,
                    "messages_per_s_from_connect": r.messages_per_s_from_connect,
                    "cpu_s_per_1000_messages": r.cpu_s_per_1000_messages,
                    "peak_rss_mb": r.peak_rss_mb,
                    "points_lost": r.points_lost,
                }
                for n, r in drains.items()
            },
            "time_per_message_ratio": slow,
        }
        targets.append(target(f"backlog drain end to end: {name}", slow, "<=", RULES_TARGET_RATIO))
    report.targets = [asdict(t) for t in targets]
    print(render(report))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return 0 if not report.problems else 1


# -- spool mode -----------------------------------------------------------------------------------


def prefill_spool(path: Path, messages: int, base_ms: int, devices: int) -> None:
    """Write the records of bench messages ``0..messages-1`` into a new spool, as the bridge
    would have after mapping them (run in a process of its own: it is seconds of CPU)."""
    spool = Spool(SpoolSettings(path, max_bytes=1 << 40, synchronous="NORMAL", reserve_bytes=0))
    spool.open()
    try:
        now_us = int(time.time() * 1_000_000)
        chunk = 10_000
        for start in range(0, messages, chunk):
            records = [
                Record(
                    f"d{i % devices:03d}",
                    (base_ms + i) * 1000,
                    {"temp": i % 1000 + 0.25, "rh": float(i % 100), "kw": i % 7 + 0.5, "hz": 50.0},
                    now_us,
                )
                for i in range(start, min(messages, start + chunk))
            ]
            spool.writer.commit(records, [])
    finally:
        spool.close()


class _SpoolBench:
    """A bridge started on a spool of P points with the API down, then drained: its memory."""

    def __init__(self, args: argparse.Namespace, workdir: Path, broker: LocalBroker) -> None:
        self.args = args
        self.workdir = workdir
        self.broker = broker
        self.prefilled = math.ceil(args.points / METRICS_PER_MESSAGE)  # messages' worth
        self.live = int(args.live_rate * args.live_seconds)
        self.base_ms = int(time.time() * 1000) - 10 * 86_400_000
        self.token = "mqk_bench_" + secrets.token_hex(16)
        (workdir / "bench-mappings.yaml").write_text(BENCH_MAPPINGS, encoding="utf-8")
        self.api_port = free_port()  # nothing listens there until the drain starts
        self.settings = _bridge_settings(args, broker, workdir, self.api_port, "metriqo-bench")
        # The bridge backs off while the API is down; keep its retries short so the drain
        # starts within seconds of the API coming up.
        self.settings.setdefault("api.retry_max_s", "2")
        self.spool_path = Path(self.settings["spool.path"])
        self.rss: dict[str, int] = {"idle": 0, "live": 0, "drain": 0}  # peak VmRSS per phase
        self.peak_rss = 0  # VmHWM: the kernel's own peak, between samples too

    async def run(self) -> int:
        """Print the report (and write it as JSON); 0 when nothing was lost."""
        a = self.args
        print(f"bench: writing {self.prefilled * METRICS_PER_MESSAGE} points into the spool")
        start = time.monotonic()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            await asyncio.get_running_loop().run_in_executor(
                pool, prefill_spool, self.spool_path, self.prefilled, self.base_ms, _DEVICES
            )
        prefill_s = time.monotonic() - start
        spool_mb = self.spool_path.stat().st_size / 2**20
        bridge = BridgeProcess(self.workdir, self.settings, self.token)
        publisher = ProcessPublisher(
            self.broker.port, self.live, self.base_ms + self.prefilled, _DEVICES
        )
        try:
            ready_s, drained, drain_s, requests = await self._phases(bridge, publisher)
        finally:
            code = await asyncio.to_thread(bridge.stop)  # its exit code, if already stopped
            publisher.close()
        ledger = PointLedger(self.prefilled + self.live, self.base_ms)
        for r in requests:
            if r.status == 201 and isinstance(r.body, list):
                for obj in r.body:
                    assert isinstance(obj, dict)
                    metrics = obj["metrics"]
                    assert isinstance(metrics, dict)
                    ledger.delivered(message_index_ms(str(obj["timestamp"])), metrics)
        await asyncio.to_thread(self._read_waiting, ledger)
        delivered, waiting, lost = ledger.totals()
        report = SpoolReport(
            mode="spool",
            points_prefilled=self.prefilled * METRICS_PER_MESSAGE,
            seconds_to_prefill=round(prefill_s, 1),
            spool_mb=round(spool_mb, 1),
            seconds_to_ready=round(ready_s, 2),
            live_messages=self.live,
            points_total=(self.prefilled + self.live) * METRICS_PER_MESSAGE,
            points_delivered=delivered,
            points_duplicated=ledger.duplicated,
            points_still_waiting=waiting,
            points_lost=lost,
            drained=drained,
            seconds_draining=round(drain_s, 1),
            points_per_s_draining=round(delivered / drain_s, 1) if drain_s > 0 else math.nan,
            peak_rss_mb_api_down_idle=round(self.rss["idle"] / 2**20, 1),
            peak_rss_mb_api_down_live=round(self.rss["live"] / 2**20, 1),
            peak_rss_mb_draining=round(self.rss["drain"] / 2**20, 1),
            peak_rss_mb=round(self.peak_rss / 2**20, 1),
            settings={k: v for k, v in self.settings.items() if "token" not in k},
        )
        report.problems = spool_problems(report, ledger.foreign)
        if code != 0:
            report.problems.append(f"the bridge exited with {code}: {bridge.log()[-1000:]}")
        report.targets = [asdict(rss_target(report.peak_rss_mb))]
        print(render(report))
        if a.json_out is not None:
            a.json_out.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
        return 0 if not report.problems else 1

    async def _phases(
        self, bridge: BridgeProcess, publisher: ProcessPublisher
    ) -> tuple[float, bool, float, list[RequestRecord]]:
        """API down (idle, then live traffic), then API up while the bridge drains: (seconds
        to ready, whether the spool emptied, seconds draining, what the API received)."""
        a = self.args
        start = time.monotonic()
        bridge.start()
        await asyncio.to_thread(bridge.wait_ready, 300.0)
        ready_s = time.monotonic() - start
        print(f"bench: bridge ready on the full spool after {ready_s:.1f} s; API down")
        await self._watch(bridge, "idle", a.idle_seconds)
        print(f"bench: API down, live traffic: {self.live} messages at {a.live_rate:g}/s")
        pub = asyncio.create_task(asyncio.to_thread(publisher.run, a.live_rate))
        await self._watch(bridge, "live", until=pub)
        await pub
        await self._watch(bridge, "live", 2.0)  # the last messages reach the spool
        async with LocalApi(self.token, port=self.api_port, rate_limit_per_minute=None) as api:
            print(f"bench: API up; draining for up to {a.drain_seconds:g} s")
            start = time.monotonic()
            drained = await self._watch(bridge, "drain", a.drain_seconds, stop_when_empty=True)
            # Stopped while the API is still up: it delivers until its stop deadline, so the
            # drain lasts until it has exited.
            await asyncio.to_thread(bridge.stop)
            drain_s = time.monotonic() - start
            return ready_s, drained, drain_s, list(api.store.requests)

    async def _watch(
        self,
        bridge: BridgeProcess,
        phase: str,
        seconds: float = math.inf,
        *,
        until: asyncio.Task[None] | None = None,
        stop_when_empty: bool = False,
    ) -> bool:
        """Sample the bridge's memory (and the spool through /metrics, as a user would) twice a
        second for ``seconds`` or until ``until`` is done; True if the spool emptied."""
        deadline = time.monotonic() + seconds
        last_print = time.monotonic()
        while time.monotonic() < deadline and (until is None or not until.done()):
            try:
                points = await asyncio.to_thread(bridge.spool_points)
                rss = bridge.rss_now()
                self.peak_rss = max(self.peak_rss, bridge.cpu_and_rss()[1])
            except (OSError, ValueError):
                points, rss = math.nan, 0
            self.rss[phase] = max(self.rss[phase], rss)
            if time.monotonic() - last_print >= 10:
                last_print = time.monotonic()
                print(f"bench: {phase}: spool={points:11.0f} points  rss={rss / 2**20:6.1f} MB")
            if stop_when_empty and points == 0:
                return True
            await asyncio.sleep(0.5)
        return False

    def _read_waiting(self, ledger: PointLedger) -> None:
        """Record what the spool still holds (the bridge has stopped and released it)."""
        spool = Spool(SpoolSettings(self.spool_path, reserve_bytes=0))
        spool.open()
        try:
            after = 0
            while batch := spool.outbox.fetch(after, 10_000):
                for rec in batch:
                    ledger.waiting(rec.ts_us // 1000, rec.metrics)
                after = batch[-1].seq
        finally:
            spool.close()
