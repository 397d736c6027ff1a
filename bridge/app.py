"""The bridge: source → intake → committer → spool → delivery, supervised by one TaskGroup.

Lifecycle: open the spool (locked), the sender, the status server and the MQTT source, then run
the loops. On stop: stop accepting messages → commit and acknowledge what was received →
disconnect from the broker keeping the session → deliver what waits, up to the stop timeout →
close in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bridge import __version__, failpoints, readiness, state
from bridge.background_audit import audit_client, audit_loop
from bridge.committer import Committer
from bridge.dead_letter_log import DeadLetterReporter
from bridge.delivery import Delivery
from bridge.errors import EX_FAILURE
from bridge.housekeeping import housekeeping_loop
from bridge.intake import Intake
from bridge.mapping.loader import make_mapper
from bridge.mapping.mapper import OUTSIDE_FILTERS, Mapper, Rule
from bridge.metrics import BridgeMetrics
from bridge.mqtt.host import SparkplugHost
from bridge.mqtt.source import MqttSource
from bridge.progress import progress_loop, read, totals
from bridge.reload import MappingReloader
from bridge.sender import Sender
from bridge.session import SessionMemory
from bridge.settings import Settings
from bridge.sparkplug_flow import parking_limits
from bridge.spool.facade import AsyncSpool
from bridge.spool.file import SpoolFile
from bridge.spool.store import Spool
from bridge.status import StatusServer
from bridge.talkers import Talkers

log = logging.getLogger(__name__)


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
        runtime_file: Path | None = None,
    ) -> None:
        """``runtime_file``: where to say, while running, where this bridge listens and which
        spool it uses (:mod:`bridge.state`); None writes none (tests, the demo)."""
        failpoints.arm_from_env()  # inert unless METRIQO_BRIDGE_FAILPOINTS is set (tests only)
        self.settings = settings
        self.metrics = metrics or BridgeMetrics()
        self.mapper = make_mapper(rules, settings.mapping)
        self.metrics.config_last_reload_time.set(time.time())
        self.intake = Intake(self.mapper, self.metrics, parking=parking_limits(settings.mapping))
        self.spool = Spool(settings.spool, dead_letters=settings.dead_letters)
        self.dead_letters = DeadLetterReporter(self.metrics, settings.dead_letters)
        self._token = token
        self._password = mqtt_password
        self._reloader = (
            None
            if mappings_path is None
            else MappingReloader(mappings_path, settings.mapping, self.metrics, self._swap_mapper)
        )
        self._runtime_file = runtime_file
        self._stop = asyncio.Event()
        self._began = time.monotonic()
        self._started = asyncio.Event()
        self.source: MqttSource | None = None
        self.delivery: Delivery | None = None
        self.committer: Committer | None = None
        self.status: StatusServer | None = None
        self.talkers: Talkers | None = None

    # -- control --------------------------------------------------------------------------

    def request_reload(self) -> None:
        """Re-read the mapping file soon (SIGHUP)."""
        if self._reloader is None:
            log.warning("reload requested, but this bridge was not started from a mapping file")
            return
        self._reloader.request()

    async def reload(self) -> bool:
        """Load the mapping file again now; False (the old rules still in use) on an error."""
        if self._reloader is None:
            log.warning("reload requested, but this bridge was not started from a mapping file")
            return False
        return await self._reloader.reload()

    def _swap_mapper(self, mapper: Mapper) -> tuple[list[str], list[str]]:
        self.mapper = self.intake.mapper = mapper
        _log_cover(mapper)
        _warn_state_kept_apart(self.settings, mapper)
        if self.source is None:
            return [], []
        return self.source.update_subscriptions(mapper.subscriptions)

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
        os._exit(
            EX_FAILURE
        )  # the spool is consistent at every commit; nothing unacknowledged is lost

    async def started(self) -> None:
        """Wait until every component is up (for tests and the demo)."""
        await self._started.wait()

    def problems(self) -> list[str]:
        """Reasons the bridge is not ready (empty list = ready)."""
        return readiness.problems(self.source, self.spool.file, self.committer, self.delivery)

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop`; raise on a fatal error (spool write failure, bug)."""
        s = self.settings
        self._began = time.monotonic()
        async with (
            AsyncSpool(self.spool) as spool,
            Sender(s.sender, self._token) as sender,
        ):
            self._bind_spool_metrics(spool.file)
            session = SessionMemory(spool, self.intake, self.metrics, s.mqtt)
            session_filters = await session.load()
            # Receive times a crashed run committed before its PUBACKs: a redelivery reuses
            # them (dropped again if the broker turns out to have no session).
            self.intake.restore_unacked(await spool.load_unacked())
            # Sparkplug aliases committed with their BIRTHs: DATA sent by alias after a restart
            # still resolves (bridge/spool/sparkplug.py).
            self.intake.sparkplug.aliases.load(await spool.load_aliases())
            self.intake.sparkplug.parking.load(await spool.load_parked())
            self.metrics.sparkplug_parked_messages.set(self.intake.sparkplug.parking.count)
            if spool.file.depth_points:
                log.info(
                    "spool holds %d point(s) from before; delivering them first",
                    spool.file.depth_points,
                )
            self.delivery = Delivery(
                spool, sender, self.metrics, s.delivery, on_space_freed=self._space_freed
            )
            _log_cover(self.mapper)
            _warn_state_kept_apart(s, self.mapper)
            host = _sparkplug_host(s, self.intake, self.metrics)
            self.source = MqttSource(
                s.mqtt,
                self.mapper.subscriptions,
                self.intake.receive,
                password=self._password,
                on_connected=session.connected,
                on_disconnected=session.disconnected,
                session_filters=session_filters,
                on_filters=session.filters,
                on_acks_read=self.intake.acks_read,
                host=host,
            )
            talkers = self.talkers = Talkers(spool, self.metrics)
            self.committer = Committer(
                self.intake,
                spool,
                self.source,
                self.delivery,
                metrics=self.metrics,
                settings=s.commit,
                dead_letters=self.dead_letters,
            )
            async with contextlib.AsyncExitStack() as stack:
                if s.http.enabled:
                    self.status = await stack.enter_async_context(
                        StatusServer(
                            self.metrics.registry,
                            self.problems,
                            s.http,
                            unmatched=self.intake.unmatched.recent,
                            top_devices=talkers.top,
                        )
                    )
                if self._runtime_file is not None:
                    # Removed on the way out, also after an error: a file left behind by a
                    # kill is recognised as stale by its pid.
                    stack.callback(state.remove_runtime, self._runtime_file, os.getpid())
                    await asyncio.to_thread(self._write_runtime, self._runtime_file)
                await self._supervise(spool, session)

    def _write_runtime(self, path: Path) -> None:
        s = self.settings
        info = state.RuntimeInfo(
            pid=os.getpid(),
            client_id=s.mqtt.client_id,
            spool_path=str(s.spool.path),
            mapping_file=str(s.mapping.file.absolute()),
            http_enabled=self.status is not None,
            http_host=s.http.host,
            http_port=self.status.port if self.status is not None else s.http.port,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            version=__version__,
        )
        try:
            state.write_runtime(path, info)
        except OSError as exc:
            log.warning(
                "cannot write the runtime file %s (%s): health, backup and dead-letters will "
                "find this bridge only through the same settings",
                path,
                exc.strerror or exc,
            )

    def _bind_spool_metrics(self, sp: SpoolFile) -> None:
        m = self.metrics
        m.spool_points.set_function(lambda: sp.depth_points + sp.held_points)
        m.spool_points_held.set_function(lambda: sp.held_points)
        m.spool_bytes.set_function(lambda: sp.used_bytes)
        m.dead_letters_stored.set_function(lambda: sp.dead_letters.count)
        m.dead_letters_bytes.set_function(lambda: sp.dead_letters.bytes)
        m.spool_moved_aside.set(0 if sp.moved_aside is None else 1)

        def oldest_age() -> float:
            oldest = sp.oldest_received_us
            return 0.0 if oldest is None else max(0.0, time.time() - oldest / 1e6)

        m.bind_spool_age(oldest_age)

    def _space_freed(self) -> None:
        if self.committer is not None:
            self.committer.space_freed()

    async def _supervise(self, spool: AsyncSpool, session: SessionMemory) -> None:
        assert self.source is not None and self.delivery is not None
        assert self.committer is not None
        delivery = self.delivery
        async with asyncio.TaskGroup() as tg:
            session.attach(tg)
            source = tg.create_task(self.source.run(), name="bridge.source")
            commit = tg.create_task(self.committer.run(), name="bridge.intake.commit")
            deliver = tg.create_task(delivery.run(), name="bridge.delivery")
            # Helpers with nothing to finish: cancelled as soon as a stop is asked for. Keeping
            # them in one list means a new one cannot be forgotten and hold the TaskGroup open.
            housekeeping = housekeeping_loop(
                spool,
                delivery.notify,
                self.dead_letters,
                grace_s=self.settings.mapping.coalesce_grace_s,
                coalescing=any(r.coalesce for r in self.mapper.rules),
            )
            helpers = [
                tg.create_task(housekeeping, name="bridge.spool.housekeeping"),
                tg.create_task(
                    self.intake.unmatched.report_loop(), name="bridge.intake.unmatched_report"
                ),
                tg.create_task(self.intake.expiry_loop(), name="bridge.intake.sparkplug_expiry"),
            ]
            if self.talkers is not None:
                helpers.append(
                    tg.create_task(self.talkers.watch_loop(), name="bridge.spool.talkers")
                )
            if self._reloader is not None:
                helpers.append(
                    tg.create_task(self._reloader.watch_loop(), name="bridge.mapping.watch")
                )
            if self.settings.delivery.audit_queries_per_minute > 0:
                audit = audit_loop(
                    spool,
                    audit_client(self.settings, self._token),
                    self.metrics,
                    self.settings.spool.audit_retention_s,
                )
                helpers.append(tg.create_task(audit, name="bridge.verify.background"))
            if self.settings.log_progress_s > 0:
                progress = progress_loop(self.metrics.registry, self.settings.log_progress_s)
                helpers.append(tg.create_task(progress, name="bridge.progress"))
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
                self.spool.file.depth_points,
            )
        line = totals(read(self.metrics.registry), time.monotonic() - self._began)
        log.info(line.msg, *line.args, extra=line.fields)


def _log_cover(mapper: Mapper) -> None:
    """Say which rule filters are not subscribed as written, and why: a broker would send a
    message matching two subscriptions twice."""
    c = mapper.cover
    if c.left_out:
        log.info(
            "%d rule filter(s) not subscribed on their own, because another covers them "
            "(a broker sends one copy per matching subscription): %s",
            len(c.left_out),
            ", ".join(f"{f} (in {by})" for f, by in c.left_out[:10])
            + (" …" if len(c.left_out) > 10 else ""),
        )
    for sub, rule_filters in c.joined:
        log.info(
            "subscribed to %s in place of the overlapping rule filters %s; messages it lets in "
            "that no rule's filter matches are acknowledged and counted as ignored "
            '(metriqo_bridge_messages_ignored_total{rule="%s"})',
            sub,
            ", ".join(rule_filters),
            OUTSIDE_FILTERS,
        )


def _warn_state_kept_apart(s: Settings, mapper: Mapper) -> None:
    """Name the rules whose per-device state each member of a share group keeps apart: a
    coalesced window sent once per member over part of its readings, deadbands compared with
    what each member sent, Sparkplug DATA parked where its BIRTH did not arrive
    (docs/operations/scaling-out.md). ``api.replicas`` says the group has several members."""
    if not s.mqtt.share_group or s.delivery.replicas <= 1:
        return
    kept = [
        f"{rule.name} ({what})"
        for rule in mapper.rules
        for what, state in (
            ("coalesce", rule.coalesce),
            ("deadband", rule.deadband),
            ("sparkplug", rule.sparkplug),
        )
        if state is not None
    ]
    if kept:
        log.warning(
            "share group %r of %d bridges: each bridge keeps its own coalescing windows, "
            "deadbands and Sparkplug aliases and sees only its share of a device's messages, "
            "so these rules act on part of each device's readings: %s; run them on a bridge "
            "outside the group (docs/operations/scaling-out.md)",
            s.mqtt.share_group,
            s.delivery.replicas,
            ", ".join(kept[:10]) + (f" and {len(kept) - 10} more" if len(kept) > 10 else ""),
        )


def _sparkplug_host(s: Settings, intake: Intake, m: BridgeMetrics) -> SparkplugHost | None:
    """The Sparkplug host mode when ``sparkplug.host_id`` is set: rebirth requests on unknown
    aliases and seq gaps, counted. None (consumer mode): nothing is published."""
    if not s.sparkplug.host_mode:
        return None
    host = SparkplugHost(s.sparkplug)

    def asker(reason: str) -> Callable[[str, str], None]:
        def ask(group: str, node: str) -> None:
            outcome = host.request_rebirth(group, node, reason)
            if outcome == "sent":
                m.sparkplug_rebirth_requests.labels(reason).inc()
            else:
                m.sparkplug_rebirth_held.labels(outcome).inc()

        return ask

    intake.sparkplug.on_unknown_alias = asker("unknown_alias")
    intake.sparkplug.on_seq_gap = asker("seq_gap")
    return host
