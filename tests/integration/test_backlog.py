"""Backlogs after an outage: which points go first, and the opt-in drop-oldest spool policy.

Each test runs a real bridge against a real mosquitto and a local API that is down at first
(nothing listens on its port) and comes up later, so a backlog builds in the real spool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker, free_port
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


async def _wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


def _request_ts_ms(body: object) -> list[int]:
    assert isinstance(body, list)
    return [
        round(datetime.fromisoformat(str(o["timestamp"]).replace("Z", "+00:00")).timestamp() * 1000)
        for o in body
    ]


@pytest.mark.parametrize("order", ["oldest-first", "live-first"])
async def test_backlog_order_decides_which_points_go_first(
    broker: LocalBroker, tmp_path: Path, order: str
) -> None:
    """After an outage, oldest-first sends the backlog in arrival order; live-first sends the
    newest points first. Either way every point arrives once."""
    n = 400
    start_ms = int(time.time() * 1000) - n
    port = free_port()
    settings = make_settings(
        broker.port,
        f"http://127.0.0.1:{port}/api/v2",
        tmp_path / "spool.db",
        **{"batch.backlog_order": order, "api.concurrency": "1", "api.retry_min_s": "0.05"},
    )
    async with running_bridge(settings) as bridge:
        await publish(broker.port, env_messages(n, start_ms))
        await _wait_for(lambda: metric(bridge, "metriqo_bridge_spool_points") == 4 * n)
        async with LocalApi(token=TOKEN, port=port, rate_limit_per_minute=None) as api:
            await api.store.wait_for_points(4 * n, 30)
            accepted = [r for r in api.store.requests if r.status == 201]
            got = delivered_points(api.store.points())
    assert sorted(got) == sorted(expected_env_points(n, start_ms))  # once each
    # The first accepted request is the batch taken (and retried) while the API was down: the
    # newest or oldest points at that moment. From then on the order policy shows throughout.
    first, second = (_request_ts_ms(r.body) for r in accepted[:2])
    if order == "live-first":
        assert start_ms + n - 1 in first + second
        later = [max(_request_ts_ms(r.body)) for r in accepted[1:]]
        assert later == sorted(later, reverse=True)  # the backlog drains newest to oldest
    else:
        assert start_ms in first
        earliest = [min(_request_ts_ms(r.body)) for r in accepted]
        assert earliest == sorted(earliest)


async def test_drop_oldest_keeps_intake_going_and_counts_every_dropped_point(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """With spool.when_full=drop-oldest and the API down, the spool never stops intake; it
    deletes the oldest waiting points, and every published point is either delivered or
    counted as dropped — never both, never neither."""
    n = 12000
    start_ms = int(time.time() * 1000) - n
    port = free_port()
    settings = make_settings(
        broker.port,
        f"http://127.0.0.1:{port}/api/v2",
        tmp_path / "spool.db",
        **{"spool.max_bytes": str(1 << 20), "spool.when_full": "drop-oldest"},
    )
    async with running_bridge(settings) as bridge:
        await publish(broker.port, env_messages(n, start_ms))
        await _wait_for(lambda: metric(bridge, "metriqo_bridge_messages_committed_total") == n)
        # Every message in exactly one group commit, and the burst grouped: fewer commits
        # than messages (a busy machine only makes the groups larger).
        commits = metric(bridge, "metriqo_bridge_spool_commit_messages_count")
        assert metric(bridge, "metriqo_bridge_spool_commit_messages_sum") == n
        assert 1 <= commits < n
        assert metric(bridge, "metriqo_bridge_spool_commit_duration_seconds_count") == commits
        dropped = metric(bridge, "metriqo_bridge_points_dropped_total", reason="spool_full")
        assert dropped > 0
        assert metric(bridge, "metriqo_bridge_spool_full") == 0
        assert metric(bridge, "metriqo_bridge_intake_paused_seconds_total") == 0
        async with LocalApi(token=TOKEN, port=port, rate_limit_per_minute=None) as api:
            await _wait_for(lambda: metric(bridge, "metriqo_bridge_spool_points") == 0, 60)
            await _wait_for(lambda: bridge.delivery is not None and bridge.delivery.idle)
            got = delivered_points(api.store.points())
        assert bridge.spool.file.dropped_points_total == dropped
    expected = expected_env_points(n, start_ms)
    assert len(got) == len(set(got))
    assert set(got) <= expected
    assert len(got) + dropped == len(expected)
    newest = max(p[2] for p in expected)
    assert any(p[2] == newest for p in got)  # the newest readings survived
