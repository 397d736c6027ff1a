"""Stateful model test (hypothesis) of the durable spool, crashes included.

A ``RuleBasedStateMachine`` drives a real :class:`~bridge.spool.store.Spool` on a real file through
commits (fresh records, broker redeliveries with equal or other values, dead letters), fetches,
hand-outs, deliveries, API rejections, partial settlements, clock steps and three kinds of
restart, and after every step compares it with a plain-Python model of what it must hold:

* clean restart: ``close()`` and a new ``Spool`` on the same file;
* abandoned transaction: ``BEGIN IMMEDIATE`` plus writes on the spool's own connection, then the
  connection is closed without ``COMMIT`` (SQLite rolls it back);
* process crash: the spool is closed, a forked child opens the file, starts one real operation
  (commit, delivered, reject or settle_partly) and is SIGKILLed just before its N-th SQL
  statement (or right after the operation returned). ``cache_size=1`` in the child spills
  uncommitted pages into the WAL, so recovery has real uncommitted frames to discard.

The machines run derandomized and without an example database so CI sees the same examples on
every run; example and step counts keep the module to about 20 s.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import orjson
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bridge.errors import SpoolFull
from bridge.models import DeadLetter, Record
from bridge.settings import SpoolSettings, WhenFull
from bridge.spool.store import Spool
from tests.support.clock import FakeClock
from tests.support.spool import NOW_S, T0_US, integrity
from tests.support.spool_crash import run_and_crash

WINDOW_S = 300.0  # dedup memory of delivered ids: short, so clock steps cross it
GHOST_RID = b"\x00" * 16  # a row only an abandoned transaction ever writes

MODEL = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=50,
    stateful_step_count=30,
    suppress_health_check=[HealthCheck.too_slow],
)
SMALL_CAP = settings(MODEL, max_examples=25)  # a small cap makes each example slower

# -- strategies ------------------------------------------------------------------------------

DEVICES = ("d1", "d2", "säge/7")
NAMES = ("t", "rh", "p_bar", "v")
values = st.floats(allow_nan=False, allow_infinity=False)
records = st.builds(
    lambda device, k, metrics, late: Record(
        device, T0_US + k * 1_000_000, metrics, T0_US + k * 1000 + late
    ),
    st.sampled_from(DEVICES),
    st.integers(0, 5),
    st.dictionaries(st.sampled_from(NAMES), values, min_size=1, max_size=4),
    st.integers(0, 999),
)
# Records of 30..100 metrics fill pages fast, so a small cap is reached within a few steps.
wide_records = st.builds(
    lambda k, n, base: Record(
        "wide", T0_US + k * 1_000_000, {f"m{i:02d}": base + i for i in range(n)}, T0_US + k
    ),
    st.integers(0, 40),
    st.integers(30, 100),
    values,
)
dead_letters = st.builds(
    lambda reason, payload: DeadLetter(reason, "detail", "plant/a/b", payload, "rule-a", T0_US),
    st.sampled_from(["invalid_json", "too_large", "not_numeric"]),
    st.binary(max_size=64),
)


@functools.cache
def empty_spool_bytes() -> int:
    """``used_bytes`` of a new, empty spool (schema pages only) on this SQLite."""
    with tempfile.TemporaryDirectory() as tmp:
        s = Spool(SpoolSettings(Path(tmp) / "empty.db", reserve_bytes=0))
        s.open()
        try:
            return s.file.used_bytes
        finally:
            s.close()


# -- the operations a crash interrupts (tests.support.spool_crash runs them in a child) -------


def _commit(s: Spool, records: list[Record]) -> object:
    return s.writer.commit(records, [])


def _settle_partly(s: Spool, seq: int, refused: dict[str, float]) -> None:
    s.outbox.settle_partly(seq, refused, "r", "")


def _delivered(s: Spool, seqs: list[int]) -> None:
    s.outbox.delivered(seqs)


def _reject(s: Spool, seqs: list[int]) -> None:
    s.outbox.reject(seqs, "r", "")


# -- the model -------------------------------------------------------------------------------


@dataclass(slots=True)
class Waiting:
    """A record the model expects in the spool: the first copy committed, and its seq once
    the spool has shown it."""

    record: Record
    seq: int = 0

    @property
    def points(self) -> int:
        """Data points of the record."""
        return len(self.record.metrics)


class SpoolMachine(RuleBasedStateMachine):
    """A real spool against a model of waiting records, delivered ids, dead letters and drops."""

    when_full: ClassVar[WhenFull] = "back-pressure"
    cap_pages: ClassVar[int | None] = None  # None: the 1 GiB default, never full here

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="spool-model-"))
        self.path = self.tmp / "bridge.db"
        self.clock = FakeClock(NOW_S)
        cap = self.cap_pages
        self.max_bytes = 1 << 30 if cap is None else empty_spool_bytes() + cap * 4096
        self.spool = self._new_spool()
        self.spool.open()
        self.waiting: dict[bytes, Waiting] = {}  # by record id, in commit (= seq) order
        self.handed: set[bytes] = set()  # handed out to a request; forgotten by a restart
        self.remembered: dict[bytes, float] = {}  # delivered id → when (clock seconds)
        self.uncertain: set[bytes] = set()  # remembered ids a full spool may have forgotten
        self.history: list[Record] = []  # everything ever offered to commit, for redeliveries
        self.gone_seqs: list[int] = []  # seqs no longer waiting, for stale calls
        self.dead = 0
        self.inserted_points = 0
        self.delivered_points = 0
        self.refused_points = 0  # points moved to dead letters by reject / settle_partly
        self.dropped_points = 0
        self.delivered_seen = 0
        self.filled = 0  # records made by fill_to_the_cap

    def _new_spool(self) -> Spool:
        settings = SpoolSettings(
            self.path,
            max_bytes=self.max_bytes,
            dedup_window_s=WINDOW_S,
            when_full=self.when_full,
            reserve_bytes=0,
            fair_share=False,  # the model knows the policies of one spool for all devices
        )
        return Spool(settings, clock=self.clock)  # shared: wall time goes on across restarts

    def teardown(self) -> None:
        """Close the spool and remove its directory."""
        self.spool.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- model updates (shared by the in-process rules and the crash) ----------------------

    def _certain(self, rid: bytes) -> bool:
        """True if the spool must still remember delivered id ``rid``."""
        if rid in self.uncertain:
            return False
        return self.clock.now - self.remembered[rid] < WINDOW_S - 1.0

    def _present(self, rids: Sequence[bytes]) -> set[bytes]:
        if not rids:
            return set()
        marks = ",".join("?" * len(rids))
        rows = self.spool.file.conn.execute(
            f"SELECT rid FROM records WHERE rid IN ({marks}) "  # noqa: S608
            "AND seq NOT IN (SELECT seq FROM settled)",
            tuple(rids),
        ).fetchall()
        return {bytes(r[0]) for r in rows}

    def _apply_commit(self, batch: Sequence[Record], n_dead: int) -> list[Record]:
        """A committed batch in the model; returns the records it must have inserted.

        An id the spool may have forgotten (older than the dedup window, or remembered while
        the spool was full) may or may not be stored again: the file says which.
        """
        first_copies: dict[bytes, Record] = {}
        for r in batch:
            first_copies.setdefault(r.record_id, r)  # the spool keeps the first copy
        firsts = list(first_copies.values())
        maybe = [
            rid
            for r in firsts
            if (rid := r.record_id) in self.remembered
            and rid not in self.waiting
            and not self._certain(rid)
        ]
        present = self._present(maybe)
        if maybe:
            event("a forgotten delivered id offered again: stored" if present else "... kept out")
        inserted = [
            r
            for r in firsts
            if r.record_id not in self.waiting
            and (r.record_id not in self.remembered or r.record_id in present)
        ]
        for r in inserted:
            self.waiting[r.record_id] = Waiting(r)
            self.remembered.pop(r.record_id, None)
            self.uncertain.discard(r.record_id)
        self.inserted_points += sum(len(r.metrics) for r in inserted)
        self.dead += n_dead
        return inserted

    def _apply_drop(self, points: int) -> None:
        """Drop-oldest deleted ``points``: they must be the oldest records not handed out."""
        if not points:
            return
        left = points
        for rid in [rid for rid in self.waiting if rid not in self.handed]:
            if left <= 0:
                break
            left -= self.waiting[rid].points
            self.gone_seqs.append(self.waiting.pop(rid).seq)
        assert left == 0, f"{points} dropped points are not a prefix of the oldest records"
        self.dropped_points += points

    def _remove(self, rid: bytes) -> Waiting:
        w = self.waiting.pop(rid)
        self.handed.discard(rid)
        self.gone_seqs.append(w.seq)
        return w

    def _apply_delivered(self, rids: Sequence[bytes]) -> None:
        for rid in rids:
            self.delivered_points += self._remove(rid).points
            self.remembered[rid] = self.clock.now
            self.uncertain.discard(rid)

    def _apply_reject(self, rids: Sequence[bytes]) -> None:
        for rid in rids:
            self.refused_points += self._remove(rid).points
        self.dead += len(rids)

    def _apply_settle(self, rid: bytes, refused: dict[str, float]) -> None:
        w = self._remove(rid)
        self.delivered_points += w.points - len(refused)
        self.refused_points += len(refused)
        self.dead += 1 if refused else 0
        self.remembered[rid] = self.clock.now
        self.uncertain.discard(rid)

    def _reopen(self) -> None:
        self.spool = self._new_spool()
        self.spool.open()
        assert self.spool.file.moved_aside is None, "a crash must never look like corruption"
        assert integrity(self.spool) == ["ok"]
        self.handed.clear()  # hand-outs live in memory only: a restart sends them again

    # -- strategies drawn from the model ----------------------------------------------------

    def _batch(self, data: st.DataObject, fresh: list[Record]) -> list[Record]:
        """Fresh records mixed with redeliveries of earlier ones (same or other values)."""
        replays: list[Record] = []
        if self.history:
            for r in data.draw(st.lists(st.sampled_from(self.history), max_size=3)):
                if data.draw(st.booleans()):
                    bumped = {k: v / 2 + 1.0 for k, v in r.metrics.items()}
                    r = Record(r.device_id, r.ts_us, bumped, r.received_us + 1)  # noqa: PLW2901
                replays.append(r)
        return data.draw(st.permutations([*fresh, *replays]))

    def _some_waiting(self, data: st.DataObject, *, max_size: int = 4) -> list[bytes]:
        pool = sorted(self.waiting, key=lambda rid: self.waiting[rid].seq)
        return data.draw(
            st.lists(st.sampled_from(pool), min_size=1, max_size=max_size, unique=True)
        )

    def _stale(self, data: st.DataObject) -> list[int]:
        if not self.gone_seqs:
            return []
        return data.draw(st.lists(st.sampled_from(self.gone_seqs), max_size=2))

    # -- rules -----------------------------------------------------------------------------

    def _commit(self, batch: list[Record], dead: list[DeadLetter]) -> None:
        self.history.extend(batch)
        was_full = self.spool.file.full
        if was_full:
            self.uncertain.update(self.remembered)  # a full spool forgets delivered ids first
        dropped_before = self.spool.file.dropped_points_total
        try:
            result = self.spool.writer.commit(batch, dead)
        except SpoolFull:
            assert was_full, "SpoolFull from a spool that was not full"
            event("commit refused: SpoolFull")
            self._apply_drop(self.spool.file.dropped_points_total - dropped_before)
            return
        assert was_full or result.points_dropped == 0
        assert result.points_dropped == self.spool.file.dropped_points_total - dropped_before
        self._apply_drop(result.points_dropped)
        if result.points_dropped:
            event("commit dropped the oldest records")
        inserted = self._apply_commit(batch, len(dead))
        points = sum(len(r.metrics) for r in inserted)
        assert (result.records_inserted, result.points_inserted) == (len(inserted), points)
        assert result.records_duplicate == len(batch) - len(inserted)
        assert result.points_duplicate == sum(len(r.metrics) for r in batch) - points
        assert result.dead_letters == len(dead)

    @rule(
        data=st.data(),
        fresh=st.lists(records, max_size=4),
        dead=st.lists(dead_letters, max_size=2),
    )
    def commit(self, data: st.DataObject, fresh: list[Record], dead: list[DeadLetter]) -> None:
        """Commit fresh records, redeliveries and dead letters in one transaction."""
        self._commit(self._batch(data, fresh), dead)

    @rule(batch=st.lists(wide_records, min_size=1, max_size=3))
    def commit_wide(self, batch: list[Record]) -> None:
        """Commit records of 30..100 metrics (fills a small spool within a few steps)."""
        self._commit(batch, [])

    @precondition(lambda self: self.cap_pages is not None and not self.spool.file.full)
    @rule(in_flight=st.integers(0, 2))
    def fill_to_the_cap(self, in_flight: int) -> None:
        """With the oldest ``in_flight`` records handed to a request, commit new 100-metric
        records until the spool reports full, then one batch more."""
        oldest = self.spool.outbox.fetch(0, in_flight) if in_flight else []
        self.spool.outbox.hand_out([r.seq for r in oldest])
        self.handed.update(w.record.record_id for w in list(self.waiting.values())[: len(oldest)])
        for _ in range(30):
            full = self.spool.file.full
            self.filled += 1
            metrics = {f"m{i:02d}": self.filled + i / 8 for i in range(100)}
            self._commit([Record("fill", T0_US + self.filled, metrics, T0_US)], [])
            if full:
                return
        raise AssertionError("30 commits of 100 points never filled the small spool")

    @precondition(lambda self: self.waiting)
    @rule(data=st.data(), newest=st.booleans(), limit=st.integers(1, 6))
    def fetch_and_hand_out(self, data: st.DataObject, newest: bool, limit: int) -> None:
        """fetch / fetch_newest return exactly the model's records; some are handed out."""
        order = list(self.waiting.values())
        if newest:
            got = self.spool.outbox.fetch_newest(limit)
            want = [w for w in reversed(order) if w.record.record_id not in self.handed][:limit]
        else:
            after = data.draw(st.sampled_from([0, *(w.seq for w in order)]))
            got = self.spool.outbox.fetch(after, limit)
            want = [w for w in order if w.seq > after][:limit]
        assert [(g.seq, g.device_id, g.ts_us, g.metrics, g.received_us) for g in got] == [
            (w.seq, w.record.device_id, w.record.ts_us, w.record.metrics, w.record.received_us)
            for w in want
        ]
        if not want:
            return
        taken = data.draw(st.lists(st.sampled_from(want), unique_by=lambda w: w.seq))
        self.spool.outbox.hand_out([w.seq for w in taken])
        self.handed.update(w.record.record_id for w in taken)

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """delivered() deletes, remembers and counts records; stale seqs count nothing."""
        rids = self._some_waiting(data)
        self.spool.outbox.delivered([self.waiting[r].seq for r in rids] + self._stale(data))
        self._apply_delivered(rids)

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        """reject() moves whole records, values intact, to the dead letters."""
        rids = self._some_waiting(data, max_size=3)
        want = sorted(
            orjson.dumps(
                {
                    "device_id": w.record.device_id,
                    "ts_us": w.record.ts_us,
                    "metrics": w.record.metrics,
                }
            )
            for w in (self.waiting[r] for r in rids)
        )
        self.spool.outbox.reject(
            [self.waiting[r].seq for r in rids], "api_rejected", "400: bad point"
        )
        self._apply_reject(rids)
        newest = self.spool.dead_letters.recent(limit=len(rids))
        assert sorted(orjson.dumps(orjson.loads(p)) for _a, _r, _ru, _t, p, _d in newest) == want

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def settle_partly(self, data: st.DataObject) -> None:
        """settle_partly() delivers the rest of a record and dead-letters only the refused."""
        [rid] = self._some_waiting(data, max_size=1)
        w = self.waiting[rid]
        names = data.draw(st.lists(st.sampled_from(sorted(w.record.metrics)), unique=True))
        refused = {k: w.record.metrics[k] for k in names}
        dead_before = self.spool.dead_letters.count()
        self.spool.outbox.settle_partly(w.seq, refused, "api_rejected", "400: bad metric")
        self._apply_settle(rid, refused)
        if refused:
            [(_at, _reason, _rule, _topic, payload, _detail)] = self.spool.dead_letters.recent(
                limit=1
            )
            assert orjson.loads(payload)["metrics"] == refused
        else:
            assert self.spool.dead_letters.count() == dead_before

    @precondition(lambda self: self.gone_seqs)
    @rule(data=st.data())
    def settle_a_gone_record(self, data: st.DataObject) -> None:
        """settle_partly() of a record no longer in the spool changes nothing."""
        seq = data.draw(st.sampled_from(self.gone_seqs))
        self.spool.outbox.settle_partly(seq, {"t": 1.0}, "api_rejected", "late answer")

    @rule(seconds=st.sampled_from([1.0, 30.0, 61.0, 200.0, 400.0]))
    def advance_clock(self, seconds: float) -> None:
        """Wall time passes: delivered ids older than the dedup window may be forgotten."""
        self.clock.advance(seconds)

    @rule()
    def restart_cleanly(self) -> None:
        """close() and a new Spool on the same file: everything persisted comes back."""
        self.spool.close()
        self._reopen()

    @rule()
    def restart_abandoning_a_transaction(self) -> None:
        """A connection closed inside BEGIN IMMEDIATE leaves none of its writes behind."""
        db = self.spool.file.conn
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO records (rid, device_id, ts_us, metrics, n, received_us) "
            "VALUES (?, 'ghost', 0, '{}', 7, 0)",
            (GHOST_RID,),
        )
        db.execute("DELETE FROM records WHERE rid != ?", (GHOST_RID,))
        db.execute("DELETE FROM delivered_ids")
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('delivered_points', 1000) "
            "ON CONFLICT(key) DO UPDATE SET value = value + 1000"
        )
        db.execute(
            "INSERT INTO dead_letters (at_us, reason, rule, topic, payload, payload_size, detail)"
            " VALUES (0, 'ghost', '', '', x'00', 1, '')"
        )
        self.spool.close()  # no COMMIT: SQLite rolls the open transaction back on close
        self._reopen()

    @precondition(lambda self: not self.spool.file.full)
    @rule(
        data=st.data(),
        kind=st.sampled_from(["commit", "deliver", "reject", "settle"]),
        kill_at=st.integers(0, 12),
        fresh=st.lists(records, max_size=4),
    )
    def crash_mid_operation(
        self, data: st.DataObject, kind: str, kill_at: int, fresh: list[Record]
    ) -> None:
        """SIGKILL inside one operation: after restart it happened entirely or not at all."""
        if kind != "commit" and not self.waiting:
            kind = "commit"
        op: Callable[[Spool], object]
        batch: list[Record] = []
        rids: list[bytes] = []
        refused: dict[str, float] = {}
        if kind == "commit":
            batch = self._batch(data, fresh)
            self.history.extend(batch)
            op = functools.partial(_commit, records=batch)
        elif kind == "settle":
            rids = self._some_waiting(data, max_size=1)
            w = self.waiting[rids[0]]
            names = data.draw(st.lists(st.sampled_from(sorted(w.record.metrics)), unique=True))
            refused = {k: w.record.metrics[k] for k in names}
            op = functools.partial(_settle_partly, seq=w.seq, refused=refused)
        else:
            rids = self._some_waiting(data)
            seqs = [self.waiting[r].seq for r in rids]
            if kind == "deliver":
                op = functools.partial(_delivered, seqs=seqs)
            else:
                op = functools.partial(_reject, seqs=seqs)
        self.spool.close()
        committed = run_and_crash(self._new_spool, op, kill_at)
        event(f"crash in {kind}: {'after' if committed else 'before'} COMMIT")
        self._reopen()
        if not committed:
            return
        if kind == "commit":
            self._apply_commit(batch, 0)
        elif kind == "deliver":
            self._apply_delivered(rids)
        elif kind == "reject":
            self._apply_reject(rids)
        else:
            self._apply_settle(rids[0], refused)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def spool_matches_the_model(self) -> None:
        """The file holds exactly the model's records; counters agree with the file."""
        db = self.spool.file.conn
        # Settled records stay in ``records`` until a sweep; they wait no more, and their ids
        # are remembered as delivered.
        settled = {int(seq) for (seq,) in db.execute("SELECT seq FROM settled")}
        assert settled == self.spool.file.unswept.seqs, "settled records in the file and in memory"
        assert not settled - {
            int(seq)
            for (seq,) in db.execute(
                "SELECT seq FROM records WHERE seq IN (SELECT seq FROM settled)"
            )
        }, "a settled record left records without its sweep"
        rows = db.execute(
            "SELECT seq, rid, device_id, ts_us, metrics, n, received_us FROM records "
            "WHERE seq NOT IN (SELECT seq FROM settled) ORDER BY seq"
        ).fetchall()
        assert [bytes(r[1]) for r in rows] == list(self.waiting), "records lost, added or moved"
        for (seq, _rid, device, ts_us, metrics, n, received_us), w in zip(
            rows, self.waiting.values(), strict=True
        ):
            stored = orjson.loads(metrics)
            assert (device, ts_us, stored, received_us) == (
                w.record.device_id,
                w.record.ts_us,
                w.record.metrics,
                w.record.received_us,
            ), "a stored record differs from the first copy committed"
            assert n == len(stored)
            w.seq = int(seq)
        depth = sum(w.points for w in self.waiting.values())
        count, total = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n), 0) FROM records "
            "WHERE seq NOT IN (SELECT seq FROM settled)"
        ).fetchone()
        assert (self.spool.file.depth_records, self.spool.file.depth_points) == (count, total), (
            "depth"
        )
        assert (count, total) == (len(self.waiting), depth)
        assert self.spool.file.oldest_received_us == (rows[0][6] if rows else None)
        per_device: dict[str, int] = {}
        for w in self.waiting.values():
            per_device[w.record.device_id] = per_device.get(w.record.device_id, 0) + w.points
        totals = dict(db.execute("SELECT device_id, points FROM devices").fetchall())
        assert totals == per_device, "the devices table's totals differ from the records"

        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        assert self.spool.file.delivered_points_total == int(meta.get("delivered_points", 0))
        assert self.spool.file.dropped_points_total == int(meta.get("dropped_points", 0))
        assert self.spool.file.delivered_points_total == self.delivered_points, "delivered count"
        assert self.spool.file.dropped_points_total == self.dropped_points, "dropped count"
        assert self.spool.file.delivered_points_total >= self.delivered_seen, "delivered went down"
        self.delivered_seen = self.spool.file.delivered_points_total
        assert self.spool.dead_letters.count() == self.dead, "dead letter count"

        # Every point ever stored is waiting, delivered, dead-lettered or counted dropped,
        # and the file itself shows it (refused points are inside the dead letters' payloads).
        refused = sum(
            len(orjson.loads(p)["metrics"])
            for (p,) in db.execute("SELECT payload FROM dead_letters WHERE topic = ''")
        )
        assert refused == self.refused_points, "refused points in the dead letters"
        assert self.inserted_points == (
            self.spool.file.depth_points
            + self.spool.file.delivered_points_total
            + refused
            + self.spool.file.dropped_points_total
        ), "points stored != waiting + delivered + dead-lettered + dropped"

        remembered = {bytes(r) for (r,) in db.execute("SELECT rid FROM delivered_ids")}
        remembered |= {
            bytes(r)
            for (r,) in db.execute("SELECT rid FROM records WHERE seq IN (SELECT seq FROM settled)")
        }
        assert not remembered & set(self.waiting), "a delivered record is waiting again"
        certain = {rid for rid in self.remembered if self._certain(rid)}
        assert certain <= remembered, "a recently delivered id was forgotten"


class SmallDropOldestMachine(SpoolMachine):
    """Three pages above an empty spool, dropping the oldest waiting records when full."""

    when_full: ClassVar[WhenFull] = "drop-oldest"
    cap_pages: ClassVar[int | None] = 3


class SmallBackPressureMachine(SpoolMachine):
    """Three pages above an empty spool, refusing commits (SpoolFull) when full."""

    cap_pages: ClassVar[int | None] = 3


def test_spool_matches_its_model_through_crashes() -> None:
    """With room to spare, every step and every kind of crash keeps the spool equal to the
    model: nothing lost, nothing duplicated, counters exact and persisted."""
    run_state_machine_as_test(SpoolMachine, settings=MODEL)


def test_small_drop_oldest_spool_matches_its_model() -> None:
    """At a small cap, drop-oldest drops only the oldest records not handed out, and counts
    every dropped point exactly."""
    run_state_machine_as_test(SmallDropOldestMachine, settings=SMALL_CAP)


def test_small_back_pressure_spool_matches_its_model() -> None:
    """At a small cap, back-pressure refuses commits without writing or dropping anything."""
    run_state_machine_as_test(SmallBackPressureMachine, settings=SMALL_CAP)
