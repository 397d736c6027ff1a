"""``verify`` and ``devices`` over real HTTP against the local API, after a real bridge
delivered points through a real broker into the real spool: agreement, points deleted from the
API's store behind the bridge's back (a minimum, a middle point, a whole minute), a value the
bridge never sent, the registry's four findings, and each endpoint's own 429 honoured."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bridge.api.client import ApiClient, RetryPolicy
from bridge.cli.devices import fetch_registry
from bridge.cli.verify import check_sample
from bridge.lab.apiserver.ratelimits import EndpointLimits
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.sender import Sender
from bridge.settings import SenderSettings
from bridge.spool.audit import MINUTE_US, AuditRow
from tests.support import TOKEN
from tests.support.clock import FakeClock
from tests.support.harness import (
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    run_cli,
    running_bridge,
)
from tests.support.oracle import wait_delivered, wait_for

UNLIMITED = EndpointLimits(telemetry=None, devices=None, metrics=None, alerts=None)
COUNT = 120  # 12 devices (s0-l0 … s2-l3), 10 messages each, 4 metrics: 48 audited minutes
WAIT = 10.0


def minute_ago(minutes: int) -> int:
    """Epoch ms of the start of the minute ``minutes`` before this one."""
    now_ms = int(time.time() * 1000)
    return now_ms - now_ms % 60_000 - minutes * 60_000


async def deliver(broker: LocalBroker, api: LocalApi, spool: Path, start_ms: int) -> None:
    """A real bridge delivers the env messages (all in one minute), then stops gracefully."""
    settings = make_settings(broker.port, api.url, spool)
    async with running_bridge(settings):
        assert await publish(broker.port, env_messages(COUNT, start_ms)) == COUNT
        await wait_delivered(api, expected_env_points(COUNT, start_ms))


def cli_args(tmp_path: Path, api: LocalApi, spool: Path) -> list[str]:
    token = tmp_path / "token"
    if not token.exists():
        token.write_text(TOKEN + "\n")
        os.chmod(token, 0o600)
    return [
        "--state-dir",
        str(tmp_path / "state"),
        "--spool-path",
        str(spool),
        "--api-base-url",
        api.url,
        "--api-token-file",
        str(token),
    ]


async def cli(tmp_path: Path, api: LocalApi, spool: Path, *args: str) -> tuple[int, Any]:
    """Run the command in a subprocess (off the loop, which serves the API) → (exit, JSON)."""
    command, *rest = args
    done = await asyncio.to_thread(
        run_cli, command, *cli_args(tmp_path, api, spool), *rest, "--json"
    )
    assert TOKEN not in done.stdout + done.stderr
    assert done.stdout, done.stderr
    return done.returncode, orjson.loads(done.stdout)


def ms(start_ms: int, i: int) -> datetime:
    return datetime.fromtimestamp((start_ms + i) / 1000, UTC)


async def test_verify_agrees_then_finds_what_was_deleted_behind_the_bridges_back(
    broker: LocalBroker, tmp_path: Path
) -> None:
    spool = tmp_path / "spool.db"
    start = minute_ago(5)
    async with LocalApi(TOKEN, limits=UNLIMITED) as api:
        await deliver(broker, api, spool, start)
        verify = ("verify", "--since", "1h", "--settle", "0s", "--sample", "1000")
        code, report = await cli(tmp_path, api, spool, *verify)
        assert (code, report["ok"], report["findings"]) == (0, True, [])
        assert report["checked"] == report["candidates"] == 48
        assert report["queries"] == 48  # one per device and metric
        assert report["counts"]["agree"] == 48

        # s0-l0 has messages i = 0, 12, …, 108: its temp minimum is i = 0 (0.25).
        assert api.store.delete_points("s0-l0", "temp", ms(start, 0), ms(start, 1)) == 1
        # s1-l0 has i = 1, 13, …, 109: i = 49 (temp 49.25) is neither its min nor its max.
        assert api.store.delete_points("s1-l0", "temp", ms(start, 49), ms(start, 50)) == 1
        # Every rh point of s2-l0: the whole minute is gone.
        assert api.store.delete_points("s2-l0", "rh") == 10
        # A value this bridge never sent, in the minute of s0-l1's temp (its max is 111.25).
        async with Sender(SenderSettings(base_url=api.url), lambda: TOKEN) as sender:
            stamp = ms(start, 30_000).isoformat().replace("+00:00", "Z")
            body: dict[str, object] = {
                "device_id": "s0-l1",
                "timestamp": stamp,
                "metrics": {"temp": 1e6},
            }
            assert await sender.post([body], "other-writer") == 1

        code, report = await cli(tmp_path, api, spool, *verify)
    assert code == 1
    assert report["ok"] is False
    counts = report["counts"]
    assert (counts["gap"], counts["missing"], counts["avg"], counts["extra"]) == (1, 1, 1, 1)
    assert counts["agree"] == 44
    found = {(f["device_id"], f["metric"]): f for f in report["findings"]}
    assert found[("s0-l0", "temp")]["verdict"] == "missing"
    assert found[("s0-l0", "temp")]["accepted"]["min"] == 0.25
    assert found[("s0-l0", "temp")]["api"]["min"] == 12.25
    middle = found[("s1-l0", "temp")]
    assert middle["verdict"] == "avg"  # min and max unchanged: only the average shows it
    assert (middle["api"]["min"], middle["api"]["max"]) == (1.25, 109.25)
    assert middle["accepted"]["count"] == 10
    assert found[("s2-l0", "rh")] == {**found[("s2-l0", "rh")], "verdict": "gap", "api": None}
    assert found[("s0-l1", "temp")]["verdict"] == "extra"


async def test_verify_limits_itself_to_the_devices_asked_and_the_window(
    broker: LocalBroker, tmp_path: Path
) -> None:
    spool = tmp_path / "spool.db"
    start = minute_ago(90)  # older than --since 1h
    async with LocalApi(TOKEN, limits=UNLIMITED) as api:
        await deliver(broker, api, spool, start)
        code, report = await cli(tmp_path, api, spool, "verify", "--since", "1h")
        assert (code, report["candidates"], report["queries"]) == (0, 0, 0)
        code, report = await cli(
            tmp_path, api, spool, "verify", "--since", "2h", "--device", "s0-l0", "--sample", "2"
        )
    assert (code, report["candidates"], report["checked"]) == (0, 4, 2)
    assert report["queries"] <= 2


async def test_devices_reports_the_four_findings(broker: LocalBroker, tmp_path: Path) -> None:
    spool = tmp_path / "spool.db"
    async with LocalApi(TOKEN, limits=UNLIMITED) as api:
        await deliver(broker, api, spool, minute_ago(1))
        now = datetime.now(UTC)
        assert api.store.registry.remove("s0-l0")  # deleted in the dashboard
        api.store.register_device("s1-l0", "Line 1", last_seen=now - timedelta(hours=2))
        api.store.register_device("ghost", "Never seen")
        api.store.register_device("other-writer", "Busy", last_seen=now)
        code, report = await cli(tmp_path, api, spool, "devices", "--silent-for", "1h")
        human = await asyncio.to_thread(
            run_cli, "devices", *cli_args(tmp_path, api, spool), "--silent-for", "1h"
        )
    assert code == 0
    assert report["devices"] == {
        "unknown": ["s0-l0"],
        "silent": ["ghost", "s1-l0"],
        "offline_delivering": ["s1-l0"],
        "online_not_delivered": ["other-writer"],
    }
    assert report["counts"] == {
        "unknown": 1,
        "silent": 2,
        "offline_delivering": 1,
        "online_not_delivered": 1,
    }
    assert (report["registered"], report["delivered"]) == (
        13,
        12,
    )  # 12 delivered, one removed, two added
    assert human.returncode == 0
    assert "online_not_delivered (1)" in human.stdout
    assert "other-writer  Busy" in human.stdout


def shared_time() -> tuple[FakeClock, Callable[[float], Awaitable[None]]]:
    """One fake clock for the server's rate windows and the client's pacing and sleeps."""
    clock = FakeClock()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    return clock, sleep


def paced_client(api: LocalApi, clock: FakeClock, sleep: Any) -> ApiClient:
    return ApiClient(
        SenderSettings(base_url=api.url),
        lambda: TOKEN,
        retry=RetryPolicy(attempts=4, backoff_min_s=0.01, backoff_max_s=0.05),
        clock=clock,
        sleep=sleep,
    )


async def test_verify_and_devices_honour_their_endpoints_429() -> None:
    """Each endpoint allows 2 requests a window: the third query of verify and the third page
    of devices meet a 429 and are retried no sooner than its Retry-After."""
    clock, sleep = shared_time()
    limits = EndpointLimits(telemetry=None, devices=2, metrics=2, alerts=None)
    t0 = datetime(2024, 11, 15, 8, 0, tzinfo=UTC)
    async with LocalApi(TOKEN, clock=clock, limits=limits) as api:
        for i in range(250):
            api.store.register_device(f"dev-{i:03d}", last_seen=t0)
        minute = int(t0.timestamp()) * 1_000_000
        rows = [AuditRow(f"dev-00{i}", "temp", minute, 1, 1.0, 1.0, 1.0) for i in range(3)]
        async with asyncio.timeout(WAIT):
            report = await check_sample(paced_client(api, clock, sleep), rows, 3)
            registry = await fetch_registry(paced_client(api, clock, sleep))
    assert [f.verdict for f in report.findings] == ["gap"] * 3  # no points were ever sent
    assert len(registry) == 250
    for endpoint in ("metrics", "devices"):
        calls = [c for c in api.store.calls if c.endpoint == endpoint]
        assert [c.status for c in calls] == [200, 200, 429, 200]
        retry_after = calls[2].retry_after
        assert retry_after is not None
        assert calls[3].received_at >= calls[2].received_at + retry_after
    assert MINUTE_US == 60_000_000


async def test_the_background_audit_counts_a_deleted_minimum(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """api.audit_queries_per_minute: the running bridge checks random audited minutes of one
    device (4 metrics); they agree until its minimum temperature is deleted from the API."""
    name = "metriqo_bridge_verify_checks_total"
    start = minute_ago(5)
    async with LocalApi(TOKEN, limits=UNLIMITED) as api:
        settings = make_settings(
            broker.port, api.url, tmp_path / "spool.db", **{"api.audit_queries_per_minute": "300"}
        )
        async with running_bridge(settings) as bridge:
            assert await publish(broker.port, env_messages(10, start, 1, 1)) == 10
            await wait_delivered(api, expected_env_points(10, start, 1, 1))
            await wait_for(lambda: metric(bridge, name, result="agree") >= 4, 30)
            assert metric(bridge, name, result="missing") == 0
            assert api.store.delete_points("s0-l0", "temp", ms(start, 0), ms(start, 1)) == 1
            await wait_for(lambda: metric(bridge, name, result="missing") >= 1, 60)
            assert metric(bridge, name, result="error") == 0
            assert metric(bridge, name, result="gap") == 0


async def test_the_background_audit_is_off_by_default(broker: LocalBroker, tmp_path: Path) -> None:
    async with LocalApi(TOKEN, limits=UNLIMITED) as api:
        settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
        async with running_bridge(settings):
            names = {t.get_name() for t in asyncio.all_tasks()}
    assert "bridge.spool.housekeeping" in names
    assert "bridge.verify.background" not in names
