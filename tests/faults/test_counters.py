"""The bridge's own counters balance, EMQX-style: every point it mapped is delivered, waiting in
the spool, refused by the API (dead-lettered), a suppressed duplicate, or counted as dropped —
so a dashboard can tell where each reading went, and a leak shows as an imbalance."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from bridge.app import Bridge
from bridge.lab.apiserver.faults import Faults
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support import TOKEN
from tests.support.harness import (
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    running_bridge,
)

POISON = 666.125


async def _until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


def _total(bridge: Bridge, name: str) -> float:
    """Sum of every sample of one metric family (all label values)."""
    family = name.removesuffix("_total")
    return sum(
        s.value
        for m in bridge.metrics.registry.collect()
        if m.name == family
        for s in m.samples
        if s.name == name
    )


def _rejected_points(bridge: Bridge) -> int:
    rows = bridge.spool.dead_letters.recent(100_000)
    return sum(len(orjson.loads(r[4])["metrics"]) for r in rows if r[1] == "api_rejected")


async def test_counters_balance_through_faults_redeliveries_and_bad_input(
    broker: LocalBroker, tmp_path: Path
) -> None:
    n = 300
    start_ms = int(time.time() * 1000) - n - 1
    good = env_messages(n, start_ms)
    poison = (
        "plant/s0/l0/env",
        b'{"temp": 666.125, "rh": 1, "power": {"kw": 2.5, "hz": 50}, "ts": %d}' % (start_ms + n),
    )
    bad = [("plant/s0/l0/env", b"{oops"), ("plant/s0/l0/env", b"[]"), ("tele/meter/volts", b"abc")]
    faults = Faults(error_rate=0.3, poison_value=POISON, rng=random.Random(7))
    async with LocalApi(TOKEN, rate_limit_per_minute=None, faults=faults) as api:
        settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
        async with running_bridge(settings) as bridge:
            assert bridge.source is not None
            source = bridge.source
            # First half: PUBACKs are swallowed, then the link drops, so the broker redelivers
            # what the bridge already stored (duplicates the spool must suppress and count).
            real_ack = source.ack
            source.ack = lambda *_: None  # type: ignore[method-assign]
            await publish(broker.port, good[: n // 2])
            await _until(
                lambda: metric(bridge, "metriqo_bridge_messages_committed_total") >= n // 2
            )
            source.ack = real_ack  # type: ignore[method-assign]
            source._client.disconnect()
            await publish(broker.port, [*good[n // 2 :], poison, *bad], client_id="pub-2")
            want = expected_env_points(n, start_ms) | {
                ("s0-l0", "rh", start_ms + n, 1.0),
                ("s0-l0", "kw", start_ms + n, 2.5),
                ("s0-l0", "hz", start_ms + n, 50.0),
            }
            await _until(lambda: want <= set(delivered_points(api.store.points())), 60)
            await _until(
                lambda: bridge.spool.file.depth_points == 0 and bridge.delivery is not None
            )
            assert bridge.delivery is not None
            await _until(lambda: bridge.delivery is not None and bridge.delivery.idle)
            bridge.intake.flush_counters()
            received = metric(bridge, "metriqo_bridge_messages_received_total")
            committed = metric(bridge, "metriqo_bridge_messages_committed_total")
            mapped = _total(bridge, "metriqo_bridge_points_mapped_total")
            delivered = metric(bridge, "metriqo_bridge_points_delivered_total")
            waiting = metric(bridge, "metriqo_bridge_spool_points")
            suppressed = metric(bridge, "metriqo_bridge_duplicate_points_suppressed_total")
            dropped = _total(bridge, "metriqo_bridge_points_dropped_total")
            rejected = _rejected_points(bridge)
            dead_messages = _total(bridge, "metriqo_bridge_dead_letters_total")
    assert set(delivered_points(api.store.points())) == want
    assert suppressed > 0, "no redelivery happened: the scenario did not test suppression"
    assert rejected == 1  # the poison value alone; its message's other metrics were delivered
    assert received == committed
    assert mapped == delivered + waiting + rejected + suppressed + dropped, (
        f"mapped {mapped} != delivered {delivered} + waiting {waiting} + rejected {rejected}"
        f" + suppressed {suppressed} + dropped {dropped}"
    )
    assert dead_messages == len(bad) + 1  # three bad messages and one API-refused record
