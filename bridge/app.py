"""The bridge: source → intake → spool → delivery, supervised by one TaskGroup.

Lifecycle: start spool (locked), sender, status server, MQTT source and the loops. On stop:
stop accepting messages → commit and acknowledge what was received → disconnect from the broker
keeping the session → deliver what waits, up to the stop timeout → close in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from bridge import failpoints
from bridge.delivery import Delivery
from bridge.errors import ConfigError, SpoolError
from bridge.intake import Intake, Pending
from bridge.logs import LogThrottle
from bridge.mapping.loader import load_mappings, make_mapper
from bridge.mapping.mapper import Rule
from bridge.metrics import BridgeMetrics
from bridge.mqtt.source import MqttSource
from bridge.sender import Sender
from bridge.settings import Settings, file_key
from bridge.spool.store import AsyncSpool, CommitResult, Spool, SpoolFull
from bridge.status import StatusServer

log = logging.getLogger(__name__)
_SESSION_KEY = "mqtt_session"
_FILTERS_KEY = "mqtt_filters"  # JSON list of the broker filters the session holds


def _task_stack(task: asyncio.Task[object]) -> str:
    buf = io.StringIO()
    task.print_stack(file=buf)
    return buf.getvalue()


class Bridge:
    """One running bridge. ``await bridge.run()`` until :meth:`stop` is called."""

    def __init__(
        self,
        settings: Settings,
        rules: list[Rule],
        token: Callable[[], str],
        *,
        mqtt_password: str | None = None,
        metrics: BridgeMetrics | None = None,
        mappings_path: Path | None = None,
    ) -> None:
        failpoints.arm_from_env()  # inert unless METRIQO_BRIDGE_FAILPOINTS is set (tests only)
        self.settings = settings
        self.metrics = metrics or BridgeMetrics()
        self.mapper = make_mapper(rules, self.settings)
        self.metrics.config_last_reload_time.set(time.time())
        self._mappings_path = mappings_path
        self._reload_requested = asyncio.Event()
        self._full_since: float | None = None  # while intake waits for spool (or disk) space
        self.intake = Intake(self.mapper, self.metrics)
        self.spool = Spool(
            settings.spool.path,
            max_bytes=settings.spool.max_bytes,
            synchronous=settings.spool.synchronous,
            dedup_window_s=settings.spool.dedup_window_s,
            when_full=settings.spool.when_full,
            reserve_bytes=settings.spool.reserve_bytes,
        )
        self._token = token
        self._password = mqtt_password
        self._stop = asyncio.Event()
        self._space = asyncio.Event()
        self._throttle = LogThrottle(30.0)
        self.source: MqttSource | None = None
        self.delivery: Delivery | None = None
        self.status: StatusServer | None = None
        self._had_session = False
        self._session_tag = f"{settings.mqtt.client_id}@{settings.mqtt.host}:{settings.mqtt.port}"
        self._started = asyncio.Event()
        self._aspool: AsyncSpool | None = None

    def request_reload(self) -> None:
        """Re-read the mapping file soon (SIGHUP)."""
        self._reload_requested.set()

    async def reload(self) -> bool:
        """Load the mapping file again; on any error keep running the current rules.

        Returns whether the new file is now in use. Messages already received keep the
        mapping they were received under.
        """
        path = self._mappings_path
        if path is None:
            log.warning("reload requested, but this bridge was not started from a mapping file")
            return False
        try:
            rules = await asyncio.to_thread(load_mappings, path)
        except ConfigError as exc:
            self.metrics.config_reloads.labels("failure").inc()
            self.metrics.config_last_reload_ok.set(0)
            log.error("reload of %s failed; still running the previous mapping:\n%s", path, exc)
            return False
        mapper = make_mapper(rules, self.settings)
        self.mapper = self.intake.mapper = mapper
        added: list[str] = []
        removed: list[str] = []
        if self.source is not None:
            added, removed = self.source.update_subscriptions(mapper.subscriptions)
        self.metrics.config_reloads.labels("success").inc()
        self.metrics.config_last_reload_ok.set(1)
        self.metrics.config_last_reload_time.set(time.time())
        log.info(
            "reloaded %s: %d rule(s); subscribed %s, unsubscribed %s",
            path,
            len(rules),
            added or "nothing new",
            removed or "nothing",
        )
        return True

    async def _watch_mappings(self) -> None:
        """Reload on SIGHUP, and when the file changes (mtime, size or inode: a Kubernetes
        ConfigMap update swaps a symlink)."""
        path = self._mappings_path
        assert path is not None
        interval = self.settings.mapping.reload_interval_s
        last = file_key(path)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval or None):
                    await self._reload_requested.wait()
            requested = self._reload_requested.is_set()
            self._reload_requested.clear()
            key = file_key(path)
            if requested or key != last:
                last = key
                await self.reload()

    async def _spool_housekeeping(self, aspool: AsyncSpool, interval: float = 1.0) -> None:
        """Once a second: turn coalescing windows that have closed into records to send, and
        pick up records a ``dead-letters requeue`` wrote from another process."""
        assert self.delivery is not None
        grace_us = round(self.settings.mapping.coalesce_grace_s * 1_000_000)
        if not any(r.coalesce for r in self.mapper.rules):
            # Still flush once: windows left open by an earlier run or a removed rule.
            added = await aspool.run(self.spool.flush_coalesced, 2**62, 0)
            self.delivery.notify(added)
        while True:
            now_us = int(time.time() * 1_000_000)
            try:
                added = await aspool.run(self.spool.flush_coalesced, now_us, grace_us)
            except SpoolFull:
                added = 0  # the windows stay in the spool and close once there is room
            self.delivery.notify(added)
            requeued = await aspool.run(self.spool.external_changes)
            if requeued > 0:
                log.info("%d requeued point(s) found in the spool; delivering them", requeued)
                self.delivery.notify(requeued)
            await asyncio.sleep(interval)

    async def _report_unmatched(self, interval: float = 60.0) -> None:
        """Once a minute, if any message matched no rule, say how many and name a few topics."""
        sample = self.intake.unmatched
        while True:
            await asyncio.sleep(interval)
            if sample.since_report:
                topics = [str(e["topic"]) for e in sample.recent()[:5]]
                log.warning(
                    "%d message(s) in the last %.0f s matched no rule, e.g. on %s "
                    "(all recent ones: GET /debug/unmatched)",
                    sample.since_report,
                    interval,
                    ", ".join(repr(t) for t in topics),
                )
                sample.since_report = 0

    def stop(self) -> None:
        """Ask the bridge to shut down gracefully; a second call while stopping forces exit.

        The forced path logs every pending task's stack first: a shutdown that needs a second
        signal is a bug, and that log is what finds it.
        """
        if not self._stop.is_set():
            self._stop.set()
            return
        log.error("second stop request: exiting now; pending tasks follow")
        for task in asyncio.all_tasks():
            log.error("pending task %s:\n%s", task.get_name(), _task_stack(task))
        os._exit(1)  # the spool is consistent at every commit; nothing unacknowledged is lost

    async def started(self) -> None:
        """Wait until every component is up (for tests and the demo)."""
        await self._started.wait()

    async def run(self) -> None:
        """Run until :meth:`stop`; raise on a fatal error (spool write failure, bug)."""
        s = self.settings
        async with (
            AsyncSpool(self.spool) as aspool,
            Sender(
                s.api.base_url,
                self._token,
                body=s.api.body,
                connect_timeout_s=s.api.connect_timeout_s,
                read_timeout_s=s.api.read_timeout_s,
                total_timeout_s=s.api.total_timeout_s,
                ca_file=s.api.ca_file,
            ) as sender,
        ):
            self._aspool = aspool
            self._bind_spool_metrics()
            self._had_session = await aspool.run(self.spool.meta_get, _SESSION_KEY) == (
                self._session_tag
            )
            # Receive times a crashed run committed before its PUBACKs: a redelivery reuses
            # them (dropped again if the broker turns out to have no session).
            self.intake.restore_unacked(await aspool.run(self.spool.load_unacked))
            if self.spool.depth_points:
                log.info(
                    "spool holds %d point(s) from before; delivering them first",
                    self.spool.depth_points,
                )
            self.delivery = Delivery(
                aspool,
                sender,
                self.metrics,
                max_points=s.batch.max_points,
                linger_s=s.batch.linger_s,
                concurrency=s.api.concurrency,
                requests_per_minute=s.api.requests_per_minute,
                replicas=s.api.replicas,
                adaptive=s.api.budget_split == "adaptive",
                retry_min_s=s.api.retry_min_s,
                retry_max_s=s.api.retry_max_s,
                single_object=s.api.body == "object",
                order=s.batch.backlog_order,
                on_space_freed=self._space.set,
            )
            filters = await aspool.run(self.spool.meta_get, _FILTERS_KEY)
            self.source = MqttSource(
                s.mqtt,
                self.mapper.subscriptions,
                self.intake.receive,
                password=self._password,
                on_connected=self._on_connected,
                on_disconnected=lambda: self.metrics.mqtt_connected.set(0),
                session_filters=orjson.loads(filters) if filters and self._had_session else [],
                on_filters=self._remember_filters,
            )
            async with contextlib.AsyncExitStack() as stack:
                if s.http.enabled:
                    self.status = await stack.enter_async_context(
                        StatusServer(
                            self.metrics.registry,
                            self.problems,
                            s.http.host,
                            s.http.port,
                            unmatched=self.intake.unmatched.recent,
                        )
                    )
                await self._supervise(aspool)

    async def _supervise(self, aspool: AsyncSpool) -> None:
        assert self.source is not None and self.delivery is not None
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            source = tg.create_task(self.source.run(), name="bridge.source")
            commit = tg.create_task(self._commit_loop(aspool), name="bridge.intake.commit")
            deliver = tg.create_task(self.delivery.run(), name="bridge.delivery")
            # Helpers with nothing to finish: cancelled as soon as a stop is asked for. Keeping
            # them in one list means a new one cannot be forgotten and hold the TaskGroup open.
            helpers = [
                tg.create_task(self._spool_housekeeping(aspool), name="bridge.spool.housekeeping"),
                tg.create_task(self._report_unmatched(), name="bridge.intake.unmatched_report"),
            ]
            if self._mappings_path is not None:
                helpers.append(
                    tg.create_task(self._watch_mappings(), name="bridge.mapping.mapper.watch")
                )
            self._started.set()
            await self._stop.wait()
            for task in helpers:
                task.cancel()
            await self._shutdown(source, commit, deliver)

    async def _shutdown(
        self, source: asyncio.Task[None], commit: asyncio.Task[None], deliver: asyncio.Task[None]
    ) -> None:
        assert self.source is not None and self.delivery is not None
        deadline = time.monotonic() + self.settings.stop_timeout_s
        log.info("stopping: committing received messages, then delivering what waits")
        self.intake.accepting = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                while len(self.intake):  # noqa: ASYNC110  # bounded poll during shutdown only
                    await asyncio.sleep(0.01)
        await self.source.stop()
        source.cancel()
        self.delivery.flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                while not self.delivery.idle:  # noqa: ASYNC110  # bounded poll during shutdown
                    await asyncio.sleep(0.02)
        timed_out = not self.delivery.idle
        commit.cancel()
        deliver.cancel()
        if timed_out:
            await asyncio.wait([deliver])  # let in-flight deletes settle before counting
            log.warning(
                "stop timeout reached; %d point(s) stay in the spool for the next start",
                self.spool.depth_points,
            )

    # -- commit loop --------------------------------------------------------------------

    async def _commit_loop(self, aspool: AsyncSpool) -> None:
        assert self.source is not None and self.delivery is not None
        limit = self.settings.spool.commit_max_messages
        interval = self.settings.spool.commit_interval_s
        backlog = max(1, self.settings.mqtt.receive_maximum // 2)
        loop = asyncio.get_running_loop()
        began = -math.inf
        while True:
            await self.intake.wait()
            wait = began + interval - loop.time()
            if wait > 0 and len(self.intake) < backlog and self.intake.accepting:
                await asyncio.sleep(wait)  # let a few more messages join this commit
            began = loop.time()
            batch = self.intake.take(limit)
            records = [r for p in batch for r in p.records]
            dead = [p.dead for p in batch if p.dead is not None]
            stamped = [(p.mid, p.topic, p.digest, p.received_us) for p in batch if p.stamped]
            forget, acked = self.intake.take_acked()
            try:
                result = await aspool.run(
                    self.spool.commit, records, dead, stamped, acked, forget_unacked=forget
                )
            except SpoolFull as exc:
                self.intake.untake_acked(forget, acked)
                self.intake.put_back(batch)
                if self._full_since is None:
                    self._full_since = time.monotonic()
                    self.metrics.spool_full.set(1)
                self._throttle.log(
                    log,
                    logging.ERROR,
                    "full",
                    "spool full (%s): withholding MQTT acknowledgements; the broker keeps "
                    "the messages until delivery frees space",
                    exc,
                )
                self._space.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._space.wait()
                continue
            except SpoolError:
                self.intake.untake_acked(forget, acked)
                log.critical("spool write failed; stopping without acknowledging the messages")
                raise
            if self._full_since is not None:
                self.metrics.intake_paused_seconds.inc(time.monotonic() - self._full_since)
                self.metrics.spool_full.set(0)
                log.info("spool has space again; acknowledging MQTT messages")
                self._full_since = None
            self.intake.persisted([mid for mid, *_ in stamped])
            failpoints.hit("after_commit_before_puback")
            self._acknowledge(batch)
            self._count(batch, result)
            if result.points_dropped:
                self._dropped(result.points_dropped)
            self.delivery.notify(result.points_inserted)

    def _dropped(self, points: int) -> None:
        assert self.delivery is not None
        self.delivery.forget(points)
        self.metrics.points_dropped.labels("spool_full").inc(points)
        self._throttle.log(
            log,
            logging.ERROR,
            "dropped",
            "spool full: deleted the %d oldest waiting point(s) unsent to make room "
            "(spool.when_full=drop-oldest; %d dropped since the spool was created)",
            points,
            self.spool.dropped_points_total,
        )

    def _acknowledge(self, batch: list[Pending]) -> None:
        assert self.source is not None
        state = self.source.state
        for p in batch:
            # A message from an earlier connection cannot be acknowledged on this one; the
            # broker redelivers it and the intake recognises it (see Intake.receive).
            if p.qos and state.connected and p.generation == state.generation:
                self.source.ack(p.mid, p.qos)
                self.intake.acknowledged(p.mid)

    def _count(self, batch: list[Pending], result: CommitResult) -> None:
        m = self.metrics
        self.intake.flush_counters()
        m.messages_committed.inc(len(batch))
        if result.points_duplicate:
            m.duplicates_suppressed.inc(result.points_duplicate)
        for p in batch:
            if p.dead is not None:
                m.dead_letters.labels(p.dead.reason).inc()
                self._throttle.log(
                    log,
                    logging.WARNING,
                    f"dead:{p.dead.reason}",
                    "message on %r dead-lettered (%r): %r",  # %r: payload text is escaped
                    p.topic[:200],
                    p.dead.detail[:200],
                    p.payload[:120],
                )

    # -- state ----------------------------------------------------------------------------

    def _on_connected(self, session_present: bool) -> None:
        m = self.metrics
        m.mqtt_connected.set(1)
        m.mqtt_connects.inc()
        assert self.source is not None
        if not session_present:
            self.intake.session_lost()
        if not session_present and self._had_session:
            m.mqtt_session_lost.inc()
            log.warning(
                "broker had no session for client id %r: messages queued while the bridge was "
                "away may have been dropped by the broker (session expired or broker state lost)",
                self.settings.mqtt.client_id,
            )
        if not self._had_session:
            self._had_session = True
            self._tg.create_task(self._remember_session(), name="bridge.session.remember")

    def _remember_filters(self, filters: list[str]) -> None:
        """Keep the filters the broker session holds, so a restart with a different
        configuration can unsubscribe the ones it dropped (see MqttSource)."""
        if self._aspool is not None and self._tg is not None:
            value = orjson.dumps(filters).decode()
            self._tg.create_task(
                self._aspool.run(self.spool.meta_set, _FILTERS_KEY, value),
                name="bridge.session.filters",
            )

    async def _remember_session(self) -> None:
        assert self._aspool is not None
        await self._aspool.run(self.spool.meta_set, _SESSION_KEY, self._session_tag)

    def problems(self) -> list[str]:
        """Reasons the bridge is not ready (empty list = ready)."""
        out: list[str] = []
        if self.source is None or not self.source.state.connected:
            detail = self.source.state.last_error if self.source else "not started"
            out.append(f"mqtt not connected: {detail}" if detail else "mqtt not connected")
        elif not self.source.state.subscribed:
            out.append("mqtt subscriptions not yet acknowledged")
        if self.spool.full or self._full_since is not None:
            out.append("spool full")
        if self.delivery is not None and self.delivery.paused_reason:
            out.append(f"delivery paused: {self.delivery.paused_reason}")
        return out

    def _bind_spool_metrics(self) -> None:
        sp = self.spool
        m = self.metrics
        m.spool_points.set_function(lambda: sp.depth_points)
        m.spool_bytes.set_function(lambda: sp.used_bytes)
        m.spool_moved_aside.set(0 if sp.moved_aside is None else 1)

        def oldest_age() -> float:
            oldest = sp.oldest_received_us
            return 0.0 if oldest is None else max(0.0, time.time() - oldest / 1e6)

        m.bind_spool_age(oldest_age)
