"""``metriqo-bridge soak``: hours of plant life in minutes, with faults, then the no-loss oracle.

A private mosquitto, the local API and the bridge (as its own process) run on loopback, with a
fault proxy on the bridge's broker link and on its API link. A publisher sends numbered 4-metric
messages at a steady rate for the whole run while a seeded random schedule injects one fault at a
time: the bridge killed (SIGKILL, SIGTERM, or a crash at an armed failpoint) and restarted, the
broker restarted or hung, either link refused, blackholed, reset or slowed, the API failing with
5xx or a 429 storm. At the end every fault is lifted and the oracle runs: every message the broker
acknowledged is at the API, duplicates are exact repeats, the bridge's memory and open files did
not grow, and the token appears in no output. The seed replays the same schedule.

The pure parts (the schedule, the verdict) are functions; :func:`run_soak` is the shell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bridge.errors import EX_FAILURE, EX_OK, EX_UNAVAILABLE, EX_USAGE
from bridge.lab.apiserver.faults import Faults
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.apiserver.store import ApiStore, RequestRecord
from bridge.lab.bench.report import linear_fit
from bridge.lab.broker import BrokerUnavailable, LocalBroker, free_port
from bridge.lab.faultproxy import BLACKHOLE, PASS, REFUSE, FaultProxy, Mode, latency, reset_after
from bridge.lab.localrun import (
    BENCH_MAPPINGS,
    METRICS_PER_MESSAGE,
    BridgeProcess,
    Publisher,
    message_index_ms,
)
from bridge.lab.soak_schedule import FAULTS, FaultEvent, schedule

# -- pure: the verdict ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at a bridge process: its pid, seconds into the run, RSS and open files."""

    pid: int
    t: float
    rss_bytes: int
    open_files: int


@dataclass(slots=True)
class SoakReport:
    """The verdict of one run; ``problems`` is empty when it passed."""

    seed: int
    minutes: float
    messages: int
    points_published: int
    points_delivered: int
    points_lost: int
    points_duplicated: int
    duplicates_differing: int
    faults: dict[str, int]
    bridge_starts: int
    requests: dict[str, int]
    rss_mb_first: float
    rss_mb_last: float
    rss_slope_mb_per_hour: float
    open_files_min: int
    open_files_max: int
    longest_run_s: float
    problems: list[str] = field(default_factory=list)


def accepted_points(requests: Sequence[RequestRecord], base_ms: int) -> Counter[tuple[int, str]]:
    """How often each (message index, metric) was stored by the API."""
    seen: Counter[tuple[int, str]] = Counter()
    for r in requests:
        if r.points_written <= 0 or not isinstance(r.body, list):
            continue  # only requests the API stored (201, or 500 after recording)
        for obj in r.body:
            assert isinstance(obj, dict)
            metrics = obj["metrics"]
            assert isinstance(metrics, dict)
            index = message_index_ms(str(obj["timestamp"])) - base_ms
            for name in metrics:
                seen[(index, name)] += 1
    return seen


def verdict(
    *,
    seed: int,
    minutes: float,
    messages: int,
    base_ms: int,
    requests: Sequence[RequestRecord],
    differing: int,
    events: Sequence[FaultEvent],
    starts: int,
    samples: Sequence[Sample],
    token_seen: bool,
) -> SoakReport:
    """Apply the oracle to what a run recorded."""
    seen = accepted_points(requests, base_ms)
    expected = {(i, m) for i in range(messages) for m in ("temp", "rh", "kw", "hz")}
    delivered = sum(1 for key in seen if key in expected)
    by_pid: dict[int, list[Sample]] = {}
    for s in samples:
        by_pid.setdefault(s.pid, []).append(s)
    longest = max(by_pid.values(), key=lambda run: run[-1].t - run[0].t, default=[])
    # Memory and files are judged on the longest-lived process after its warm-up (a minute, or
    # a third of its life if shorter): start-up opens files and fills caches.
    warm_up = min(60.0, (longest[-1].t - longest[0].t) / 3) if longest else 0.0
    steady = [s for s in longest if s.t - longest[0].t >= warm_up] or longest
    slope, _r2 = linear_fit([s.t for s in steady], [s.rss_bytes / 2**20 for s in steady])
    files = [s.open_files for s in steady]
    status = Counter(f"{r.status // 100}xx" if r.status else "no answer" for r in requests)
    report = SoakReport(
        seed=seed,
        minutes=minutes,
        messages=messages,
        points_published=messages * METRICS_PER_MESSAGE,
        points_delivered=delivered,
        points_lost=len(expected) - delivered,
        points_duplicated=sum(n - 1 for n in seen.values()),
        duplicates_differing=differing,
        faults=dict(Counter(e.kind for e in events)),
        bridge_starts=starts,
        requests=dict(status),
        rss_mb_first=round(steady[0].rss_bytes / 2**20, 1) if steady else math.nan,
        rss_mb_last=round(steady[-1].rss_bytes / 2**20, 1) if steady else math.nan,
        rss_slope_mb_per_hour=round(slope * 3600, 1) if not math.isnan(slope) else 0.0,
        open_files_min=min(files, default=0),
        open_files_max=max(files, default=0),
        longest_run_s=round(longest[-1].t - longest[0].t, 1) if longest else 0.0,
    )
    if report.points_lost:
        report.problems.append(f"{report.points_lost} point(s) never arrived")
    if differing:
        report.problems.append(f"{differing} duplicate(s) differ from the first copy")
    if report.rss_mb_last > 150:
        report.problems.append(f"bridge RSS reached {report.rss_mb_last} MB")
    if report.longest_run_s >= 300 and report.rss_slope_mb_per_hour > 30:
        report.problems.append(f"RSS grows {report.rss_slope_mb_per_hour} MB/h")
    if report.open_files_max - report.open_files_min > 16:
        report.problems.append(
            f"open files went from {report.open_files_min} to {report.open_files_max}"
        )
    if token_seen:
        report.problems.append("the API token appeared in the bridge's output")
    return report


def differing_duplicates(requests: Sequence[RequestRecord]) -> int:
    """Stored points whose (device, metric, timestamp) came before with another value."""
    first: dict[tuple[str, str, str], object] = {}
    differing = 0
    for r in requests:
        if r.points_written <= 0 or not isinstance(r.body, list):
            continue
        for obj in r.body:
            assert isinstance(obj, dict)
            metrics = obj["metrics"]
            assert isinstance(metrics, dict)
            for name, value in metrics.items():
                key = (str(obj["device_id"]), name, str(obj["timestamp"]))
                if first.setdefault(key, value) != value:
                    differing += 1
    return differing


def render(report: SoakReport) -> str:
    """A human summary."""
    lines = [f"{k.replace('_', ' '):<24} {v}" for k, v in asdict(report).items() if k != "problems"]
    lines.append(
        "RESULT: OK — nothing lost"
        if not report.problems
        else "RESULT: FAILED — " + "; ".join(report.problems)
    )
    lines.append(f"replay: metriqo-bridge soak --minutes {report.minutes:g} --seed {report.seed}")
    return "\n".join(lines)


# -- the shell ------------------------------------------------------------------------------------


def run_soak(args: argparse.Namespace) -> int:
    """Run a soak; 0 when the oracle passed, 1 otherwise, 2 for a bad fault name, 69 without
    mosquitto."""
    kinds = [k.strip() for k in str(args.faults).split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(FAULTS))
    if unknown or not kinds:
        print(f"soak: unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
        return EX_USAGE
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"soak: seed {seed}, {args.minutes:g} min at {args.rate:g} msg/s", flush=True)
    workdir_cm: contextlib.AbstractContextManager[str]
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        workdir_cm = contextlib.nullcontext(str(args.keep))
    else:
        workdir_cm = tempfile.TemporaryDirectory(prefix="metriqo-soak-")
    try:
        with workdir_cm as tmp:
            work = Path(tmp)
            with LocalBroker(workdir=work / "broker") as broker:
                report = asyncio.run(_Soak(args, seed, kinds, work, broker).run())
    except BrokerUnavailable as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    print(render(report), flush=True)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return EX_OK if not report.problems else EX_FAILURE


class _Soak:
    def __init__(
        self,
        args: argparse.Namespace,
        seed: int,
        kinds: list[str],
        work: Path,
        broker: LocalBroker,
    ) -> None:
        self.args = args
        self.seed = seed
        self.work = work
        self.broker = broker
        self.duration = float(args.minutes) * 60
        self.events = schedule(seed, self.duration, kinds)
        self.messages = int(args.rate * self.duration)
        self.base_ms = int(time.time() * 1000) - 20 * 86_400_000
        self.token = "mqk_soak_" + secrets.token_hex(16)
        self.store = ApiStore()
        self.api_port = free_port()
        self.api_faults: Faults | None = None
        self.api_restart = asyncio.Event()
        self.samples: list[Sample] = []
        self.starts = 0
        self.t0 = 0.0

    def _log(self, text: str) -> None:
        print(f"soak: t={time.monotonic() - self.t0:7.1f}s  {text}", flush=True)

    async def run(self) -> SoakReport:
        mappings = self.work / "soak-mappings.yaml"
        mappings.write_text(BENCH_MAPPINGS, encoding="utf-8")
        async with (
            FaultProxy("127.0.0.1", self.broker.port) as mqtt_link,
            FaultProxy("127.0.0.1", self.api_port) as api_link,
        ):
            settings = {
                "mqtt.port": str(mqtt_link.port),
                "mqtt.client_id": "metriqo-soak",
                "mqtt.keepalive_s": "5",
                "mqtt.reconnect_max_s": "2",
                "api.base_url": f"http://127.0.0.1:{api_link.port}/api/v2",
                "api.requests_per_minute": "6000",
                "api.read_timeout_s": "3",
                "api.total_timeout_s": "8",
                "api.retry_max_s": "2",
                "batch.linger_s": "0.5",
                "spool.path": str(self.work / "spool.db"),
                "mapping.file": str(mappings),
                "mapping.reload_interval_s": "0",
                "stop_timeout_s": "5",
                "log_level": "WARNING",
            }
            bridge = BridgeProcess(self.work, settings, self.token)
            publisher = Publisher(self.broker.port, self.messages, self.base_ms)
            self.t0 = time.monotonic()
            api_task = asyncio.create_task(self._serve_api())
            try:
                self._start(bridge)
                await asyncio.to_thread(bridge.wait_ready)
                publishing = asyncio.create_task(asyncio.to_thread(publisher.run, self.args.rate))
                sampler = asyncio.create_task(self._sample(bridge))
                await self._inject(bridge, mqtt_link, api_link)
                await publishing
                self._log(f"published {self.messages} messages; all acknowledged by the broker")
                await self._drain(bridge)
                sampler.cancel()
                code = await asyncio.to_thread(bridge.stop)
                if code != 0:
                    self._log(f"bridge exited with {code} on SIGTERM")
            finally:
                publisher.close()
                bridge.kill()
                api_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await api_task
        requests = self.store.requests
        return verdict(
            seed=self.seed,
            minutes=float(self.args.minutes),
            messages=self.messages,
            base_ms=self.base_ms,
            requests=requests,
            differing=differing_duplicates(requests),
            events=self.events,
            starts=self.starts,
            samples=self.samples,
            token_seen=self.token in bridge.log(),
        )

    def _start(self, bridge: BridgeProcess, failpoint: str = "") -> None:
        env = {"METRIQO_BRIDGE_FAILPOINTS": failpoint} if failpoint else None
        bridge.start(env)
        self.starts += 1

    async def _serve_api(self) -> None:
        """The API on one port and one store; restarted whenever its faults change."""
        while True:
            async with LocalApi(
                self.token,
                port=self.api_port,
                rate_limit_per_minute=None,
                store=self.store,
                faults=self.api_faults,
            ):
                self.api_restart.clear()
                await self.api_restart.wait()

    async def _set_api_faults(self, faults: Faults | None) -> None:
        self.api_faults = faults
        self.api_restart.set()
        await asyncio.sleep(0.2)

    async def _sample(self, bridge: BridgeProcess) -> None:
        while True:
            await asyncio.sleep(2.0)
            if bridge.running and bridge.proc is not None:
                with contextlib.suppress(OSError, ValueError):
                    pid = bridge.proc.pid
                    t = time.monotonic() - self.t0
                    self.samples.append(Sample(pid, t, bridge.rss_now(), bridge.open_files()))

    async def _inject(
        self, bridge: BridgeProcess, mqtt_link: FaultProxy, api_link: FaultProxy
    ) -> None:
        for event in self.events:
            wait = self.t0 + event.at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._log(f"fault {event.kind} {event.detail} for {event.seconds:g} s".rstrip())
            await self._apply(event, bridge, mqtt_link, api_link)
            if not bridge.running:  # a failpoint fired, or the bridge died on its own
                self._log(f"bridge not running (exit {bridge.proc and bridge.proc.returncode})")
                await asyncio.to_thread(bridge.stop)
                self._start(bridge)
            await asyncio.to_thread(bridge.wait_alive)

    async def _apply(
        self, event: FaultEvent, bridge: BridgeProcess, mqtt_link: FaultProxy, api_link: FaultProxy
    ) -> None:
        kind, seconds = event.kind, event.seconds
        if kind in ("bridge_kill", "bridge_term"):
            if kind == "bridge_kill":
                bridge.kill()
            else:
                await asyncio.to_thread(bridge.stop)
            await asyncio.sleep(seconds)
            self._start(bridge)
        elif kind == "bridge_failpoint":
            await asyncio.to_thread(bridge.stop)
            self._start(bridge, event.detail)
            deadline = time.monotonic() + seconds
            while bridge.running and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a process
                await asyncio.sleep(0.1)
            if bridge.running:
                await asyncio.to_thread(bridge.stop)  # not reached in time: restart unarmed
            self._start(bridge)
        elif kind == "broker_restart":
            await asyncio.to_thread(self.broker.stop)
            await asyncio.sleep(seconds)
            await asyncio.to_thread(self.broker.start)
        elif kind == "broker_hang":
            self.broker.pause()
            await asyncio.sleep(seconds)
            self.broker.resume()
        elif kind.startswith("mqtt_"):
            await mqtt_link.set_mode(_link_mode(kind, event.detail))
            await asyncio.sleep(seconds)
            await mqtt_link.set_mode(PASS)
        elif kind.startswith("api_") and kind not in ("api_5xx", "api_429"):
            await api_link.set_mode(_link_mode(kind, event.detail))
            await asyncio.sleep(seconds)
            await api_link.set_mode(PASS)
        else:
            faults = (
                Faults(error_rate=0.3, rng=random.Random(self.seed))  # noqa: S311 - replayable
                if kind == "api_5xx"
                else Faults(storm_429_s=seconds, retry_after=event.detail)  # type: ignore[arg-type]
            )
            await self._set_api_faults(faults)
            await asyncio.sleep(seconds)
            await self._set_api_faults(None)

    async def _drain(self, bridge: BridgeProcess) -> None:
        """Wait until every point arrived, or the spool stays busy for too long."""
        want = self.messages * METRICS_PER_MESSAGE
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            # point_count includes duplicates: only then count distinct points, which is dearer.
            if self.store.point_count() >= want:
                with contextlib.suppress(OSError, ValueError):
                    if (
                        await asyncio.to_thread(bridge.spool_points) == 0
                        and _distinct(self.store.requests, self.base_ms, self.messages) >= want
                    ):
                        return
            await asyncio.sleep(1.0)
        self._log("gave up waiting for the drain after 300 s")


def _distinct(requests: Sequence[RequestRecord], base_ms: int, messages: int) -> int:
    return sum(1 for i, _m in accepted_points(requests, base_ms) if 0 <= i < messages)


def _link_mode(kind: str, detail: str) -> Mode:
    what = kind.split("_", 1)[1]
    if what == "refuse":
        return REFUSE
    if what == "blackhole":
        return BLACKHOLE
    if what == "reset":
        return reset_after(int(detail))
    return latency(0.5)
