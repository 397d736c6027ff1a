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
- :attr:`Spool.dead_letters` (:mod:`~bridge.spool.deadletters`): queries and requeue.

All of it is blocking and runs on one thread: the bridge reaches it through
:class:`~bridge.spool.facade.AsyncSpool`, tools and tests call it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bridge.settings import SpoolSettings
from bridge.spool.coalesce import Coalescer
from bridge.spool.deadletters import DeadLetters
from bridge.spool.fairshare import FairShare
from bridge.spool.file import SpoolFile
from bridge.spool.outbox import Outbox
from bridge.spool.writes import IntakeWriter


class Spool:
    """One spool file and its jobs (see the module docstring)."""

    def __init__(self, settings: SpoolSettings, clock: Callable[[], float] = time.time) -> None:
        self.file = SpoolFile(settings, clock)
        self.outbox = Outbox(self.file)
        self.fair = FairShare(self.file)
        self.writer = IntakeWriter(self.file, self.outbox, self.fair)
        self.coalescer = Coalescer(self.file)
        self.dead_letters = DeadLetters(self.file)

    def open(self) -> None:
        """Lock and open the file (see :meth:`SpoolFile.open`)."""
        self.file.open()

    def open_shared(self) -> None:
        """Open beside a running bridge, without the lock (see :meth:`SpoolFile.open_shared`)."""
        self.file.open_shared()

    def close(self) -> None:
        """Close the file and release the lock (idempotent)."""
        self.file.close()
