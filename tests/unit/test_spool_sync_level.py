"""The spool's ``synchronous`` level: settlements commit at NORMAL and leave the connection
there until the next synced transaction sets the configured level again before its BEGIN
(SpoolFile.transaction). What that relies on is checked on the statements the connection
really runs: every intake commit at the configured level, and no write outside a transaction
(an autocommit write would take whatever level the last settlement left)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bridge.spool.store import Spool
from tests.support.spool import T0_US, dead, rec

_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)
_TEMP = re.compile(r"\b(temp\.|devices\b)", re.IGNORECASE)  # the in-memory devices' totals


@dataclass
class Statements:
    """What the spool's connection ran, as seen by SQLite's trace callback."""

    level: str = "FULL"  # the configured default, set when the connection was opened
    in_transaction: bool = False
    intake: bool = False  # the open transaction stores records
    switches: list[str] = field(default_factory=list)
    intake_levels: list[str] = field(default_factory=list)
    loose_writes: list[str] = field(default_factory=list)

    def see(self, sql: str) -> None:
        if sql.startswith("--"):
            return  # a statement of a trigger: part of the statement that fired it
        if m := re.match(r"PRAGMA synchronous=(\w+)", sql):
            self.level = m.group(1)
            self.switches.append(self.level)
        elif sql.startswith("BEGIN"):
            self.in_transaction, self.intake = True, False
        elif sql in ("COMMIT", "ROLLBACK"):
            if self.intake:
                self.intake_levels.append(self.level)
            self.in_transaction = False
        elif _WRITE.match(sql):
            if "INTO records" in sql:
                self.intake = True
            if not self.in_transaction and not _TEMP.search(sql):
                self.loose_writes.append(sql[:80])


def _traced(spool: Spool) -> Statements:
    seen = Statements()
    spool.file.conn.set_trace_callback(seen.see)
    return seen


def test_settlements_switch_the_level_once_and_every_intake_commit_is_synced(
    spool: Spool,
) -> None:
    seen = _traced(spool)
    spool.writer.commit([rec(i) for i in range(40)], [])
    batches = spool.outbox.take_batches(4, 10, single_object=False, newest_first=False)
    for batch in batches[:3]:
        records = batch.records
        spool.outbox.delivered([r.seq for r in records], [r.points for r in records])
    assert seen.switches == ["NORMAL"], "three settlements in a row switch once"
    spool.writer.commit([rec(i) for i in range(40, 45)], [])
    assert seen.switches == ["NORMAL", "FULL"]
    spool.outbox.delivered(batches[3].seqs)
    spool.writer.commit([rec(i) for i in range(45, 50)], [])
    assert seen.intake_levels == ["FULL", "FULL", "FULL"]
    assert spool.file.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_no_spool_write_runs_outside_a_transaction(spool: Spool) -> None:
    seen = _traced(spool)
    spool.writer.commit([rec(i, device=f"d{i % 3}") for i in range(30)], [dead()])
    rows = spool.outbox.fetch(0, 30)
    spool.outbox.delivered([r.seq for r in rows[:10]], [r.points for r in rows[:10]])
    spool.outbox.reject([rows[10].seq], "api_rejected", "HTTP 422")
    spool.outbox.settle_partly(rows[11].seq, {"m0": 1.0}, "api_rejected", "HTTP 422")
    spool.file.meta_set("client_id", "bridge-1")
    spool.outbox.sweep()
    spool.audit.fold_now()
    spool.audit.prune(T0_US + 10**12)
    letters = spool.dead_letters.recent()
    spool.dead_letters.requeue([letters[0][0]], [rec(99)])
    spool.writer.commit([rec(i) for i in range(100, 110)], [])
    assert len(seen.intake_levels) == 3  # the first commit, the requeue's, the last
    assert set(seen.intake_levels) == {"FULL"}
    assert seen.loose_writes == []


def test_a_settlement_counts_the_records_still_there(spool: Spool) -> None:
    """Points given by the caller are used only when every record is still waiting; one gone
    (refused meanwhile) makes the settlement count what the file holds."""
    spool.writer.commit([rec(i, n=3) for i in range(6)], [])
    rows = spool.outbox.fetch(0, 6)
    spool.outbox.reject([rows[0].seq], "api_rejected", "HTTP 422")
    spool.outbox.delivered([r.seq for r in rows[:3]], [r.points for r in rows[:3]])
    assert spool.file.unswept.seqs == {rows[1].seq, rows[2].seq}
    assert (spool.file.depth_records, spool.file.depth_points) == (3, 9)
    assert spool.file.delivered_points_total == 6
