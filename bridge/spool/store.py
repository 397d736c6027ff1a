"""The durable spool: SQLite in WAL mode between the MQTT acknowledgement and the API.

A message is acknowledged to the broker only after its records (or its dead letter) are
committed here, so ``kill -9`` at any instant loses nothing the broker was told is safe.
Records leave in the same transaction that counts their delivery. ``sqlite3`` is used only in
this package.

:class:`Spool` is one spool file and its jobs, each in its own module:

- :attr:`Spool.file` (:mod:`~bridge.spool.file`): lock, connection, transactions, counters;
- :attr:`Spool.writer` (:mod:`~bridge.spool.writes`): the group commit before the PUBACKs;
- :attr:`Spool.outbox` (:mod:`~bridge.spool.outbox`): batches handed out, then settled;
- :attr:`Spool.fair` (:mod:`~bridge.spool.fairshare`): each device's share, held records;
- :attr:`Spool.coalescer` (:mod:`~bridge.spool.coalesce`): closing coalescing windows;
- :attr:`Spool.deadbands` (:mod:`~bridge.spool.deadband`): the last sent values of deadbands;
- :attr:`Spool.audit` (:mod:`~bridge.spool.audit`): the devices delivered for and the audit of
  accepted points (``devices``, ``verify``);
- :attr:`Spool.dead_letters` (:mod:`~bridge.spool.deadletters`): their budget, queries, purge
  and requeue.

All of it is blocking and runs on one thread: the bridge reaches it through
:class:`~bridge.spool.facade.AsyncSpool`, tools and tests call it directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from bridge.errors import SpoolError, SpoolFull
from bridge.models import CommitResult, DeadLetter, Record
from bridge.settings import DeadLetterSettings, SpoolSettings
from bridge.sparkplug.parking import SparkplugChanges
from bridge.spool.audit import DeliveryAudit
from bridge.spool.coalesce import Coalescer
from bridge.spool.deadband import DeadbandGate
from bridge.spool.deadletters import DeadLetters
from bridge.spool.dlbudget import columns_size, row_cost
from bridge.spool.fairshare import FairShare
from bridge.spool.file import SpoolFile
from bridge.spool.outbox import Outbox
from bridge.spool.writes import DEAD_LETTER_PAYLOAD_CAP, IntakeWriter, Stamped

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# A record's row and index entries beside its metrics, and each metric in its JSON: rounded up.
_RECORD_BYTES = 256
_METRIC_BYTES = 48


class Spool:
    """One spool file and its jobs (see the module docstring)."""

    def __init__(
        self,
        settings: SpoolSettings,
        clock: Callable[[], float] = time.time,
        dead_letters: DeadLetterSettings | None = None,
    ) -> None:
        self.file = SpoolFile(settings, clock)
        self.audit = DeliveryAudit(self.file)
        self.outbox = Outbox(self.file, self.audit)
        self.fair = FairShare(self.file)
        self.deadbands = DeadbandGate(self.file)
        self.writer = IntakeWriter(self.file, self.outbox, self.fair, self.deadbands)
        self.coalescer = Coalescer(self.file)
        self.dead_letters = DeadLetters(self.file, dead_letters, self.audit)

    def open(self) -> None:
        """Lock and open the file (see :meth:`SpoolFile.open`)."""
        self.file.open()

    def open_shared(self) -> None:
        """Open beside a running bridge, without the lock (see :meth:`SpoolFile.open_shared`)."""
        self.file.open_shared()

    def close(self) -> None:
        """Close the file and release the lock (idempotent)."""
        self.file.close()

    def sweep_settled(self) -> None:
        """Sweep the settled records out now, if there are any (spool/settler.py)."""
        if self.file.unswept.seqs:
            self.outbox.sweep()

    def making_room(self, write: Callable[[], _T], need: int = 0) -> _T:
        """Run a spool write; if the disk is full, prune the oldest dead letters to make room
        for ``need`` bytes, or else forget the oldest delivered ids, and run it once more (the
        readings matter more than either).

        Raises:
            SpoolFull: the write still does not fit (or met ``spool.max_bytes``).
        """
        try:
            return write()
        except SpoolFull:
            if not (self.dead_letters.prune_for_disk(need) or self.writer.forget_for_disk(need)):
                raise
            return write()

    def commit(
        self,
        records: Sequence[Record],
        dead: Sequence[DeadLetter],
        stamped: Sequence[Stamped] = (),
        acked: Sequence[tuple[int, int]] = (),
        *,
        forget_unacked: bool = False,
        sparkplug: Sequence[SparkplugChanges] = (),
    ) -> CommitResult:
        """A group commit (:meth:`IntakeWriter.commit`) that dead letters can never refuse.

        On a full disk the oldest dead letters are pruned and the commit is tried once more
        (:meth:`making_room`). After it, dead letters beyond their budget are pruned, and so
        are the oldest while the disk is nearly full, before it is.

        Raises:
            SpoolFull: ``spool.max_bytes`` is reached by other data, or the disk is full even
                without dead letters; nothing was written.
            SpoolError: any other write failure (the caller must not acknowledge after it).
        """
        writer = self.writer
        need = _size(records, dead)
        result = self.making_room(
            lambda: writer.commit(
                records, dead, stamped, acked, forget_unacked=forget_unacked, sparkplug=sparkplug
            ),
            need,
        )
        try:
            if dead:
                self.dead_letters.keep_within_budget()
            self.dead_letters.keep_disk_room(need)
        except SpoolError as exc:  # the commit stands; a broken file fails the next one
            log.error("could not prune dead letters after a commit: %s", exc)
        # The prunes go out with the commit, so the metric counts them at once rather than at
        # the next housekeeping round (which takes any made for a refused commit).
        return replace(result, pruned=self.dead_letters.take_pruned())


def _size(records: Sequence[Record], dead: Sequence[DeadLetter]) -> int:
    """A generous estimate of the bytes a commit of ``records`` and ``dead`` writes."""
    letters = sum(
        row_cost(
            columns_size(
                d.reason, d.rule, d.topic, min(len(d.payload), DEAD_LETTER_PAYLOAD_CAP), d.detail
            )
        )
        for d in dead
    )
    return letters + sum(_RECORD_BYTES + _METRIC_BYTES * len(r.metrics) for r in records)
