"""Unit tests of the heaviest-talkers watch: its gauge, and a log line naming the runaway
device when the fair share kicks in, then at most once a minute while it lasts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bridge.metrics import BridgeMetrics
from bridge.settings import SpoolSettings
from bridge.spool.facade import AsyncSpool
from bridge.spool.store import Spool
from bridge.talkers import Talkers
from tests.support.clock import FakeClock
from tests.support.spool import NOW_S, RUNAWAY, burst, quiet


async def test_the_runaway_is_named_when_the_fair_share_kicks_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is logged while the spool is far from its cap; once the runaway is held the
    log names it with its share and held points, once per report interval, and the gauge
    counts one device over its share."""
    metrics = BridgeMetrics()
    clock = FakeClock(0.0)
    settings = SpoolSettings(tmp_path / "s.db", max_bytes=1 << 20, reserve_bytes=0)
    spool = Spool(settings, clock=FakeClock(NOW_S))
    caplog.set_level(logging.WARNING, logger="bridge.talkers")
    async with AsyncSpool(spool) as s:
        talkers = Talkers(s, metrics, report_every_s=60.0, clock=clock)
        spool.writer.commit(burst(0) + quiet(0), [])
        await talkers.check()
        assert not caplog.records
        i = 1
        while not spool.file.held_points:
            spool.writer.commit(burst(i) + quiet(i), [])
            i += 1
        await talkers.check()
        (line,) = [r.getMessage() for r in caplog.records]
        assert f"heaviest: {RUNAWAY!r} (" in line
        assert "held" in line
        assert "GET /debug/top-devices" in line
        gauge = metrics.registry.get_sample_value("metriqo_bridge_spool_devices_over_share")
        assert gauge == 1
        clock.advance(30.0)
        await talkers.check()
        assert len(caplog.records) == 1
        clock.advance(31.0)
        await talkers.check()
        assert len(caplog.records) == 2
