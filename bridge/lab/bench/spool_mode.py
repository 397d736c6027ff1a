"""``bench spool``: a spool prefilled with millions of points, the bridge started on it with the
API down (idle, then with live traffic), then the API up while it drains: the bridge's memory
throughout, and every point accounted for."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import secrets
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from bridge.errors import EX_FAILURE, EX_OK
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.apiserver.store import RequestRecord
from bridge.lab.bench.report import (
    PointLedger,
    SpoolReport,
    render,
    rss_target,
    spool_problems,
)
from bridge.lab.bench.workspace import DEVICES, bridge_settings
from bridge.lab.broker import LocalBroker, free_port
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

# -- the shell -----------------------------------------------------------------------------------


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


class SpoolBench:
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
        self.settings = bridge_settings(args, broker, workdir, self.api_port, "metriqo-bench")
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
                pool, prefill_spool, self.spool_path, self.prefilled, self.base_ms, DEVICES
            )
        prefill_s = time.monotonic() - start
        spool_mb = self.spool_path.stat().st_size / 2**20
        bridge = BridgeProcess(self.workdir, self.settings, self.token)
        publisher = ProcessPublisher(
            self.broker.port, self.live, self.base_ms + self.prefilled, DEVICES
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
        return EX_OK if not report.problems else EX_FAILURE

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
            await api.settle()  # see BridgeProcess.stop
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
