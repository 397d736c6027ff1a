"""The delivery loop: spool → batches → API, retried until accepted.

Oldest first by default: a cursor over the spool marks what has been handed to a request. With
``live-first`` the newest waiting records go first, so current values reach the API while a
backlog drains with the capacity left over. A batch keeps its membership (and Idempotency-Key)
for every retry; records leave the spool only in the transaction that counts their acceptance,
or that moves them to the dead letters.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from bridge import failpoints
from bridge.backoff import Backoff
from bridge.batcher import Batch, take_batch
from bridge.errors import PermanentDelivery, RetryableDelivery
from bridge.logs import LogThrottle
from bridge.metrics import BridgeMetrics
from bridge.ratelimit import TokenBucket, pacing
from bridge.sender import Sender
from bridge.spool.store import AsyncSpool, SpooledRecord, SpoolFull

log = logging.getLogger(__name__)
_MAX_RETRY_AFTER_S = 3600.0  # a Retry-After of days is a server bug; data must not wait forever


class Delivery:
    """Sends what the spool holds; see the module docstring."""

    def __init__(
        self,
        spool: AsyncSpool,
        sender: Sender,
        metrics: BridgeMetrics,
        *,
        max_points: int = 100,
        linger_s: float = 1.0,
        concurrency: int = 4,
        requests_per_minute: float = 1000.0,
        replicas: int = 1,
        adaptive: bool = False,
        retry_min_s: float = 0.5,
        retry_max_s: float = 60.0,
        single_object: bool = False,
        order: Literal["oldest-first", "live-first"] = "oldest-first",
        on_space_freed: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._spool = spool
        self._sender = sender
        self._m = metrics
        self._max_points = max_points
        self._linger = linger_s
        self._single = single_object
        self._live_first = order == "live-first"
        self._on_freed = on_space_freed or (lambda: None)
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng
        self._retry = (retry_min_s, retry_max_s)
        pace = pacing(requests_per_minute, replicas, adaptive=adaptive)
        self._bucket = TokenBucket(pace.start, burst=pace.burst, now=clock())
        self._rate_ceiling = pace.ceiling
        self._rate_floor = min(pace.start, 1.0 / 60.0)  # at least one request a minute
        self._m.pacing_rate.set(pace.start)
        # Points delivered per second, smoothed over about a minute, for the drain estimate.
        self._delivery_rate = 0.0
        self._rate_stamp = clock()
        self._m.drain_eta.set_function(self._drain_eta)
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        # Full batches taken from the spool ahead of a free slot: one spool round trip fills
        # every slot, instead of one round trip (queued behind commits) per request.
        self._prepared: deque[Batch] = deque()
        self._wake = asyncio.Event()
        self._cursor = 0
        self._unsent = spool.spool.depth_points
        self._unsent_since: float | None = clock() - linger_s if self._unsent else None
        self._in_flight = 0
        self._done: list[int] = []  # seqs accepted by the API, waiting for the spool delete
        self._done_ready = asyncio.Event()
        self._deleting = False
        self._not_before = 0.0
        self._flushing = False
        self._throttle = LogThrottle(30.0, clock)
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
            and not self._done
            and not self._deleting
        )

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._delete_loop(), name="bridge.delivery.delete")
            while True:
                await self._slots.acquire()
                batch = await self._next_batch()
                self._in_flight += 1
                tg.create_task(self._deliver_slot(batch), name="bridge.delivery.batch")

    async def _delete_loop(self) -> None:
        """Delete accepted records in shared transactions: one fsync for every request that
        completed meanwhile, instead of one per request."""
        while True:
            while not self._done:
                self._done_ready.clear()
                await self._done_ready.wait()
            seqs, self._done = self._done, []
            self._deleting = True
            try:
                # On a full disk a smaller transaction may still fit: split down to one record.
                size = len(seqs)
                while seqs:
                    if not await self._settle(self._spool.spool.delivered, seqs[:size]):
                        size = max(1, size // 4)
                        continue
                    seqs = seqs[size:]
                    self._on_freed()
            finally:
                self._deleting = False

    async def _settle(self, write: Callable[..., None], *args: object, retry: bool = False) -> bool:
        """Run a spool write that frees space (a delete, a move to the dead letters); False if
        the disk is full even after the spool gave its reserve back, unless ``retry``: then it
        tries every second until it succeeds. The records stay handed out meanwhile: neither
        re-sent nor lost."""
        while True:
            try:
                await self._spool.run(write, *args)
            except SpoolFull as exc:
                self._throttle.log(
                    log,
                    logging.ERROR,
                    "settle-full",
                    "disk full: cannot record delivered points in the spool (%s); retrying "
                    "every second — free disk space",
                    exc,
                )
                await asyncio.sleep(1.0)
                if retry:
                    continue
                return False
            return True

    async def _next_batch(self) -> Batch:
        if self._prepared:
            return self._prepared.popleft()
        while True:
            now = self._clock()
            ready = self._unsent >= self._max_points or (
                self._unsent > 0
                and (
                    self._flushing
                    or (self._unsent_since is not None and now - self._unsent_since >= self._linger)
                )
            )
            if ready:
                batches = await self._spool.run(self._take, self._concurrency)
                if batches:
                    self._unsent = max(0, self._unsent - sum(b.points for b in batches))
                    if self._unsent == 0:
                        self._unsent_since = None
                    self._prepared.extend(batches[1:])
                    return batches[0]
                self._unsent, self._unsent_since = 0, None  # counted points were duplicates
                continue
            timeout = None
            if self._unsent > 0 and self._unsent_since is not None:
                timeout = max(0.0, self._linger - (now - self._unsent_since))
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _take(self, count: int) -> list[Batch]:
        """Choose the next batch (and up to ``count - 1`` more, if they are full) and mark
        them handed out: on the spool thread, so drop-oldest cannot delete a record between
        the two."""
        sp = self._spool.spool
        if self._live_first:
            rows = sp.fetch_newest(self._max_points)
            if not rows:
                return []
            batch = take_batch(rows, self._max_points, single_object=self._single)
            batch = Batch(batch.records[::-1], batch.points)  # the body stays in time order
            sp.hand_out(batch.seqs)
            return [batch]
        rows = sp.fetch(self._cursor, self._max_points * count)
        batches: list[Batch] = []
        start = 0
        while start < len(rows) and len(batches) < count:
            batch = take_batch(rows[start:], self._max_points, single_object=self._single)
            if batches and batch.points < self._max_points:
                break  # a partial batch waits for its linger, as a first one would
            batches.append(batch)
            start += len(batch.records)
        if batches:
            self._cursor = batches[-1].records[-1].seq
            sp.hand_out([seq for b in batches for seq in b.seqs])
        return batches

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
            await self._after_permanent(batch, refusal)

    async def _send(self, batch: Batch) -> tuple[int | None, PermanentDelivery | None]:
        """POST ``batch`` until the API accepts it (its ``points_written``) or refuses it for
        good (the refusal); retryable failures are retried here without a limit."""
        objects = batch.body_objects()
        backoff = Backoff(*self._retry, rng=self._rng)
        while True:
            await self._pace()
            started = self._clock()
            try:
                written = await self._sender.post(objects, batch.idempotency_key)
            except RetryableDelivery as exc:
                self._m.request_duration.observe(self._clock() - started)
                self._count_request(exc.status)
                await self._after_retryable(exc, backoff)
                continue
            except PermanentDelivery as exc:
                self._m.request_duration.observe(self._clock() - started)
                self._count_request(exc.status)
                return None, exc
            self._m.request_duration.observe(self._clock() - started)
            self._count_request(201)
            return written, None

    def _note_delivered(self, points: int) -> None:
        now = self._clock()
        elapsed = max(1e-3, now - self._rate_stamp)
        self._rate_stamp = now
        weight = min(1.0, elapsed / 60.0)
        self._delivery_rate += weight * (points / elapsed - self._delivery_rate)

    def _drain_eta(self) -> float:
        waiting = self._spool.spool.depth_points
        if waiting == 0:
            return 0.0
        # The rate fades while nothing is delivered, so a stalled delivery shows a growing ETA.
        rate = self._delivery_rate * math.exp(-(self._clock() - self._rate_stamp) / 60.0)
        return waiting / rate if rate > 1e-9 else math.inf

    async def _pace(self) -> None:
        while True:
            now = self._clock()
            wait = max(self._not_before - now, self._bucket.delay(now))
            if wait <= 0 and self._bucket.take(now):
                return
            await asyncio.sleep(max(wait, 0.001))

    def _count_request(self, status: int | None) -> None:
        label = "error" if status is None else f"{status // 100}xx"
        self._m.requests.labels(label).inc()

    async def _after_retryable(self, exc: RetryableDelivery, backoff: Backoff) -> None:
        delay = backoff.next_delay()
        if exc.status == 429:
            # Never send earlier than the server asked; all slots share the pause.
            wait = exc.retry_after if exc.retry_after is not None else delay
            if wait > _MAX_RETRY_AFTER_S:
                self._throttle.log(
                    log,
                    logging.ERROR,
                    "retry-after-cap",
                    "API asked to wait %.0f s; capping the pause at %.0f s",
                    wait,
                    _MAX_RETRY_AFTER_S,
                )
                wait = _MAX_RETRY_AFTER_S
            now = self._clock()
            added = max(0.0, now + wait - max(self._not_before, now))
            self._not_before = max(self._not_before, now + wait)
            self._m.rate_limited_pause.inc(added)
            # Multiplicative decrease: the bridge (or its replicas together) asked too much.
            self._bucket.rate = max(self._rate_floor, self._bucket.rate / 2)
            self._m.pacing_rate.set(self._bucket.rate)
            self._throttle.log(
                log,
                logging.WARNING,
                "429",
                "API rate limit hit; pausing %.1f s, pacing now %.2f requests/s",
                wait,
                self._bucket.rate,
            )
            return
        if exc.status in (401, 403, 404) or (exc.status is not None and 300 <= exc.status < 400):
            self.paused_reason = str(exc)
            self._m.delivery_paused.set(1)
            self._throttle.log(log, logging.ERROR, f"pause{exc.status}", "%s", exc)
        else:
            self._throttle.log(
                log, logging.WARNING, "retry", "delivery failed, will retry: %s", exc
            )
        await asyncio.sleep(delay)

    async def _after_permanent(self, batch: Batch, exc: PermanentDelivery) -> None:
        if len(batch.records) > 1 and exc.status in (400, 413, 422):
            # Isolate the offending points: halves are delivered (or split) independently.
            half = len(batch.records) // 2
            for part in (batch.records[:half], batch.records[half:]):
                await self._deliver(Batch(part, sum(r.points for r in part)))
            return
        if batch.points > 1 and exc.status in (400, 413, 422):
            await self._isolate_metrics(batch.records[0], exc)
            return
        detail = f"HTTP {exc.status}: {exc.body}"
        await self._settle(self._spool.spool.reject, batch.seqs, "api_rejected", detail, retry=True)
        self._on_freed()
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
        )

    async def _isolate_metrics(self, record: SpooledRecord, exc: PermanentDelivery) -> None:
        """The API refused one record of several metrics: bisect its metrics so the good ones
        are delivered and only the refused ones are dead-lettered, then settle the record in
        one spool transaction. A crash midway re-sends the record whole (identical points)."""
        refused: dict[str, float] = {}
        answers: list[str] = []

        async def probe(names: list[str], refusal: PermanentDelivery | None) -> None:
            if refusal is None:
                part = replace(record, metrics={k: record.metrics[k] for k in names})
                _written, refusal = await self._send(Batch((part,), len(names)))
                if refusal is None:
                    return
            if len(names) == 1 or refusal.status not in (400, 413, 422):
                refused.update({k: record.metrics[k] for k in names})
                answers.append(f"HTTP {refusal.status}: {refusal.body}")
                return
            half = len(names) // 2
            await probe(names[:half], None)
            await probe(names[half:], None)

        await probe(sorted(record.metrics), exc)
        detail = "; ".join(dict.fromkeys(answers))
        await self._settle(
            self._spool.spool.settle_partly, record.seq, refused, "api_rejected", detail, retry=True
        )
        self._on_freed()
        delivered = record.points - len(refused)
        self._m.points_delivered.inc(delivered)
        self._note_delivered(delivered)
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
        )

    async def _accepted(self, batch: Batch, written: int | None) -> None:
        if self.paused_reason is not None:
            log.info("API accepts requests again; delivery resumed")
            self.paused_reason = None
            self._m.delivery_paused.set(0)
        # The cursor is already past these records, so they are not sent again while the
        # delete is pending; a crash before it re-sends them (identical points) on restart.
        self._done.extend(batch.seqs)
        self._done_ready.set()
        self._m.points_delivered.inc(batch.points)
        self._note_delivered(batch.points)
        if self._bucket.rate < self._rate_ceiling:
            # Additive increase: about 50 accepted requests back to the configured rate.
            self._bucket.rate = min(self._rate_ceiling, self._bucket.rate + self._rate_ceiling / 50)
            self._m.pacing_rate.set(self._bucket.rate)
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
        for r in batch.records:
            self._m.delivery_lag.observe(max(0.0, (now_us - r.received_us) / 1e6))
