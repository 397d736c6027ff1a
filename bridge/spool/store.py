"""The durable spool: SQLite in WAL mode between the MQTT acknowledgement and the API.

A message is acknowledged to the broker only after its records (or its dead letter) are
committed here, so ``kill -9`` at any instant loses nothing the broker was told is safe.
Records leave in the same transaction that counts their delivery. ``sqlite3`` is used only in
this package.

:class:`Spool` is one spool file and its jobs, each in its own module:

- :attr:`Spool.file` (:mod:`~bridge.spool.file`): lock, connection, transactions, counters;
- :attr:`Spool.writer` (:mod:`~bridge.spool.writes`): the group commit before the PUBACKs;
- :attr:`Spool.outbox` (:mod:`~bridge.spool.outbox`): batches handed out, then settled;
- :attr:`Spool.coalescer` (:mod:`~bridge.spool.coalesce`): closing coalescing windows;
- :attr:`Spool.dead_letters` (:mod:`~bridge.spool.deadletters`): their budget, queries, purge
  and requeue.

All of it is blocking and runs on one thread: the bridge reaches it through
:class:`~bridge.spool.facade.AsyncSpool`, tools and tests call it directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from bridge.errors import SpoolError, SpoolFull
from bridge.models import CommitResult, DeadLetter, Record
from bridge.settings import DeadLetterSettings, SpoolSettings
from bridge.spool.coalesce import Coalescer
from bridge.spool.deadletters import DeadLetters
from bridge.spool.file import SpoolFile
from bridge.spool.outbox import Outbox
from bridge.spool.writes import IntakeWriter, Stamped

log = logging.getLogger(__name__)


class Spool:
    """One spool file and its jobs (see the module docstring)."""

    def __init__(
        self,
        settings: SpoolSettings,
        clock: Callable[[], float] = time.time,
        dead_letters: DeadLetterSettings | None = None,
    ) -> None:
        self.file = SpoolFile(settings, clock)
        self.outbox = Outbox(self.file)
        self.writer = IntakeWriter(self.file, self.outbox)
        self.coalescer = Coalescer(self.file)
        self.dead_letters = DeadLetters(self.file, dead_letters)

    def open(self) -> None:
        """Lock and open the file (see :meth:`SpoolFile.open`)."""
        self.file.open()

    def open_shared(self) -> None:
        """Open beside a running bridge, without the lock (see :meth:`SpoolFile.open_shared`)."""
        self.file.open_shared()

    def close(self) -> None:
        """Close the file and release the lock (idempotent)."""
        self.file.close()

    def commit(
        self,
        records: Sequence[Record],
        dead: Sequence[DeadLetter],
        stamped: Sequence[Stamped] = (),
        acked: Sequence[int] = (),
        *,
        forget_unacked: bool = False,
    ) -> CommitResult:
        """A group commit (:meth:`IntakeWriter.commit`) that dead letters can never refuse.

        On a full disk the oldest dead letters are pruned and the commit is tried once more;
        dead letters beyond their budget are pruned after it.

        Raises:
            SpoolFull: ``spool.max_bytes`` is reached by other data, or the disk is full even
                without dead letters; nothing was written.
            SpoolError: any other write failure (the caller must not acknowledge after it).
        """
        writer = self.writer
        try:
            result = writer.commit(records, dead, stamped, acked, forget_unacked=forget_unacked)
        except SpoolFull:
            if not self.dead_letters.prune_for_disk():
                raise
            result = writer.commit(records, dead, stamped, acked, forget_unacked=forget_unacked)
        if dead:
            try:
                self.dead_letters.keep_within_budget()
            except SpoolError as exc:  # the commit stands; a broken file fails the next one
                log.error("could not prune dead letters after a commit: %s", exc)
        return result
