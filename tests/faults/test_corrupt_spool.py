"""Row 13: a corrupt spool at start is moved aside (never deleted), an alarm is raised, and the
bridge carries on with a new spool."""

from __future__ import annotations

import time
from pathlib import Path

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support.harness import (
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    running_bridge,
)


def _kept(directory: Path, pattern: str) -> list[bytes]:
    """Contents of the moved-aside database files (not their -wal/-shm companions)."""
    found = directory.glob(pattern)
    return [p.read_bytes() for p in found if not p.name.endswith(("-wal", "-shm"))]


async def test_a_corrupt_spool_is_kept_aside_alarmed_and_replaced(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    spool = tmp_path / "spool.db"
    garbage = b"SQLite format 3\x00" + bytes(range(256)) * 64  # a damaged file, not ours to lose
    spool.write_bytes(garbage)
    settings = make_settings(broker.port, api.url, spool)
    start_ms = int(time.time() * 1000) - 100
    async with running_bridge(settings) as bridge:
        assert metric(bridge, "metriqo_bridge_spool_corrupt_moved_aside") == 1
        await publish(broker.port, env_messages(20, start_ms))
        await api.store.wait_for_points(80, 30)
    assert set(delivered_points(api.store.points())) == expected_env_points(20, start_ms)
    assert _kept(tmp_path, "spool.db.corrupt-*") == [garbage]


async def test_a_healthy_spool_raises_no_alarm(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        assert metric(bridge, "metriqo_bridge_spool_corrupt_moved_aside") == 0
    assert _kept(tmp_path, "*.corrupt-*") == []
