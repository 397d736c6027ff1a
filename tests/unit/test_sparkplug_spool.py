"""Sparkplug alias tables in the real SQLite spool: written in the commit of their BIRTH (and
only then), replaced by a rebirth in that same transaction, and loaded back at start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.intake import Intake, Pending
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.metrics import BridgeMetrics
from bridge.models import Record
from bridge.settings import SpoolSettings
from bridge.sparkplug.aliases import AliasTables, Birth
from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.encode import EdgeNode, Metric
from bridge.sparkplug.parking import ParkingLimits, SparkplugChanges
from bridge.spool.store import Spool

T0_MS = 1_795_680_000_000
RULES = """version: 1
rules:
  - name: sp
    topic: "spBv1.0/#"
    payload: sparkplug
"""


def open_spool(path: Path) -> Spool:
    spool = Spool(SpoolSettings(path, reserve_bytes=0))
    spool.open()
    return spool


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


@pytest.fixture
def spool(path: Path) -> Iterator[Spool]:
    s = open_spool(path)
    try:
        yield s
    finally:
        s.close()


def receive(m: Mapper, message: tuple[str, bytes]) -> tuple[list[Record], list[Birth]]:
    out = m.map(message[0], message[1], T0_MS * 1000 + 1)
    assert out.failures == []
    return out.records, out.births


def commit(spool: Spool, records: list[Record], births: list[Birth]) -> None:
    spool.commit(records, [], sparkplug=[SparkplugChanges(births=births)])


def test_the_table_is_committed_with_its_birth_and_loaded_after_a_reopen(path: Path) -> None:
    m = Mapper(load_mappings_text(RULES, "m.yaml"))
    node = EdgeNode("G", "E")
    spool = open_spool(path)
    records, births = receive(m, node.nbirth([Metric("t", DataType.INT8, 1)], T0_MS))
    commit(spool, records, births)
    records, births = receive(m, node.dbirth("d", [Metric("u", DataType.UINT16, 2)], T0_MS))
    commit(spool, records, births)
    spool.close()
    spool = open_spool(path)  # a restart: a new mapper, the tables from the spool
    try:
        fresh = Mapper(load_mappings_text(RULES, "m.yaml"))
        fresh.aliases.load(spool.writer.load_aliases())
        out = fresh.map(*node.ndata({"t": -3}, T0_MS + 1), T0_MS * 1000 + 2)
        assert [r.metrics for r in out.records] == [{"t": -3.0}]  # Int8 from the stored BIRTH
        out = fresh.map(*node.ddata("d", {"u": 7}, T0_MS + 1), T0_MS * 1000 + 2)
        assert [r.metrics for r in out.records] == [{"u": 7.0}]
    finally:
        spool.close()


def test_a_rebirth_replaces_the_node_and_its_devices_in_the_same_commit(spool: Spool) -> None:
    m = Mapper(load_mappings_text(RULES, "m.yaml"))
    first = EdgeNode("G", "E")
    for message in (
        first.nbirth([Metric("a", DataType.DOUBLE, 1.0), Metric("b", DataType.DOUBLE, 1.0)], T0_MS),
        first.dbirth("d", [Metric("c", DataType.DOUBLE, 1.0)], T0_MS),
    ):
        commit(spool, *receive(m, message))
    second = EdgeNode("G", "E", bd_seq=1)
    commit(spool, *receive(m, second.nbirth([Metric("b", DataType.DOUBLE, 2.0)], T0_MS)))
    stored = AliasTables()
    stored.load(spool.writer.load_aliases())
    assert sorted((r.device, r.name, r.alias) for r in stored.rows()) == sorted(
        (r.device, r.name, r.alias) for r in m.aliases.rows()
    )
    assert {r.name for r in stored.rows()} == {"bdSeq", "Node Control/Rebirth", "b"}


def test_a_refused_commit_stores_no_alias(spool: Spool) -> None:
    """The table goes with its BIRTH's transaction: when that fails, neither is stored."""
    m = Mapper(load_mappings_text(RULES, "m.yaml"))
    node = EdgeNode("G", "E")
    records, births = receive(m, node.nbirth([Metric("a", DataType.DOUBLE, 1.0)], T0_MS))
    spool.file.conn.execute(
        "CREATE TRIGGER no_records BEFORE INSERT ON records BEGIN "
        "SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(Exception, match="refused"):
        commit(spool, records, births)
    spool.file.conn.execute("DROP TRIGGER no_records")
    assert spool.writer.load_aliases() == []
    commit(spool, records, births)  # the batch put back and committed again
    assert {r.name for r in spool.writer.load_aliases()} == {"bdSeq", "Node Control/Rebirth", "a"}


# -- parked DATA ------------------------------------------------------------------------------


def parked_rows(spool: Spool) -> list[tuple[str, str, int]]:
    return [(p.group, p.node, p.received_us) for p in spool.writer.load_parked()]


def commit_pending(spool: Spool, p: Pending) -> None:
    work = p.sparkplug
    dead = [p.dead] if p.dead else []
    dead += work.dead if work else []
    changes = [work.changes] if work and work.changes else []
    spool.commit(p.records, dead, sparkplug=changes)


def test_parked_data_is_stored_kept_over_a_reopen_and_replayed_in_the_birth_commit(
    path: Path,
) -> None:
    """DATA before its BIRTH: committed into the parked table with its own commit; a restart
    (new intake, tables and parked messages loaded from the spool) maps it when the BIRTH
    comes, in order, and the BIRTH's commit stores its records and removes its rows."""
    node = EdgeNode("G", "E")
    birth = node.nbirth([Metric("a", DataType.INT8, 1)], T0_MS)
    spool = open_spool(path)
    first = Intake(Mapper(load_mappings_text(RULES, "m.yaml")), BridgeMetrics())
    for mid, k in enumerate((-1, -2), start=1):
        topic, payload = node.ndata({"a": k}, T0_MS - k)
        first.receive(topic, payload, mid, 1, False, 1)
        commit_pending(spool, first.take(1)[0])
    assert len(parked_rows(spool)) == 2
    assert spool.file.depth_points == 0
    spool.close()
    spool = open_spool(path)
    try:
        second = Intake(Mapper(load_mappings_text(RULES, "m.yaml")), BridgeMetrics())
        second.sparkplug.aliases.load(spool.writer.load_aliases())
        second.sparkplug.parking.load(spool.writer.load_parked())
        second.receive(birth[0], birth[1], 9, 1, False, 1)
        commit_pending(spool, second.take(1)[0])
        got = [(r.ts_us // 1000, r.metrics) for r in spool.outbox.fetch(0, 10)]
        assert got == [(T0_MS, {"a": 1.0}), (T0_MS + 1, {"a": -1.0}), (T0_MS + 2, {"a": -2.0})]
        assert parked_rows(spool) == []
    finally:
        spool.close()


def test_a_bound_dead_letters_the_parked_message_and_removes_its_row(spool: Spool) -> None:
    node = EdgeNode("G", "E")
    node.nbirth([Metric("a", DataType.DOUBLE, 1.0)], T0_MS)
    i = Intake(
        Mapper(load_mappings_text(RULES, "m.yaml")),
        BridgeMetrics(),
        parking=ParkingLimits(max_messages=1),
    )
    for mid in (1, 2):
        topic, payload = node.ndata({"a": float(mid)}, T0_MS + mid)
        i.receive(topic, payload, mid, 1, False, 1)
        commit_pending(spool, i.take(1)[0])
    assert len(parked_rows(spool)) == 1
    [(reason, rule)] = spool.file.conn.execute("SELECT reason, rule FROM dead_letters").fetchall()
    assert (reason, rule) == ("sparkplug_unknown_alias", "sp")


def test_parked_messages_past_their_age_are_dead_lettered_without_a_new_message(
    spool: Spool,
) -> None:
    """The expiry round needs no message to arrive: a commit of its own (nothing to
    acknowledge) stores the dead letter and removes the row."""
    now = [T0_MS / 1000 + 60]
    i = Intake(
        Mapper(load_mappings_text(RULES, "m.yaml")),
        BridgeMetrics(),
        wall_clock=lambda: now[0],
        parking=ParkingLimits(max_age_us=30_000_000),
    )
    node = EdgeNode("G", "E")
    node.nbirth([Metric("a", DataType.DOUBLE, 1.0)], T0_MS)
    topic, payload = node.ndata({"a": 2.0}, T0_MS + 1)
    i.receive(topic, payload, 1, 1, False, 1)
    commit_pending(spool, i.take(1)[0])
    i.expire_parked()
    assert len(i) == 0  # not yet
    now[0] += 31
    i.expire_parked()
    [expired] = i.take(1)
    assert expired.synthetic
    assert expired.qos == 0
    commit_pending(spool, expired)
    assert parked_rows(spool) == []
    [(reason, topic_stored)] = spool.file.conn.execute(
        "SELECT reason, topic FROM dead_letters"
    ).fetchall()
    assert (reason, topic_stored) == ("sparkplug_unknown_alias", topic)
