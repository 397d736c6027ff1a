"""Sparkplug B alias tables in the spool: written in the commit of the BIRTH that defines them.

Why this keeps every alias through a crash, a restart or a reconnect:

- The intake maps each message as it arrives, before its commit, so the in-memory tables
  (:class:`bridge.sparkplug.aliases.AliasTables`, held by the intake) are updated at receive
  time, in receive order: a DATA message received after its BIRTH resolves against it even
  when both wait for the same group commit.
- The BIRTH's change (:class:`~bridge.sparkplug.aliases.Birth`) travels with the message to
  its group commit and is written here in that commit's transaction, with its records and
  before its PUBACK. Commits go in receive order, so the stored tables are always those of
  the messages committed so far, no more, no less.
- A crash between the receive and the commit of a BIRTH loses its in-memory change, but the
  BIRTH was not acknowledged, and neither was any DATA after it (PUBACKs go in receive order,
  after their commit). The broker redelivers the BIRTH and then that DATA, in order, on the
  persistent session, and the tables are rebuilt as they were. A crash after the commit keeps
  the stored table, loaded at start by :func:`load_aliases`.
- A refused commit (spool full) puts the batch back with its changes and writes them when it
  is committed; a redelivered BIRTH is applied again, which changes nothing.

DATA whose aliases no BIRTH defined yet is parked the same way: its row goes in with its own
commit (before its PUBACK), and goes out in the commit of the message that mapped it at last
(a BIRTH: its records are in that same transaction) or dead-lettered it (a bound). A crash
before that commit leaves the row, loaded at start, and the BIRTH is redelivered.

An NBIRTH replaces the edge node's whole table (its devices re-birth after it) and a DBIRTH
the device's entries, in the same transaction as the new rows: a rebirth with new aliases
never leaves an old alias behind.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from bridge.sparkplug.aliases import AliasRow, Birth
from bridge.sparkplug.parking import Parked, SparkplugChanges


def store_changes(db: sqlite3.Connection, changes: Sequence[SparkplugChanges]) -> None:
    """Apply each message's changes in receive order, inside the caller's transaction."""
    for change in changes:
        if change.park:
            db.executemany(
                "INSERT OR IGNORE INTO sparkplug_parked VALUES (?, ?, ?, ?, ?, ?)", change.park
            )
        _births(db, change.births)
        if change.unpark:
            db.executemany(
                "DELETE FROM sparkplug_parked WHERE grp = ? AND node = ? AND received_us = ?",
                change.unpark,
            )


def _births(db: sqlite3.Connection, births: Sequence[Birth]) -> None:
    for birth in births:
        if birth.device is None:
            db.execute(
                "DELETE FROM sparkplug_aliases WHERE grp = ? AND node = ?",
                (birth.group, birth.node),
            )
        else:
            db.execute(
                "DELETE FROM sparkplug_aliases WHERE grp = ? AND node = ? AND device = ?",
                (birth.group, birth.node, birth.device),
            )
        db.executemany(
            "INSERT OR REPLACE INTO sparkplug_aliases VALUES (?, ?, ?, ?, ?, ?)", birth.rows
        )


def load_aliases(db: sqlite3.Connection) -> list[AliasRow]:
    """Every stored entry."""
    rows = db.execute(
        "SELECT grp, node, device, name, alias, datatype FROM sparkplug_aliases"
    ).fetchall()
    return [AliasRow(str(g), str(n), str(d), str(m), a, t) for g, n, d, m, a, t in rows]


def load_parked(db: sqlite3.Connection) -> list[Parked]:
    """Every parked message, in receive order."""
    rows = db.execute(
        "SELECT grp, node, received_us, topic, payload, rule FROM sparkplug_parked"
        " ORDER BY received_us"
    ).fetchall()
    return [Parked(str(g), str(n), int(r), str(t), bytes(p), str(u)) for g, n, r, t, p, u in rows]
