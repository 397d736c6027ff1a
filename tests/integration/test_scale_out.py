"""Scale-out on MQTT shared subscriptions: three bridge processes in one share group on one real
mosquitto, each with its own client id, session and spool, delivering to the local API."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.bench.report import max_in_window
from bridge.lab.broker import LocalBroker
from tests.support import TOKEN
from tests.support.harness import (
    BridgeProcess,
    delivered_points,
    env_messages,
    expected_env_points,
    publish,
    publish_in_background,
)

GROUP = "plant-bridges"


def _replicas(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, n: int, **extra: str
) -> list[BridgeProcess]:
    return [
        BridgeProcess(
            broker.port,
            api.url,
            tmp_path / f"replica-{i}",
            **{"mqtt.client_id": f"bridge-{i}", "mqtt.share_group": GROUP, **extra},
        )
        for i in range(n)
    ]


async def _start_all(procs: list[BridgeProcess]) -> None:
    """Start every replica, then wait until each is connected and subscribed."""
    for p in procs:
        p.start()
    for p in procs:
        await asyncio.to_thread(p.wait_ready)


def _metric(proc: BridgeProcess, name: str) -> float:
    url = f"http://127.0.0.1:{proc.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} missing")


def _delivered_by(proc: BridgeProcess) -> float:
    return _metric(proc, "metriqo_bridge_points_delivered_total")


async def _wait_points(api: LocalApi, count: int, timeout: float = 60) -> None:
    await api.store.wait_for_points(count, timeout)


async def test_three_replicas_share_the_fleet_exactly_once(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Each message goes to one member of the group: every point arrives once, none twice,
    and every replica carries part of the load."""
    procs = _replicas(broker, api, tmp_path, 3)
    n = 3000
    start_ms = int(time.time() * 1000) - n
    try:
        await _start_all(procs)
        await publish(broker.port, env_messages(n, start_ms))
        await _wait_points(api, 4 * n)
        await asyncio.sleep(1.0)  # a duplicate would arrive now
        shares = [await asyncio.to_thread(_delivered_by, p) for p in procs]
        for p in procs:
            assert p.terminate() == 0
    finally:
        for p in procs:
            p.close()
    points = delivered_points(api.store.points())
    assert len(points) == 4 * n, "a point arrived twice or not at all"
    assert set(points) == expected_env_points(n, start_ms)
    assert sum(shares) == 4 * n
    assert all(share > 0 for share in shares), shares
    for p in procs:
        assert f"in share group '{GROUP}'" in p.output()


async def test_a_killed_replica_gets_its_messages_after_restart(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """SIGKILL one replica under load: mosquitto keeps routing part of the group's messages to
    its persistent session while it is down (they wait there, stranded, not handed to the
    others); when it comes back with the same client id they are delivered. Nothing is lost."""
    procs = _replicas(broker, api, tmp_path, 3)
    n = 3000
    start_ms = int(time.time() * 1000) - n
    messages = env_messages(n, start_ms)
    try:
        await _start_all(procs)
        sending = await publish_in_background(broker.port, messages, rate=1000)
        await asyncio.sleep(1.0)
        procs[1].kill()
        assert await sending == n
        # The two live replicas drain what is theirs; the killed one's share waits.
        await asyncio.sleep(3.0)
        stranded = 4 * n - len(api.store.points())
        assert stranded > 0, "mosquitto handed the down member's messages to the others"
        procs[1].start()
        await asyncio.to_thread(procs[1].wait_ready)
        await _wait_points(api, 4 * n)
        await asyncio.sleep(1.0)
        for p in procs:
            assert p.terminate() == 0
    finally:
        for p in procs:
            p.close()
    points = delivered_points(api.store.points())
    # Points are (device, metric, time, value): a copy that differed would be an extra member.
    # A batch in flight at the kill may be sent again after the restart, identical.
    assert set(points) == expected_env_points(n, start_ms)


async def test_turning_the_share_group_on_drops_the_old_subscription(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A bridge that ran without a share group has direct subscriptions in its broker session;
    restarted in a group, it unsubscribes them, so it does not receive each message twice
    (once directly, once through the group)."""
    proc = BridgeProcess(broker.port, api.url, tmp_path / "b", **{"mqtt.client_id": "bridge-0"})
    n = 200
    start_ms = int(time.time() * 1000) - n
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        assert proc.terminate() == 0
        proc.settings["mqtt.share_group"] = GROUP
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        await publish(broker.port, env_messages(n, start_ms))
        await _wait_points(api, 4 * n)
        await asyncio.sleep(1.0)
        duplicates_suppressed = _metric(proc, "metriqo_bridge_duplicate_points_suppressed_total")
        received = _metric(proc, "metriqo_bridge_messages_received_total")
        assert proc.terminate() == 0
    finally:
        proc.close()
    assert received == n, "the old direct subscription still delivered copies"
    assert duplicates_suppressed == 0
    assert len(delivered_points(api.store.points())) == 4 * n
    assert "unsubscribed 2 filter(s) the broker session kept" in proc.output()


async def test_static_shares_keep_the_group_under_the_organization_budget(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """Two replicas with api.replicas 2 pace at half the budget each: the API, enforcing the
    organization's limit over its sliding 60 s window, never answers 429, and the group's
    requests in any 60 s stay within it. (About 70 s: the budget must be exceeded to matter.)"""
    budget = 120  # requests per minute for the whole organization
    n = 135  # one message per request (4 points, batch.max_points 4): more than a minute's worth
    start_ms = int(time.time() * 1000) - n
    async with LocalApi(token=TOKEN, rate_limit_per_minute=budget) as api:
        procs = _replicas(
            broker,
            api,
            tmp_path,
            2,
            **{
                "api.requests_per_minute": str(budget),
                "api.replicas": "2",
                "api.budget_split": "static",
                "batch.max_points": "4",
                "batch.linger_s": "0",
            },
        )
        try:
            await _start_all(procs)
            await publish(broker.port, env_messages(n, start_ms))
            await api.store.wait_for_points(4 * n, 120)
            shares = [await asyncio.to_thread(_delivered_by, p) for p in procs]
            for p in procs:
                assert p.terminate() == 0
        finally:
            for p in procs:
                p.close()
        requests = list(api.store.requests)
    assert [r.status for r in requests if r.status != 201] == [], "a 429 or other refusal"
    assert max_in_window([r.received_at for r in requests], 60.0) <= budget
    assert len(requests) == n
    assert all(share > 0 for share in shares), shares
    assert set(delivered_points(api.store.points())) == expected_env_points(n, start_ms)
