"""The dead letters' own budget, on real spool files in tmp_path with a fake wall clock: they
never count toward ``spool.max_bytes``, the oldest beyond a limit (age, number, bytes) are
pruned and counted, a full disk prunes them before a commit is refused, and the housekeeping
loop prunes by age with no new dead letter arriving."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest

from bridge.dead_letter_log import DeadLetterReporter
from bridge.errors import SpoolFull
from bridge.housekeeping import housekeeping_loop
from bridge.metrics import BridgeMetrics
from bridge.models import DeadLetter
from bridge.settings import DeadLetterSettings, SpoolSettings
from bridge.spool.deadletters import DeadLetterFilter
from bridge.spool.dlbudget import Held, Pruned
from bridge.spool.facade import AsyncSpool
from bridge.spool.store import Spool
from bridge.spool.writes import IntakeWriter
from tests.support.clock import FakeClock
from tests.support.spool import NOW_S, T0_US, rec
from tests.support.waiting import running, until

MIB = 1 << 20
HOUR_US = 3600 * 1_000_000


def bad(i: int, size: int = 1500, reason: str = "invalid_json", at_us: int = T0_US) -> DeadLetter:
    """Dead letter ``i`` of one broken device: ``size`` bytes of payload, received at ``at_us``."""
    payload = (b"{broken %d " % i).ljust(size, b"x")
    return DeadLetter(
        reason, "invalid_json: unexpected end", "plant/x/bad/env", payload, "env", at_us
    )


def open_spool(path: Path, clock: FakeClock | None = None, **budget: float) -> Spool:
    """A spool capped at 1 MiB of waiting data, with the dead-letter budget ``budget``."""
    s = Spool(
        SpoolSettings(path, max_bytes=MIB, reserve_bytes=0),
        clock=clock or FakeClock(NOW_S),
        dead_letters=DeadLetterSettings(**budget),  # type: ignore[arg-type]
    )
    s.open()
    return s


@pytest.fixture
def small(path: Path) -> Iterator[Spool]:
    """A spool capped at 1 MiB of waiting data, with the default dead-letter budget."""
    s = open_spool(path)
    yield s
    s.close()


def test_dead_letters_never_fill_the_cap_on_waiting_points(small: Spool) -> None:
    """3 MB of dead letters from one device in a spool capped at 1 MiB: the cap is not
    reached, and a reading still commits (the file holds the dead letters beside the cap)."""
    for block in range(20):
        small.writer.commit([], [bad(block * 100 + i) for i in range(100)])
    assert small.file.used_bytes > 3 * MIB
    assert not small.file.full
    assert small.writer.commit([rec(1)], []).records_inserted == 1
    assert small.dead_letters.count() == 2000


def test_the_estimate_of_their_pages_is_never_below_the_measure(small: Spool) -> None:
    """Between measures the dead letters' bytes are estimated on the high side, so their pages
    are never mistaken for waiting data, whatever their size."""
    sizes = [0, 10, 300, 1500, 1990, 2100, 3900, 4100, 9000, 70_000]
    topic = "plant/ü/" + "t" * 300
    for round_ in range(60):
        n = 1 + round_ % 7  # of each size
        dead = [
            DeadLetter(
                "not_numeric" if i % 2 else "bad_timestamp",
                "d" * (round_ * 7),
                topic,
                b"p" * size,
                "r",
                T0_US,
            )
            for size in sizes[round_ % 3 :]
            for i in range(n)
        ]
        small.writer.commit([], dead)
        estimate = small.file.dead_letters.bytes
        assert not small.file.dead_letters.exact
        exact = Held()
        exact.measure(small.file.conn)
        assert estimate >= exact.bytes, round_
        small.dead_letters.refresh()
        assert small.file.dead_letters.bytes == exact.bytes


def test_the_oldest_beyond_max_count_are_pruned_and_counted(path: Path) -> None:
    """Past max_count, the oldest go (down to 90 %) and each is counted by its reason."""
    s = open_spool(path, max_count=100)
    try:
        pruned = Pruned()
        for block in range(5):
            reason = "invalid_json" if block < 2 else "unmatched"
            pruned += s.commit([], [bad(block * 50 + i, 100, reason) for i in range(50)]).pruned
        kept = [r.id for r in s.dead_letters.find(DeadLetterFilter())]
        assert len(kept) <= 100
        assert kept == list(range(251 - len(kept), 251)), "the newest are kept"
        assert pruned.total == 250 - len(kept)
        assert set(pruned.by_why()) == {"max_count"}
        assert pruned.by_reason()["invalid_json"] == 100
        assert s.dead_letters.take_pruned() == Pruned()
    finally:
        s.close()


def test_the_oldest_beyond_max_bytes_are_pruned_and_counted(path: Path) -> None:
    """Past max_bytes, the oldest go until the dead letters hold at most the budget."""
    s = open_spool(path, max_bytes=MIB)
    try:
        pruned = Pruned()
        for block in range(30):
            pruned += s.commit([], [bad(block * 100 + i) for i in range(100)]).pruned  # 4.5 MB
            assert s.file.dead_letters.bytes <= MIB + 200_000  # one commit over, at most
        s.dead_letters.keep_within_budget()
        assert s.file.dead_letters.bytes <= MIB
        kept = [r.id for r in s.dead_letters.find(DeadLetterFilter())]
        assert kept == list(range(3001 - len(kept), 3001)), "the newest are kept"
        pruned += s.dead_letters.take_pruned()
        assert pruned.counts == (("max_bytes", "invalid_json", 3000 - len(kept)),)
    finally:
        s.close()


def test_a_full_disk_prunes_the_oldest_dead_letters_and_the_commit_goes_through(
    small: Spool,
) -> None:
    """A commit refused for want of disk prunes dead letters (counted as disk_full) and is
    tried again; a commit refused at spool.max_bytes prunes nothing."""
    small.commit([], [bad(i) for i in range(1500)])  # 2.25 MB
    real = IntakeWriter.commit
    calls = {"n": 0}

    def disk_full_once(self: IntakeWriter, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise SpoolFull("disk full while writing the spool: database or disk is full")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    with mock.patch.object(IntakeWriter, "commit", disk_full_once):
        result = small.commit([rec(1)], [])
    assert result.records_inserted == 1
    left = small.dead_letters.count()
    assert 0 < left <= 1500 - 1500 // 8  # an eighth at least (this disk has room), not all
    # Counted with the commit, so the metric has them at once; nothing is left to take.
    assert result.pruned.counts == (("disk_full", "invalid_json", 1500 - left),)
    assert small.dead_letters.take_pruned() == Pruned()

    small.file.settings = replace(small.file.settings, max_bytes=small.file.data_bytes)
    with pytest.raises(SpoolFull, match="cap"):
        small.commit([rec(2)], [])
    assert small.dead_letters.count() == left
    assert small.dead_letters.find(DeadLetterFilter(), 1)[0].id == 1501 - left


async def test_housekeeping_prunes_by_age_with_no_new_dead_letter(path: Path) -> None:
    """Dead letters older than max_age_s go as the clock passes their age, counted as
    max_age, with nothing else happening in the spool."""
    clock = FakeClock(NOW_S)
    raw = open_spool(path, clock, max_age_s=7200)
    raw.close()
    metrics = BridgeMetrics()
    reporter = DeadLetterReporter(metrics, DeadLetterSettings(max_age_s=7200))

    def pruned() -> float:
        value = metrics.registry.get_sample_value(
            "metriqo_bridge_dead_letters_pruned_total", {"reason": "max_age"}
        )
        return value or 0.0

    async with AsyncSpool(raw) as spool:
        # Received 1, 2 and 3 hours before NOW_S (= T0 + 100 s).
        raw.writer.commit([], [bad(i, at_us=T0_US + 100_000_000 - i * HOUR_US) for i in (1, 2, 3)])
        loop = housekeeping_loop(
            spool, lambda _n: None, reporter, grace_s=0, coalescing=False, interval=0.01
        )
        async with running(loop):
            await until(lambda: pruned() == 1, "the three-hour-old dead letter pruned")
            assert raw.file.dead_letters.count == 2
            clock.advance(1800)
            await until(lambda: pruned() == 2, "the two-hour-old one pruned half an hour later")
        assert [r.at_us for r in raw.dead_letters.find(DeadLetterFilter())] == [
            T0_US + 100_000_000 - HOUR_US
        ]
