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
  (:mod:`bridge.lab.bench.rules`) and end to end, and of each form of the mapping language
  against the common path (:mod:`bridge.lab.bench.forms`).

Every point is checked at the end: lost and duplicated points are reported, not assumed. Each
mode also prints whether the performance targets are met; a missed target is reported, while
the exit code only says whether anything was lost. The verdicts are pure
(:mod:`bridge.lab.bench.report`); this module is the shell for ``rate``, ``backlog`` and
``rules``, :mod:`bridge.lab.bench.spool_mode` the one for ``spool``.
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
from dataclasses import asdict, dataclass
from pathlib import Path

from bridge.errors import EX_FAILURE, EX_OK, EX_UNAVAILABLE
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.bench.baselines import Baseline, BaselineClients
from bridge.lab.bench.forms import FORMS_TARGET_RATIO, time_forms
from bridge.lab.bench.phases import add_phases, drain_phases
from bridge.lab.bench.report import (
    Report,
    Sample,
    add_disk_writes,
    cpu_percent,
    drain_rate,
    drain_targets,
    rate_targets,
    render,
    summarize,
    target,
)
from bridge.lab.bench.rules import (
    RULES_TARGET_RATIO,
    RulesReport,
    ratio,
    rules_yaml,
    time_rule_sets,
)
from bridge.lab.bench.spool_mode import SpoolBench
from bridge.lab.bench.workspace import (
    BENCH_TOPIC,
    DEVICES,
    await_delivery,
    bridge_settings,
    collector_paused,
)
from bridge.lab.broker import BrokerUnavailable, LocalBroker, free_port
from bridge.lab.localrun import (
    BENCH_MAPPINGS,
    METRICS_PER_MESSAGE,
    BridgeProcess,
    ProcessPublisher,
    message_payload,
)

# -- the shell ------------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> int:
    """Run one bench; 0 when every point arrived, 1 otherwise, 69 without mosquitto."""
    if args.mode == "check":  # no broker, no API: only the mapping file and `check`
        from bridge.lab.bench.check_mode import run_check_bench

        return run_check_bench(args)
    if args.mode == "sparkplug":  # in this process: decoding alone
        from bridge.lab.bench.sparkplug_mode import run_sparkplug_bench

        return run_sparkplug_bench(args)
    if args.mode == "deadband":  # no broker either: the spool's decision on a simulated fleet
        from bridge.lab.bench.deadband_mode import run_deadband_bench

        return run_deadband_bench(args)
    if args.mode == "disk":  # in this process, on the real spool: no broker, no API
        from bridge.lab.bench.disk_mode import run_disk_bench

        return run_disk_bench(args)
    if args.rate is None:
        args.rate = 1000.0 if args.mode != "edge" else None  # edge: its own default
    try:
        with tempfile.TemporaryDirectory(prefix="metriqo-bench-") as tmp, LocalBroker() as broker:
            workdir = Path(tmp)
            if args.mode == "spool":
                return asyncio.run(SpoolBench(args, workdir, broker).run())
            if args.mode == "rules":
                return asyncio.run(_run_rules(args, workdir, broker))
            if args.mode == "edge":
                from bridge.lab.bench.edge_mode import EdgeBench

                return asyncio.run(EdgeBench(args, workdir, broker).run())
            if args.mode == "replicas":
                from bridge.lab.bench.replicas import run_replicas

                return asyncio.run(run_replicas(args, workdir, broker))
            return asyncio.run(_Bench(args, workdir, broker).run())
    except BrokerUnavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE


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
    write_bytes: float


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
        self.settings = bridge_settings(args, broker, workdir, self.api_port, client_id)
        self.samples: list[Sample] = []
        self.baselines: BaselineClients | None = None
        if self.mode == "backlog" and baselines and not args.no_baselines:
            self.baselines = BaselineClients(
                broker.port,
                BENCH_TOPIC,
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
        return EX_OK if not report.problems else EX_FAILURE

    async def measure(self) -> Report:
        """Run the bench and the baselines; the report with its targets."""
        bridge = BridgeProcess(self.workdir, self.settings, self.token)
        publisher = ProcessPublisher(self.broker.port, self.messages, self.base_ms, DEVICES)
        with collector_paused():
            return await self._measure(bridge, publisher)

    async def _measure(self, bridge: BridgeProcess, publisher: ProcessPublisher) -> Report:
        a = self.args
        async with LocalApi(
            self.token, port=self.api_port, rate_limit_per_minute=a.api_limit
        ) as api:
            try:
                run = await self._drive(api, bridge, publisher)
            finally:
                code = await asyncio.to_thread(bridge.stop)
                publisher.close()
            await api.settle()  # see BridgeProcess.stop
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
        payload = sum(len(message_payload(i, self.base_ms)) for i in range(self.messages))
        add_disk_writes(report, run.write_bytes, payload / max(1, self.messages))
        if not math.isnan(run.connected):
            connected = max(1e-9, report.seconds_to_last_delivery - run.connected)
            report.seconds_connected_to_last_delivery = round(connected, 3)
            report.messages_per_s_from_connect = round(self.messages / connected, 1)
            deliveries = [
                (r.received_wall.timestamp() - run.t0, r.points_written)
                for r in requests
                if r.status == 201
            ]
            phases = drain_phases(
                self.samples,
                deliveries,
                messages=self.messages,
                points=self.messages * METRICS_PER_MESSAGE,
                connected=run.connected,
            )
            add_phases(report, phases)
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
        written = 0  # a new process counts its writes from 0 (backlog mode: the drain's)
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
            written = bridge.write_bytes()  # what opening the spool wrote is not the flow's
            p_start = time.time() - t0
            await asyncio.to_thread(publisher.run, self.args.rate)
            window = (p_start, time.time() - t0)
            cpu_window = (bridge.cpu_and_rss()[0] - cpu_start, window[1] - window[0])
            print(f"bench: published {self.messages} messages in {cpu_window[1]:.1f} s")
        delivered = await await_delivery(
            api, bridge, self.messages * METRICS_PER_MESSAGE, self.args.timeout
        )
        written = bridge.write_bytes() - written  # up to the spool's last delete, not its close
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await self._sample_once(bridge, t0)
        if self.mode == "backlog":
            cpu_window = (math.nan, math.nan)
            if len(self.samples) > 1:
                first, last = self.samples[0], self.samples[-1]
                cpu_window = (last.cpu_s - first.cpu_s, last.t - first.t)
        return _Drive(t0, window, cpu_window, connected, delivered, written)

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


# -- rules mode -----------------------------------------------------------------------------------


async def _run_rules(args: argparse.Namespace, workdir: Path, broker: LocalBroker) -> int:
    """Map in this process with each rule set, then drain the same backlog end to end with each
    (a session and a spool of their own)."""
    sizes = sorted({int(n) for n in str(args.rules or "10,1000").split(",")})
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
    print(f"bench: mapping {args.iterations} messages x {args.rounds} rounds of each rule form")
    forms, presence, form_problems = await asyncio.to_thread(
        time_forms, args.iterations, args.rounds
    )
    report.forms = [asdict(f) for f in forms]
    report.common_path_with_every_form_ratio = presence
    report.problems += form_problems
    targets.append(
        target(
            "mapping, common path: with every rule form in the file / alone, time per message",
            presence,
            "<=",
            FORMS_TARGET_RATIO,
        )
    )
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
        slow = ratio(drain_rate(drains[few.rules]), drain_rate(drains[many.rules]))
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
    return EX_OK if not report.problems else EX_FAILURE
