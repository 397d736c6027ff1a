"""Writing the API's verdicts into the spool.

Accepted records are settled in shared transactions: one commit for every request that
completed meanwhile, instead of one per request. A settlement never waits for more records to
share it: a record accepted and not yet settled is sent again after a crash, so that window
stays as short as the spool allows (the spool deletes settled records later, in bulk:
:mod:`bridge.spool.settler`).

Refusals move records to the dead letters. Both free space, so after each one the commit loop
may try again (``on_freed``). On a full disk a write that frees space is retried (a delete in
smaller parts, down to one record); the records stay handed out meanwhile: neither re-sent
nor lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from bridge.errors import SpoolFull
from bridge.logs import LogThrottle
from bridge.models import SpooledRecord
from bridge.spool.facade import AsyncSpool

log = logging.getLogger(__name__)


class Settlement:
    """Settles the delivery loop's batches in the spool (see the module docstring)."""

    def __init__(
        self,
        spool: AsyncSpool,
        throttle: LogThrottle,
        *,
        on_freed: Callable[[], None] | None = None,
    ) -> None:
        self._spool = spool
        self._throttle = throttle
        self._on_freed = on_freed or (lambda: None)
        # Records accepted by the API, waiting for the spool delete. Kept whole: the audit of
        # what was accepted reads their values from here rather than from the file again.
        self._done: list[SpooledRecord] = []
        self._done_ready = asyncio.Event()
        self._deleting = False

    @property
    def idle(self) -> bool:
        """No accepted record waits for its delete."""
        return not self._done and not self._deleting

    def accepted(self, records: Sequence[SpooledRecord]) -> None:
        """The API accepted these records: delete them with the next shared transaction."""
        self._done.extend(records)
        self._done_ready.set()

    async def delete_loop(self) -> None:
        """Delete accepted records until cancelled."""
        while True:
            while not self._done:
                self._done_ready.clear()
                await self._done_ready.wait()
            records, self._done = self._done, []
            self._deleting = True
            try:
                # On a full disk a smaller transaction may still fit: split down to one record.
                size = len(records)
                while records:
                    if not await self.settle(self._deleter(records[:size])):
                        size = max(1, size // 4)
                        continue
                    records = records[size:]
            finally:
                self._deleting = False

    def _deleter(self, records: list[SpooledRecord]) -> Callable[[], Awaitable[None]]:
        return lambda: self._spool.delivered(records)

    async def settle(self, write: Callable[[], Awaitable[None]], *, retry: bool = False) -> bool:
        """Run a spool write that frees space (a delete, a move to the dead letters); False if
        the disk is full even after the spool gave its reserve back, unless ``retry``: then it
        tries every second until it succeeds."""
        while True:
            try:
                await write()
            except SpoolFull as exc:
                self._throttle.log(
                    log,
                    logging.ERROR,
                    "settle-full",
                    "disk full: cannot record delivered points in the spool (%s); retrying "
                    "every second — free disk space",
                    exc,
                )
                await asyncio.sleep(1.0)
                if retry:
                    continue
                return False
            self._on_freed()
            return True
