"""The delivery loop: spool → batches → API, retried until accepted.

The spool hands out batches (oldest first by default, or the newest with ``live-first``), up to
one per free request slot. A batch keeps its membership (and Idempotency-Key) for every retry;
records leave the spool only in the transaction that counts their acceptance, or that moves
them to the dead letters. Retryable failures (network, timeouts, 5xx) back off with full jitter
and no attempt limit; a 429 pauses every slot until ``Retry-After`` (:class:`~bridge.ratelimit.
Pacer`); 401/403/404 pause delivery and keep the data; a 400/413/422 is bisected down to the
points the API refuses, which become dead letters (:mod:`bridge.rejections`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable

from bridge import failpoints
from bridge.backoff import Backoff
from bridge.batcher import Batch
from bridge.delivery_log import DeliveryReporter
from bridge.errors import PermanentDelivery, RetryableDelivery, UnsendableRequest
from bridge.logs import LogThrottle
from bridge.metrics import BridgeMetrics
from bridge.ratelimit import MAX_RETRY_AFTER_S, Pacer, pacing
from bridge.rejections import Rejections
from bridge.sender import Sender
from bridge.settings import DeliverySettings
from bridge.settlement import Settlement
from bridge.spool.facade import AsyncSpool

log = logging.getLogger(__name__)


class DrainRate:
    """Points delivered per second, smoothed over about a minute, for the drain estimate.
    Pure: time is an argument."""

    def __init__(self, now: float) -> None:
        self.rate = 0.0
        self._stamp = now

    def delivered(self, points: int, now: float) -> None:
        """``points`` were delivered at ``now``."""
        elapsed = max(1e-3, now - self._stamp)
        self._stamp = now
        weight = min(1.0, elapsed / 60.0)
        self.rate += weight * (points / elapsed - self.rate)

    def eta(self, waiting: int, now: float) -> float:
        """Seconds to deliver ``waiting`` points; the rate fades while nothing is delivered, so
        a stalled delivery shows a growing estimate."""
        if waiting == 0:
            return 0.0
        rate = self.rate * math.exp(-(now - self._stamp) / 60.0)
        return waiting / rate if rate > 1e-9 else math.inf


class Delivery:
    """Sends what the spool holds; see the module docstring."""

    def __init__(
        self,
        spool: AsyncSpool,
        sender: Sender,
        metrics: BridgeMetrics,
        settings: DeliverySettings,
        *,
        on_space_freed: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._spool = spool
        self._sender = sender
        self._m = metrics
        self._s = settings
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng
        self._pacer = Pacer(
            pacing(settings.requests_per_minute, settings.replicas, adaptive=settings.adaptive),
            now=clock(),
        )
        self._m.pacing_rate.set_function(lambda: self._pacer.rate_at(clock()))
        self._drain = DrainRate(clock())
        self._m.drain_eta.set_function(lambda: self._drain.eta(spool.file.depth_points, clock()))
        self._slots = asyncio.Semaphore(settings.concurrency)
        # Full batches taken from the spool ahead of a free slot: one spool round trip fills
        # every slot, instead of one round trip (queued behind commits) per request.
        self._prepared: list[Batch] = []
        self._wake = asyncio.Event()
        self._unsent = spool.file.depth_points
        self._unsent_since: float | None = clock() - settings.linger_s if self._unsent else None
        self._in_flight = 0
        self._flushing = False
        self._throttle = LogThrottle(30.0, clock)
        self._say = DeliveryReporter(spool.file, self._throttle, clock=clock, wall_clock=wall_clock)
        self._settlement = Settlement(spool, self._throttle, on_freed=on_space_freed)
        self._rejections = Rejections(
            spool,
            self._send,
            self._deliver,
            self._refused,
            metrics=metrics,
            throttle=self._throttle,
        )
        self.paused_reason: str | None = None

    # -- signals from the intake ----------------------------------------------------------

    def notify(self, points: int) -> None:
        """New points were committed to the spool."""
        if points <= 0:
            return
        if self._unsent_since is None:
            self._unsent_since = self._clock()
        self._unsent += points
        self._wake.set()

    def forget(self, points: int) -> None:
        """Waiting points were deleted unsent (the spool's drop-oldest policy)."""
        self._unsent = max(0, self._unsent - points)
        if self._unsent == 0:
            self._unsent_since = None

    def flush(self) -> None:
        """Send what is waiting without lingering (shutdown)."""
        self._flushing = True
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing in flight."""
        return (
            self._unsent == 0
            and self._in_flight == 0
            and not self._prepared
            and self._settlement.idle
        )

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._settlement.delete_loop(), name="bridge.delivery.delete")
            while True:
                await self._slots.acquire()
                batch = await self._next_batch()
                self._in_flight += 1
                tg.create_task(self._deliver_slot(batch), name="bridge.delivery.batch")

    async def _refused(self, write: Callable[[], Awaitable[None]], delivered: int | None) -> None:
        """Record a refusal in the spool, then count the points of it that were delivered
        after all (None: none were)."""
        await self._settlement.settle(write, retry=True)
        if delivered is not None:
            self._m.points_delivered.inc(delivered)
            self._drain.delivered(delivered, self._clock())

    async def _next_batch(self) -> Batch:
        if self._prepared:
            return self._prepared.pop(0)
        s = self._s
        while True:
            now = self._clock()
            since = self._unsent_since
            ready = self._unsent >= s.max_points or (
                self._unsent > 0
                and (self._flushing or (since is not None and now - since >= s.linger_s))
            )
            if ready:
                batches = await self._spool.take_batches(
                    s.concurrency,
                    s.max_points,
                    single_object=s.single_object,
                    newest_first=s.order == "live-first",
                )
                if batches:
                    self._unsent = max(0, self._unsent - sum(b.points for b in batches))
                    if self._unsent == 0:
                        self._unsent_since = None
                    self._prepared.extend(batches[1:])
                    return batches[0]
                self._unsent, self._unsent_since = 0, None  # counted points were duplicates
                continue
            timeout = None
            if self._unsent > 0 and since is not None:
                timeout = max(0.0, s.linger_s - (now - since))
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _deliver_slot(self, batch: Batch) -> None:
        try:
            await self._deliver(batch)
        finally:
            self._in_flight -= 1
            self._slots.release()

    async def _deliver(self, batch: Batch) -> None:
        written, refusal = await self._send(batch)
        if refusal is None:
            failpoints.hit("after_2xx_before_delete")
            await self._accepted(batch, written)
        else:
            await self._rejections.refused(batch, refusal)

    async def _send(self, batch: Batch) -> tuple[int | None, PermanentDelivery | None]:
        """POST ``batch`` until the API accepts it (its ``points_written``) or refuses it for
        good (the refusal); retryable failures are retried here without a limit."""
        objects = batch.body_objects()
        backoff = Backoff(self._s.retry_min_s, self._s.retry_max_s, rng=self._rng)
        while True:
            await self._pace()
            started = self._clock()
            try:
                written = await self._sender.post(objects, batch.idempotency_key)
            except UnsendableRequest as exc:
                self._m.token_unusable.labels("send").inc()  # not a request: nothing was sent
                await self._after_retryable(exc, backoff)
                continue
            except RetryableDelivery as exc:
                self._m.request_duration.observe(self._clock() - started)
                self._count_request(exc.status)
                await self._after_retryable(exc, backoff)
                continue
            except PermanentDelivery as exc:
                self._m.request_duration.observe(self._clock() - started)
                self._count_request(exc.status)
                return None, exc
            took = self._clock() - started
            self._m.request_duration.observe(took)
            self._count_request(201)
            self._say.accepted(batch, took, written)
            return written, None

    async def _pace(self) -> None:
        while True:
            now = self._clock()
            wait = self._pacer.delay(now)
            if wait <= 0 and self._pacer.take(now):
                return
            if wait > 0:
                rate = self._pacer.rate_at(now)
                self._say.debug(
                    "pace",
                    "pacing: a request waits %.3f s for the token bucket (%.2f requests/s)",
                    wait,
                    rate,
                    wait_s=round(wait, 3),
                    rate=round(rate, 3),
                )
            await asyncio.sleep(max(wait, 0.001))

    def _count_request(self, status: int | None) -> None:
        label = "error" if status is None else f"{status // 100}xx"
        self._m.requests.labels(label).inc()

    async def _after_retryable(self, exc: RetryableDelivery, backoff: Backoff) -> None:
        delay = backoff.next_delay()
        if exc.status == 429:
            self._m.rate_limited.inc()
            # Never send earlier than the server asked; all slots share the pause.
            wait = exc.retry_after if exc.retry_after is not None else delay
            if wait > MAX_RETRY_AFTER_S:
                self._throttle.log(
                    log,
                    logging.ERROR,
                    "retry-after-cap",
                    "API asked to wait %.0f s; capping the pause at %.0f s",
                    wait,
                    MAX_RETRY_AFTER_S,
                )
            added = self._pacer.rate_limited(self._clock(), exc.retry_after, fallback=delay)
            self._m.rate_limited_pause.inc(added)
            self._say.rate_limited(min(wait, MAX_RETRY_AFTER_S), self._pacer.rate)
            return
        if (
            isinstance(exc, UnsendableRequest)
            or exc.status in (401, 403, 404)
            or (exc.status is not None and 300 <= exc.status < 400)
        ):
            self.paused_reason = str(exc)
            self._m.delivery_paused.set(1)
            self._say.failed(exc, delay, paused=True)
        else:
            self._say.failed(exc, delay, paused=False)
        await asyncio.sleep(delay)

    async def _accepted(self, batch: Batch, written: int | None) -> None:
        if self.paused_reason is not None:
            self.paused_reason = None
            self._m.delivery_paused.set(0)
        # The spool's cursor is already past these records, so they are not sent again while
        # the delete is pending; a crash before it re-sends them (identical points) on restart.
        self._settlement.accepted(batch.records)
        self._m.points_delivered.inc(batch.points)
        self._drain.delivered(batch.points, self._clock())
        self._pacer.accepted(self._clock())
        self._m.batch_points.observe(batch.points)
        if written is not None and written != batch.points:
            self._m.points_written_mismatch.inc()
            self._throttle.log(
                log,
                logging.WARNING,
                "mismatch",
                "API reported points_written=%d for a batch of %d points",
                written,
                batch.points,
            )
        now_us = int(self._wall() * 1_000_000)
        self._m.delivery_lag.observe_many(
            max(0.0, (now_us - r.received_us) / 1e6) for r in batch.records
        )
