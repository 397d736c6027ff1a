"""What the delivery loop does with a batch the API refused for its content (400, 413, 422):
find the refused points by bisection, deliver the rest, dead-letter only those.

A batch of several records is split in halves, each delivered (or split again) on its own; a
single record of several metrics is bisected by metric, and settled in one spool transaction
that dead-letters the refused metrics and counts the rest as delivered. A crash midway re-sends
the record whole (identical points). Any other refusal dead-letters the batch as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bridge.batcher import Batch
from bridge.errors import PermanentDelivery
from bridge.logs import LogThrottle
from bridge.metrics import BridgeMetrics
from bridge.models import SpooledRecord
from bridge.spool.facade import AsyncSpool

log = logging.getLogger(__name__)

BISECTED = (400, 413, 422)  # the API refused something in the body: find what

Send = Callable[[Batch], Awaitable[tuple[int | None, PermanentDelivery | None]]]
Deliver = Callable[[Batch], Awaitable[None]]
# Record a refusal in the spool, then count the points of it that were delivered (None: none).
Settle = Callable[[Callable[[], Awaitable[None]], int | None], Awaitable[None]]


class Rejections:
    """Handles permanent refusals for the delivery loop (see the module docstring)."""

    def __init__(
        self,
        spool: AsyncSpool,
        send: Send,
        deliver: Deliver,
        settle: Settle,
        *,
        metrics: BridgeMetrics,
        throttle: LogThrottle,
    ) -> None:
        self._spool = spool
        self._send = send
        self._deliver = deliver
        self._settle = settle
        self._m = metrics
        self._throttle = throttle

    async def refused(self, batch: Batch, exc: PermanentDelivery) -> None:
        """The API refused ``batch`` for good with ``exc``."""
        if len(batch.records) > 1 and exc.status in BISECTED:
            # Isolate the offending points: halves are delivered (or split) independently.
            half = len(batch.records) // 2
            for part in (batch.records[:half], batch.records[half:]):
                await self._deliver(Batch(part, sum(r.points for r in part)))
            return
        if batch.points > 1 and exc.status in BISECTED:
            await self._isolate_metrics(batch.records[0], exc)
            return
        detail = f"HTTP {exc.status}: {exc.body}"
        seqs = batch.seqs
        await self._settle(lambda: self._spool.reject(seqs, "api_rejected", detail), None)
        self._m.dead_letters.labels("api_rejected").inc(len(batch.records))
        # Throttled: an API that starts refusing a whole fleet's metric must not flood the log.
        self._throttle.log(
            log,
            logging.ERROR,
            "api_rejected",
            "API rejected %d point(s) of device %r permanently; moved to dead letters: %s",
            batch.points,
            batch.records[0].device_id,
            detail,
            extra={
                "event": "api_rejected",
                "reason": "api_rejected",
                "status": exc.status,
                "device": batch.records[0].device_id,
                "points": batch.points,
            },
        )

    async def _isolate_metrics(self, record: SpooledRecord, exc: PermanentDelivery) -> None:
        """The API refused one record of several metrics: bisect its metrics so the good ones
        are delivered and only the refused ones are dead-lettered."""
        refused: dict[str, float] = {}
        answers: list[str] = []

        async def probe(names: list[str], refusal: PermanentDelivery | None) -> None:
            if refusal is None:
                part = record._replace(metrics={k: record.metrics[k] for k in names})
                _written, refusal = await self._send(Batch((part,), len(names)))
                if refusal is None:
                    return
            if len(names) == 1 or refusal.status not in BISECTED:
                refused.update({k: record.metrics[k] for k in names})
                answers.append(f"HTTP {refusal.status}: {refusal.body}")
                return
            half = len(names) // 2
            await probe(names[:half], None)
            await probe(names[half:], None)

        await probe(sorted(record.metrics), exc)
        detail = "; ".join(dict.fromkeys(answers))
        await self._settle(
            lambda: self._spool.settle_partly(record.seq, refused, "api_rejected", detail),
            record.points - len(refused),
        )
        self._m.dead_letters.labels("api_rejected").inc()
        self._throttle.log(
            log,
            logging.ERROR,
            "api_rejected_metrics",
            "API rejected %d of %d point(s) of device %r permanently (%s); delivered the rest, "
            "moved those to dead letters: %s",
            len(refused),
            record.points,
            record.device_id,
            ", ".join(sorted(refused)),
            detail,
            extra={
                "event": "api_rejected",
                "reason": "api_rejected",
                "status": exc.status,
                "device": record.device_id,
                "points": len(refused),
                "metrics": sorted(refused),
            },
        )
