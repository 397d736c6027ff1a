"""The heaviest talkers: ``GET /debug/top-devices`` and a log line naming them while the fair
share of the spool is in force, so an operator learns which device is running away without a
device label on any metric (their number is unbounded)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from bridge.metrics import BridgeMetrics
from bridge.spool.facade import AsyncSpool

log = logging.getLogger(__name__)

TOP_DEFAULT = 10
LOG_NAMES = 5  # devices named in the log line


class Talkers:
    """Watches the fair share once a second: sets its gauges, and logs the heaviest talkers
    when it kicks in and then at most once per ``report_every_s`` while it lasts."""

    def __init__(
        self,
        spool: AsyncSpool,
        metrics: BridgeMetrics,
        *,
        report_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spool = spool
        self._m = metrics
        self._every = report_every_s
        self._clock = clock
        self._last_report: float | None = None
        self._dropped_seen = 0.0

    async def top(self, limit: int = TOP_DEFAULT) -> dict[str, object]:
        """The ``/debug/top-devices`` answer (``limit`` is capped by the spool)."""
        return await self._spool.top_devices(limit)

    async def watch_loop(self, interval: float = 1.0) -> None:
        """Run until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(interval)

    async def check(self) -> None:
        """One look: update the gauges; log the heaviest talkers when due."""
        status = await self._spool.fair_status()
        self._m.spool_devices_over_share.set(status.over_share)
        dropped = self._m.registry.get_sample_value(
            "metriqo_bridge_points_dropped_total", {"reason": "over_share"}
        )
        dropping = (dropped or 0.0) > self._dropped_seen
        self._dropped_seen = dropped or 0.0
        if not (status.active and (status.over_share or status.held_points)) and not dropping:
            self._last_report = None  # the next episode is reported at once
            return
        now = self._clock()
        if self._last_report is not None and now - self._last_report < self._every:
            return
        self._last_report = now
        top = await self._spool.top_devices(LOG_NAMES)
        fair = top["fair_share"]
        assert isinstance(fair, dict)
        devices = top["devices"]
        assert isinstance(devices, list)
        names = ", ".join(
            f"{d['device_id']!r} ({d['points_waiting']} point(s) waiting, "
            f"{100 * d['share_of_spool']:.0f}% of the spool, {d['points_held']} held, "
            f"{d['points_dropped']} dropped)"
            for d in devices
        )
        log.warning(
            "fair share: the spool is at %d of %d bytes and %d device(s) are over their "
            "share; heaviest: %s (all: GET /debug/top-devices)",
            fair["spool_bytes"],
            fair["max_bytes"],
            status.over_share,
            names,
        )
