"""The background ``verify`` (``api.audit_queries_per_minute``, off by default): one random
minute of the audit of accepted points at a time, checked against ``GET /metrics`` with the
verdicts of :mod:`bridge.reconcile.landed`, counted in ``verify_checks_total{result}``.

Its own :class:`~bridge.api.client.ApiClient` paces the queries at the configured rate (the
metrics endpoint's budget is separate from telemetry's, so nothing here can delay delivery).
Minutes that ended less than :data:`SETTLE_S` ago are skipped: their points may be between the
API's answer and the spool's settlement. A failed query counts as ``error`` and the loop goes
on; it never stops the bridge.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

from bridge.api.client import ApiClient, Budgets, RetryPolicy
from bridge.errors import ApiError, ApiNotFound
from bridge.logs import LogThrottle
from bridge.metrics import BridgeMetrics
from bridge.reconcile.landed import judge
from bridge.settings import Settings
from bridge.spool.audit import MINUTE_US
from bridge.spool.facade import AsyncSpool

log = logging.getLogger(__name__)

SETTLE_S = 120.0


def audit_client(settings: Settings, token: Callable[[], str]) -> ApiClient:
    """A client that sends at most ``api.audit_queries_per_minute`` metrics queries."""
    rate = settings.delivery.audit_queries_per_minute
    return ApiClient(
        settings.sender,
        token,
        budgets=Budgets(metrics=rate, replicas=settings.delivery.replicas),
        retry=RetryPolicy(attempts=2),
    )


async def audit_loop(
    spool: AsyncSpool,
    client: ApiClient,
    metrics: BridgeMetrics,
    retention_s: float,
    *,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
) -> None:
    """Check one random audited minute after another until cancelled (the client paces)."""
    pick = rng or random.Random()  # noqa: S311 - a sample, not a secret
    throttle = LogThrottle(60.0)
    async with client as api:
        while True:
            now_us = int(clock() * 1_000_000)
            since = now_us - int(retention_s * 1_000_000)
            until = now_us - int(SETTLE_S * 1_000_000) - MINUTE_US + 1
            row = await spool.audit_pick(since, until, pick.random())
            if row is None:
                await api.pace_only("metrics")  # nothing audited yet: wait one slot, not spin
                continue
            start = datetime.fromtimestamp(row.minute_us / 1_000_000, UTC)
            end = datetime.fromtimestamp((row.minute_us + MINUTE_US) / 1_000_000, UTC)
            try:
                series = await api.metrics(row.device_id, row.metric, start, end, "1m")
                found = next((a for a in series.data if a.t == start), None)
            except ApiNotFound:
                found = None
            except ApiError as exc:
                metrics.verify_checks.labels("error").inc()
                throttle.log(log, logging.WARNING, "audit-error", "background verify: %s", exc)
                continue
            verdict = judge(row, found).verdict
            metrics.verify_checks.labels(verdict).inc()
            if verdict != "agree":
                log.warning(
                    "background verify: %s of %s %s at %s (accepted %d point(s), min %g, "
                    "max %g); run `metriqo-bridge verify --device %s` for more",
                    verdict,
                    row.device_id,
                    row.metric,
                    start.strftime("%Y-%m-%dT%H:%MZ"),
                    row.n,
                    row.lo,
                    row.hi,
                    row.device_id,
                )
