"""The alias tables of Sparkplug B edge nodes: what NBIRTH and DBIRTH certificates define.

A DATA message usually names a metric by its numeric alias only, without its datatype; both come
from the BIRTH that defined the alias. Aliases are unique within an edge node, across the node
and all its devices (Sparkplug 3.0, tck-id-payloads-alias-uniqueness), so a table is kept per
(group, edge node) and each entry remembers the device it belongs to.

- An NBIRTH starts a new session of the node: it **replaces** the node's whole table (its
  devices' entries too: they re-birth after it, possibly with new aliases).
- A DBIRTH replaces the entries of that one device.
- A metric a BIRTH sends without an alias is still kept, by name, for its datatype (a DATA
  message that names it without a datatype needs it to read an integer).

Pure: :meth:`AliasTables.birth` updates the tables and returns a :class:`Birth`, the change as
rows, for the caller to make durable (the bridge stores it in the spool in the same transaction
as the BIRTH message, before its MQTT acknowledgement: :mod:`bridge.spool.sparkplug`).
:meth:`AliasTables.load` takes those rows back at start.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from bridge.sparkplug.decode import SparkplugMetric

NODE = ""  # the device column of a node's own metrics in a row


class Known(NamedTuple):
    """A metric a BIRTH defined: its name, datatype and device (None: the node's own)."""

    name: str
    datatype: int | None
    device: str | None


class AliasRow(NamedTuple):
    """One stored entry: ``device`` is ``""`` for the node's own metrics, ``alias`` None for a
    metric born without one."""

    group: str
    node: str
    device: str
    name: str
    alias: int | None
    datatype: int | None


@dataclass(frozen=True, slots=True)
class Birth:
    """What one BIRTH changed: ``device`` None (an NBIRTH) replaces the node's whole table,
    else only that device's entries; ``rows`` are the new entries."""

    group: str
    node: str
    device: str | None
    rows: tuple[AliasRow, ...]


@dataclass(slots=True)
class _Node:
    by_alias: dict[int, Known] = field(default_factory=dict)
    by_name: dict[tuple[str | None, str], Known] = field(default_factory=dict)
    bd_seq: int | None = None  # of the NBIRTH seen since the start (not stored)

    def drop_device(self, device: str) -> None:
        self.by_alias = {a: k for a, k in self.by_alias.items() if k.device != device}
        self.by_name = {key: k for key, k in self.by_name.items() if key[0] != device}

    def add(self, row: AliasRow) -> None:
        known = Known(row.name, row.datatype, row.device or None)
        self.by_name[(known.device, row.name)] = known
        if row.alias is not None:
            self.by_alias[row.alias] = known


class AliasTables:
    """Every edge node's aliases, by (group, edge node)."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[str, str], _Node] = {}

    def __len__(self) -> int:
        """How many edge nodes have a table."""
        return len(self._nodes)

    def birth(
        self, group: str, node: str, device: str | None, metrics: Iterable[SparkplugMetric]
    ) -> Birth:
        """Take in a BIRTH's metrics (``device`` None for an NBIRTH); returns the change."""
        born = tuple(metrics)
        rows = tuple(
            AliasRow(group, node, device or NODE, m.name, m.alias, m.datatype)
            for m in born
            if m.name is not None  # a BIRTH names every metric; one that does not defines nothing
        )
        change = Birth(group, node, device, rows)
        self.apply(change)
        if device is None:
            self._nodes[group, node].bd_seq = bd_seq(born)
        return change

    def apply(self, change: Birth) -> None:
        """Apply a change (from :meth:`birth`, or stored)."""
        key = (change.group, change.node)
        if change.device is None:
            table = self._nodes[key] = _Node()
        else:
            table = self._nodes.setdefault(key, _Node())
            table.drop_device(change.device)
        for row in change.rows:
            table.add(row)

    def load(self, rows: Iterable[AliasRow]) -> None:
        """The stored rows (at start): they replace nothing, they are the state."""
        for row in rows:
            self._nodes.setdefault((row.group, row.node), _Node()).add(row)

    def session(self, group: str, node: str) -> int | None:
        """The bdSeq of the node's NBIRTH, when one was seen since the start."""
        table = self._nodes.get((group, node))
        return table.bd_seq if table else None

    def devices(self, group: str, node: str) -> list[str]:
        """The devices of the node that a BIRTH defined, sorted."""
        table = self._nodes.get((group, node))
        return sorted({d for d, _ in table.by_name if d is not None}) if table else []

    def knows(self, group: str, node: str) -> bool:
        """Whether the edge node has a table (a BIRTH was seen, now or before a restart)."""
        return (group, node) in self._nodes

    def resolve(
        self, group: str, node: str, device: str | None, metric: SparkplugMetric
    ) -> Known | None:
        """Name, datatype and device of a DATA metric; None when its alias is unknown (no
        BIRTH defined it yet, or it belongs to another device of the node). A metric sent by
        name is known by name; its datatype is its own, else its BIRTH's."""
        table = self._nodes.get((group, node))
        if metric.name is not None:
            born = table.by_name.get((device, metric.name)) if table else None
            datatype = metric.datatype
            if datatype is None and born is not None:
                datatype = born.datatype
            return Known(metric.name, datatype, device)
        if metric.alias is None or table is None:
            return None
        known = table.by_alias.get(metric.alias)
        if known is None or known.device != device:
            return None
        if metric.datatype is not None and metric.datatype != known.datatype:
            return Known(known.name, metric.datatype, device)
        return known

    def rows(self) -> list[AliasRow]:
        """Every entry as rows (for tests and ``explain``)."""
        out: list[AliasRow] = []
        for (group, node), table in self._nodes.items():
            named = {(k.device, k.name): a for a, k in table.by_alias.items()}
            for (device, name), known in table.by_name.items():
                alias = named.get((device, name))
                out.append(AliasRow(group, node, device or NODE, name, alias, known.datatype))
        return out


def bd_seq(metrics: Iterable[SparkplugMetric]) -> int | None:
    """The ``bdSeq`` metric's value of an NBIRTH or NDEATH, if it has one."""
    for m in metrics:
        if m.name == "bdSeq" and type(m.value.raw) is int:
            return m.value.raw
    return None
