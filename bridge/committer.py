"""The group commit: what the intake received is committed to the spool, and only then
acknowledged to the broker, in receive order.

This is where "ack after commit" is decided. One durable transaction covers every message
waiting (up to ``spool.commit_max_messages``). When it begins is adaptive
(:mod:`bridge.commit_pacing`): a quiet flow is committed at once, a live one in groups of about
48 messages or ``spool.commit_spacing`` times what its commits take, whichever is longer, at
most ``spool.commit_interval_s`` after the previous commit began; a backlog (half the receive
window) at once. A full spool or disk withholds the PUBACKs (back-pressure: the broker keeps
the messages) until there is room again: delivery frees it when waiting points reach
``spool.max_bytes`` (dead letters are not counted there), the operator when the disk is full
(the spool prunes its dead letters first). Any other spool failure stops the bridge without
acknowledging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from bridge import failpoints
from bridge.commit_pacing import CommitPacing
from bridge.dead_letter_log import DeadLetterReporter
from bridge.delivery import Delivery
from bridge.errors import SpoolError, SpoolFull
from bridge.intake import Intake, Pending
from bridge.logs import LogThrottle
from bridge.metrics import BridgeMetrics
from bridge.models import CommitResult
from bridge.mqtt.source import MqttSource
from bridge.settings import CommitSettings
from bridge.spool.facade import AsyncSpool

log = logging.getLogger(__name__)


class Committer:
    """Runs the commit-then-acknowledge loop between the intake and the spool."""

    def __init__(
        self,
        intake: Intake,
        spool: AsyncSpool,
        source: MqttSource,
        delivery: Delivery,
        *,
        metrics: BridgeMetrics,
        settings: CommitSettings,
        dead_letters: DeadLetterReporter,
    ) -> None:
        self._intake = intake
        self._spool = spool
        self._source = source
        self._delivery = delivery
        self._m = metrics
        self._s = settings
        self._dead_letters = dead_letters
        self._space = asyncio.Event()  # set by delivery whenever it frees spool space
        self._full_since: float | None = None  # while intake waits for spool (or disk) space
        self._disk_full = False  # what the last refused commit ran into
        self._throttle = LogThrottle(30.0)
        self._debug = LogThrottle(1.0)  # DEBUG: one commit line a second, with the count
        self.pacing = CommitPacing(settings.spacing, settings.interval_s, settings.backlog)

    @property
    def waiting_for_space(self) -> bool:
        """True while the spool (or disk) is full and acknowledgements are withheld."""
        return self._full_since is not None

    @property
    def full_problem(self) -> str:
        """The readiness problem while acknowledgements are withheld: what fills the spool,
        and what will free space."""
        file = self._spool.file
        if self._disk_full:
            left = file.dead_letters.count
            return f"spool full: the disk is full ({left} dead letter(s) left); free disk space"
        return full_problem(file.data_bytes, file.settings.max_bytes)

    def space_freed(self) -> None:
        """Delivery deleted records: a waiting commit may try again now."""
        self._space.set()

    async def run(self) -> None:
        """Commit and acknowledge until cancelled; raise on a spool write failure."""
        loop = asyncio.get_running_loop()
        intake = self._intake
        pacing = self.pacing
        while True:
            await intake.wait()
            wait = pacing.delay(loop.time(), len(intake))
            if wait > 0 and intake.accepting:
                await asyncio.sleep(wait)  # let more messages join this commit
            began = loop.time()
            batch = intake.take(self._group_limit(len(intake)))
            pacing.began(began, len(batch))
            result = await self._commit(batch)
            if result is not None:
                # Only a commit that went through says what commits take: one that waited for
                # spool space would stretch the gaps long after.
                ended = loop.time()
                pacing.ended(ended)
                self._m.commit_messages.observe(len(batch))
                self._m.commit_duration.observe(ended - began)
                self._acknowledge(batch)
                self._count(batch, result)
                if log.isEnabledFor(logging.DEBUG):
                    self._debug_commit(len(batch), result, loop.time() - began)

    def _group_limit(self, waiting: int) -> int:
        """How many waiting messages the next commit takes: at most half the receive window.

        A commit of the whole window leaves the broker nothing to send until its PUBACKs go
        out, so receiving and committing take turns (the slow mode of a backlog drain: one
        read of the socket can map the whole window before the commit loop runs, and from
        then on every commit takes all of it). With half the window committed, the broker
        refills the other half meanwhile. More than a window waits only with QoS 0 messages
        (the window does not bound them): those are still committed in large groups.
        """
        limit = self._s.max_messages
        if waiting <= 2 * self._s.backlog:
            limit = min(limit, self._s.backlog)
        return limit

    async def _commit(self, batch: list[Pending]) -> CommitResult | None:
        """Commit one batch; None (and the batch back in the intake) if the spool is full."""
        intake = self._intake
        records = [r for p in batch for r in p.records]
        dead = [p.dead for p in batch if p.dead is not None]
        sparkplug = [p.sparkplug for p in batch if p.sparkplug is not None]  # in receive order
        dead += [d for work in sparkplug for d in work.dead]
        stamped = [(p.mid, p.topic, p.digest, p.received_us) for p in batch if p.stamped]
        forget, acked = intake.take_acked()
        try:
            result = await self._spool.commit(
                records,
                dead,
                stamped,
                acked,
                forget_unacked=forget,
                sparkplug=[work.changes for work in sparkplug if work.changes],
            )
        except SpoolFull as exc:
            intake.untake_acked(forget, acked)
            intake.put_back(batch)
            await self._wait_for_space(exc)
            return None
        except SpoolError:
            intake.untake_acked(forget, acked)
            log.critical("spool write failed; stopping without acknowledging the messages")
            raise
        if self._full_since is not None:
            self._m.intake_paused_seconds.inc(time.monotonic() - self._full_since)
            self._m.spool_full.set(0)
            # Throttled like the "full" line: a disk that is just full can let every other
            # commit through, and each would log this.
            self._throttle.log(
                log, logging.INFO, "space", "spool has space again; acknowledging MQTT messages"
            )
            self._full_since = None
        intake.persisted([(mid, received_us) for mid, _t, _d, received_us in stamped])
        failpoints.hit("after_commit_before_puback")
        return result

    async def _wait_for_space(self, exc: SpoolFull) -> None:
        if self._full_since is None:
            self._full_since = time.monotonic()
            self._m.spool_full.set(1)
        file = self._spool.file
        self._disk_full = not file.full
        if self._disk_full:
            self._throttle.log(
                log,
                logging.ERROR,
                "full",
                "disk full under the spool (%s), with %d dead letter(s) left after pruning the "
                "oldest: withholding MQTT acknowledgements; the broker keeps the messages "
                "until disk space is freed",
                exc,
                file.dead_letters.count,
            )
        else:
            self._throttle.log(
                log,
                logging.ERROR,
                "full",
                "spool full: %d bytes of points wait for delivery, spool.max_bytes is %d "
                "(dead letters are not counted): withholding MQTT acknowledgements; the broker "
                "keeps the messages until delivery to the API frees space",
                file.data_bytes,
                file.settings.max_bytes,
            )
        self._space.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await self._space.wait()

    def _acknowledge(self, batch: list[Pending]) -> None:
        state = self._source.state
        for p in batch:
            # A message from an earlier connection cannot be acknowledged on this one; the
            # broker redelivers it and the intake recognises it (see Intake.receive). The
            # intake forgets a message only once the broker has read its PUBACK (acks_read).
            if p.qos and state.connected and p.generation == state.generation:
                self._source.ack(p.mid, p.qos, p.received_us)

    def _count(self, batch: list[Pending], result: CommitResult) -> None:
        m = self._m
        self._intake.flush_counters()
        m.messages_committed.inc(sum(not p.synthetic for p in batch))
        if result.points_duplicate:
            m.duplicates_suppressed.inc(result.points_duplicate)
        for p in batch:
            if p.dead is not None:
                self._dead_letters.written(p.dead)
            for dead in p.sparkplug.dead if p.sparkplug else ():
                self._dead_letters.written(dead)
        if result.pruned.total:
            self._dead_letters.pruned(result.pruned)
        if result.points_held:
            m.points_held.inc(result.points_held)
        for rule, n in result.held_back:
            m.points_held_back.labels(rule, "deadband").inc(n)
        if result.points_dropped:
            self._dropped(result.points_dropped, result.points_dropped_over_share)
        self._delivery.notify(result.points_inserted)

    def _debug_commit(self, messages: int, result: CommitResult, took: float) -> None:
        self._debug.log(
            log,
            logging.DEBUG,
            "commit",
            "committed and acknowledged %d message(s) in %.1f ms: %d new point(s), %d "
            "duplicate, %d dead letter(s), %d held",
            messages,
            took * 1000,
            result.points_inserted,
            result.points_duplicate,
            result.dead_letters,
            result.points_held,
            extra={
                "messages": messages,
                "points": result.points_inserted,
                "duplicates": result.points_duplicate,
                "dead_letters": result.dead_letters,
                "latency_ms": round(took * 1000, 1),
            },
        )

    def _dropped(self, points: int, over_share: int) -> None:
        self._delivery.forget(points)
        if points > over_share:
            self._m.points_dropped.labels("spool_full").inc(points - over_share)
        if over_share:
            self._m.points_dropped.labels("over_share").inc(over_share)
        self._throttle.log(
            log,
            logging.ERROR,
            "dropped",
            "spool full: deleted the %d oldest waiting point(s) unsent to make room, %d of "
            "them of a device over its fair share (spool.when_full=drop-oldest; %d dropped "
            "since the spool was created; GET /debug/top-devices names the devices)",
            points,
            over_share,
            self._spool.file.dropped_points_total,
        )


def full_problem(data_bytes: int, max_bytes: int) -> str:
    """The readiness problem when points waiting for delivery reach ``spool.max_bytes``."""
    return (
        f"spool full: {data_bytes} bytes of points wait for delivery (spool.max_bytes "
        f"{max_bytes}); delivery to the API frees space"
    )
