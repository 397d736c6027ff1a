"""Sparkplug alias tables in the real SQLite spool: written in the commit of their BIRTH (and
only then), replaced by a rebirth in that same transaction, and loaded back at start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.models import Record
from bridge.settings import SpoolSettings
from bridge.sparkplug.aliases import AliasTables, Birth
from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.encode import EdgeNode, Metric
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
    spool.commit(records, [], births=births)


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
