"""The group commit with a real intake and a real spool (tmp_path), and small fakes for the MQTT
source (records acks, with a connection state) and delivery (records notify): acknowledgements
follow the commit, in receive order, only on the connection that received the message, and
never after a spool failure."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import cast

import pytest

from bridge.committer import Committer
from bridge.dead_letter_log import DeadLetterReporter
from bridge.delivery import Delivery
from bridge.errors import SpoolError
from bridge.intake import Intake
from bridge.mapping.loader import load_mappings_text, make_mapper
from bridge.metrics import BridgeMetrics
from bridge.models import CommitResult, DeadLetter, Record
from bridge.mqtt.source import MqttSource
from bridge.mqtt.state import SourceState
from bridge.settings import CommitSettings, DeadLetterSettings, MappingSettings, SpoolSettings
from bridge.sparkplug.parking import SparkplugChanges
from bridge.spool.dlbudget import PRUNE_REASONS
from bridge.spool.facade import AsyncSpool
from bridge.spool.store import Spool
from bridge.spool.writes import Stamped
from tests.support.waiting import running, until
from tests.unit.clock import FakeClock

DEADLINE_S = 10.0
COMMITTED = "metriqo_bridge_messages_committed_total"  # counted after the acks of a commit
MAPPINGS = """
version: 1
rules:
  - name: plain
    topic: "tele/{device}/{metric}"
    device_id: "{device}"
    payload: number
    metric: "{metric}"
"""


class FakeSource:
    """Records each ack as (mid, records in the spool at that moment)."""

    def __init__(self, spool: AsyncSpool) -> None:
        self.state = SourceState(connected=True, subscribed=True, generation=1)
        self.acks: list[tuple[int, int]] = []
        self._spool = spool

    def ack(self, mid: int, qos: int, key: int = 0) -> None:
        assert qos == 1
        assert key > 0  # the receive time, handed back once the broker read the PUBACK
        self.acks.append((mid, self._spool.file.depth_records))


class FakeDelivery:
    def __init__(self) -> None:
        self.notified: list[int] = []

    def notify(self, points: int) -> None:
        self.notified.append(points)

    def forget(self, points: int) -> None:
        raise AssertionError("no drop-oldest in these tests")


class GatedSpool(AsyncSpool):
    """The real spool; each commit first waits for ``gate`` (open unless cleared)."""

    def __init__(self, spool: Spool) -> None:
        super().__init__(spool)
        self.gate = asyncio.Event()
        self.gate.set()
        self.commits = 0

    async def commit(
        self,
        records: Sequence[Record],
        dead: Sequence[DeadLetter],
        stamped: Sequence[Stamped],
        acked: Sequence[tuple[int, int]],
        *,
        forget_unacked: bool,
        sparkplug: Sequence[SparkplugChanges] = (),
    ) -> CommitResult:
        self.commits += 1
        await self.gate.wait()
        return await super().commit(
            records, dead, stamped, acked, forget_unacked=forget_unacked, sparkplug=sparkplug
        )


class Rig:
    """A committer wired to a real intake and spool and to the fakes."""

    def __init__(self, raw: Spool, spool: GatedSpool, commit: CommitSettings | None = None) -> None:
        self.raw, self.spool = raw, spool
        self.metrics = BridgeMetrics()
        mapper = make_mapper(load_mappings_text(MAPPINGS, "t.yaml"), MappingSettings())
        self.intake = Intake(mapper, self.metrics, wall_clock=FakeClock(1_731_657_600.0))
        self.source = FakeSource(spool)
        self.delivery = FakeDelivery()
        self.committer = Committer(
            self.intake,
            spool,
            cast(MqttSource, self.source),
            cast(Delivery, self.delivery),
            metrics=self.metrics,
            settings=commit or CommitSettings(interval_s=0.0),
            dead_letters=DeadLetterReporter(self.metrics, DeadLetterSettings()),
        )

    def receive(self, mid: int, value: bytes = b"1", generation: int = 1) -> None:
        self.intake.receive(f"tele/d{mid}/t", value, mid, 1, False, generation)

    def sample(self, name: str) -> float:
        got = self.metrics.registry.get_sample_value(name)
        return 0.0 if got is None else got


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    dead_letters: DeadLetterSettings | None = None,
    commit: CommitSettings | None = None,
    **spool_settings: object,
) -> AsyncIterator[Rig]:
    settings = SpoolSettings(tmp_path / "spool.db", reserve_bytes=0, **spool_settings)  # type: ignore[arg-type]
    raw = Spool(settings, dead_letters=dead_letters)
    gated = GatedSpool(raw)
    async with gated:
        yield Rig(raw, gated, commit)


async def test_acks_follow_the_commit_in_receive_order(tmp_path: Path) -> None:
    """While the commit is held no PUBACK goes out; after it returns every message is acked
    in receive order with its records already in the spool, and delivery is told."""
    async with rig(tmp_path) as r, running(r.committer.run()):
        r.spool.gate.clear()
        for mid in (30, 4, 17):
            r.receive(mid)
        await until(lambda: r.spool.commits == 1, "a commit started")
        await asyncio.sleep(0.05)  # the committer would ack now if it did not wait
        assert r.source.acks == []
        r.spool.gate.set()
        await until(lambda: len(r.source.acks) == 3, "three acks")
        assert r.source.acks == [(30, 3), (4, 3), (17, 3)]
        assert r.delivery.notified == [3]
        assert r.sample(COMMITTED) == 3


async def test_a_commit_takes_at_most_half_the_receive_window(tmp_path: Path) -> None:
    """A full window waiting is committed in two halves (the broker refills one half while
    the other commits); more than a window waiting (QoS 0 is not bounded by it) goes in one."""
    commit = CommitSettings(interval_s=0.0, backlog=2)  # a receive window of 4
    async with rig(tmp_path, commit=commit) as r:
        for mid in (1, 2, 3, 4):
            r.receive(mid)
        async with running(r.committer.run()):
            await until(lambda: len(r.source.acks) == 4, "four acks")
        # Each ack carries the records in the spool when it went out: two commits of two.
        assert r.source.acks == [(1, 2), (2, 2), (3, 4), (4, 4)]
        for mid in (5, 6, 7, 8, 9):
            r.receive(mid)
        async with running(r.committer.run()):
            await until(lambda: len(r.source.acks) == 9, "nine acks")
        assert r.source.acks[4:] == [(mid, 9) for mid in (5, 6, 7, 8, 9)]


async def test_arrivals_during_a_commit_go_into_the_next_one_together(tmp_path: Path) -> None:
    """Group commit with the shipped pacing: while a commit runs, the messages that arrive
    wait and then go into one commit together, in receive order; what the commits took is
    what spaces them."""
    async with rig(tmp_path, commit=CommitSettings()) as r, running(r.committer.run()):
        assert r.committer.pacing.duration_s == 0.0
        r.spool.gate.clear()
        r.receive(1)
        await until(lambda: r.spool.commits == 1, "the first commit started")
        for mid in range(2, 8):
            r.receive(mid)
        r.spool.gate.set()
        await until(lambda: r.sample(COMMITTED) == 7, "all committed")
        assert r.spool.commits == 2
        assert r.delivery.notified == [1, 6]
        assert [mid for mid, _ in r.source.acks] == list(range(1, 8))
        assert r.committer.pacing.duration_s > 0.0


async def test_a_message_of_an_earlier_connection_is_not_acked(tmp_path: Path) -> None:
    """A message received on connection 1 is committed but not acked on connection 2 (the
    broker redelivers it); nothing is acked while disconnected."""
    async with rig(tmp_path) as r, running(r.committer.run()):
        r.spool.gate.clear()
        r.receive(1, generation=1)
        await until(lambda: r.spool.commits == 1, "a commit started")
        r.source.state.generation = 2  # reconnected while the commit ran
        r.receive(2, generation=2)
        r.spool.gate.set()
        await until(lambda: r.sample(COMMITTED) == 2, "both committed")
        assert [mid for mid, _ in r.source.acks] == [2]
        r.source.state.connected = False
        r.receive(3, generation=2)
        await until(lambda: r.sample(COMMITTED) == 3, "committed while disconnected")
        assert [mid for mid, _ in r.source.acks] == [2]


async def test_spool_full_withholds_acks_until_space_frees(tmp_path: Path) -> None:
    """At the cap nothing is committed or acked and spool_full is 1, retry after retry; once
    the spool has room again and delivery says so, the withheld batch is committed at once,
    acked in receive order, and spool_full is cleared."""
    async with rig(tmp_path, max_bytes=1) as r, running(r.committer.run()):
        for mid in (5, 6, 7):
            r.receive(mid)
        await until(lambda: r.sample("metriqo_bridge_spool_full") == 1, "spool_full set")
        assert r.committer.waiting_for_space
        await until(lambda: r.spool.commits >= 2, "a second try")
        assert r.source.acks == []
        assert r.raw.file.depth_records == 0
        assert r.delivery.notified == []
        file = r.raw.file
        file.settings = dataclasses.replace(file.settings, max_bytes=1 << 30)  # room again
        r.committer.space_freed()
        await until(lambda: len(r.source.acks) == 3, "acked after space freed")
        assert r.source.acks == [(5, 3), (6, 3), (7, 3)]
        assert r.sample("metriqo_bridge_spool_full") == 0
        assert not r.committer.waiting_for_space
        assert r.sample("metriqo_bridge_intake_paused_seconds_total") > 0
        assert r.delivery.notified == [3]


async def test_a_spool_full_again_and_again_logs_its_recovery_once_a_while(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spool that fills and frees at every other commit (a disk that is just full) logs
    "has space again" like "full": once, then at most once per 30 s, with the repeats
    counted; every message is still committed and acked."""
    caplog.set_level(logging.INFO, logger="bridge.committer")
    async with rig(tmp_path, max_bytes=1) as r, running(r.committer.run()):
        file = r.raw.file
        for mid in (5, 6, 7):
            file.settings = dataclasses.replace(file.settings, max_bytes=1)
            r.receive(mid)
            await until(lambda: r.sample("metriqo_bridge_spool_full") == 1, "spool_full set")
            file.settings = dataclasses.replace(file.settings, max_bytes=1 << 30)
            r.committer.space_freed()
            await until(lambda: r.sample("metriqo_bridge_spool_full") == 0, "space again")
        await until(lambda: len(r.source.acks) == 3, "all acked")
    lines = [m.getMessage() for m in caplog.records]
    assert sum("spool has space again" in m for m in lines) == 1
    assert sum(m.startswith("spool full") for m in lines) == 1


async def test_spool_error_propagates_and_nothing_is_acked(tmp_path: Path) -> None:
    """A spool write failure (here: the database closed under the committer) ends run() with
    SpoolError and no PUBACK; earlier acked ids are kept for the next commit."""
    async with rig(tmp_path) as r:
        r.intake.persisted([(1, 111)])
        r.intake.acks_read([(1, 111)])
        r.raw.close()
        r.receive(2)
        r.receive(3)
        with pytest.raises(SpoolError):
            async with asyncio.timeout(DEADLINE_S):
                await r.committer.run()
        assert r.source.acks == []
        assert r.delivery.notified == []
        assert r.intake.take_acked() == (False, [(1, 111)])


async def test_dead_letters_pruned_for_a_commit_are_counted_with_it(tmp_path: Path) -> None:
    """Prunes made by a commit reach the metric with that commit's acknowledgements, not at
    the next housekeeping round (none runs here): a dashboard, or a test, reading the metric
    once the messages are acknowledged sees them."""
    async with rig(tmp_path, DeadLetterSettings(max_count=10)) as r, running(r.committer.run()):
        for mid in range(1, 31):
            r.intake.receive(f"tele/d{mid}/t", b"not a number", mid, 1, False, 1)
        await until(lambda: len(r.source.acks) == 30, "all acknowledged")
        left = r.raw.dead_letters.count()
        counted = sum(
            r.metrics.registry.get_sample_value(
                "metriqo_bridge_dead_letters_pruned_total", {"reason": why}
            )
            or 0
            for why in PRUNE_REASONS
        )
        assert left <= 10
        assert counted == 30 - left
