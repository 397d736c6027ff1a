"""The spool as the event loop sees it: named async methods, each run on the spool's own
thread, so neither fsync nor a large query ever stalls the loop.

One worker thread, because the spool's connection and counters belong to one thread. The
counters (points waiting, bytes used …) are plain integers that the spool thread keeps current;
reading them from the loop needs no round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from bridge.batcher import Batch
from bridge.models import CommitResult, DeadLetter, Record, SpooledRecord
from bridge.sparkplug.aliases import AliasRow
from bridge.sparkplug.parking import Parked, SparkplugChanges
from bridge.spool.audit import AuditRow
from bridge.spool.dlbudget import Pruned
from bridge.spool.fairshare import FairStatus
from bridge.spool.file import SpoolFile
from bridge.spool.store import Spool
from bridge.spool.writes import Stamped

_T = TypeVar("_T")


class AsyncSpool:
    """An open :class:`Spool`, for coroutines: ``async with AsyncSpool(spool) as s: ...``."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self.file: SpoolFile = spool.file  # counters, for metrics and readiness
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-spool")

    async def __aenter__(self) -> AsyncSpool:
        await self._run(self._spool.open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._run(self._spool.close)
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    # -- intake ----------------------------------------------------------------------------

    async def commit(
        self,
        records: Sequence[Record],
        dead: Sequence[DeadLetter],
        stamped: Sequence[Stamped],
        acked: Sequence[tuple[int, int]],
        *,
        forget_unacked: bool,
        sparkplug: Sequence[SparkplugChanges] = (),
    ) -> CommitResult:
        """One group commit (see :meth:`Spool.commit`)."""
        spool = self._spool
        return await self._run(
            lambda: spool.commit(
                records, dead, stamped, acked, forget_unacked=forget_unacked, sparkplug=sparkplug
            )
        )

    async def load_aliases(self) -> list[AliasRow]:
        """The Sparkplug alias tables committed with their BIRTH messages."""
        return await self._run(self._spool.writer.load_aliases)

    async def load_parked(self) -> list[Parked]:
        """The Sparkplug messages parked until their BIRTH."""
        return await self._run(self._spool.writer.load_parked)

    async def load_unacked(self) -> dict[int, tuple[str, bytes, int]]:
        """Receive times a crashed run committed before its PUBACKs."""
        return await self._run(self._spool.writer.load_unacked)

    async def flush_coalesced(self, now_us: int, grace_us: int) -> int:
        """Close the coalescing windows that ended; returns the points added."""
        spool = self._spool
        return await self._run(
            lambda: spool.making_room(lambda: spool.coalescer.flush(now_us, grace_us))
        )

    async def prune_deadbands(self, now_us: int) -> int:
        """Forget the last sent values kept past their time; returns how many."""
        return await self._run(lambda: self._spool.deadbands.prune_stale(now_us))

    async def prune_audit(self, now_us: int) -> tuple[int, int]:
        """About once a minute: sweep the settled records into the audit, drop audit rows past
        their retention and evict delivered devices over the cap; returns (audit rows,
        devices) deleted ((0, 0) when not due)."""
        spool = self._spool
        audit = spool.audit
        if not audit.prune_due(now_us / 1_000_000):
            return (0, 0)

        def prune() -> tuple[int, int]:
            spool.sweep_settled()
            return audit.prune(now_us)

        return await self._run(prune)

    async def audit_pick(self, since_us: int, until_us: int, r: float) -> AuditRow | None:
        """One random audited minute of one series (see :meth:`DeliveryAudit.pick`), the
        settled records swept into the audit first."""
        spool = self._spool

        def pick() -> AuditRow | None:
            spool.sweep_settled()
            return spool.audit.pick(since_us, until_us, r)

        return await self._run(pick)

    async def keep_dead_letters(self) -> Pruned:
        """Prune dead letters beyond their budget; returns every prune since the last call
        (those made for a commit too)."""
        dead_letters = self._spool.dead_letters

        def keep() -> Pruned:
            if not self.file.dead_letters.exact:
                dead_letters.refresh()
            dead_letters.keep_within_budget()
            return dead_letters.take_pruned()

        return await self._run(keep)

    async def release_held(self) -> int:
        """Move held points back for delivery as far as there is room; returns the points."""
        return await self._run(self._spool.fair.release)

    async def fair_status(self) -> FairStatus:
        """What the fair share is doing (see :meth:`FairShare.status`)."""
        return await self._run(self._spool.fair.status)

    async def top_devices(self, limit: int) -> dict[str, object]:
        """The heaviest talkers (see :meth:`FairShare.top`)."""
        fair = self._spool.fair
        return await self._run(lambda: fair.top(limit))

    async def external_changes(self) -> int:
        """Points another process (``dead-letters requeue``) added since the last call."""
        return await self._run(self.file.external_changes)

    async def meta_get(self, key: str) -> str | None:
        """A small persistent value."""
        return await self._run(lambda: self.file.meta_get(key))

    async def meta_set(self, key: str, value: str) -> None:
        """Write a small persistent value."""
        await self._run(lambda: self.file.meta_set(key, value))

    # -- delivery --------------------------------------------------------------------------

    async def take_batches(
        self, count: int, max_points: int, *, single_object: bool, newest_first: bool
    ) -> list[Batch]:
        """Up to ``count`` batches, handed out (see :meth:`Outbox.take_batches`)."""
        outbox = self._spool.outbox
        return await self._run(
            lambda: outbox.take_batches(
                count, max_points, single_object=single_object, newest_first=newest_first
            )
        )

    async def delivered(self, records: Sequence[SpooledRecord]) -> None:
        """The API accepted these records (as handed out): count them as delivered."""
        spool = self._spool
        seqs = [r.seq for r in records]
        points = [len(r.metrics) for r in records]
        await self._run(lambda: spool.making_room(lambda: spool.outbox.delivered(seqs, points)))

    async def reject(self, seqs: Sequence[int], reason: str, detail: str) -> None:
        """The API refused these records for good: move them to the dead letters."""
        spool = self._spool
        await self._run(
            lambda: spool.making_room(lambda: spool.outbox.reject(seqs, reason, detail))
        )

    async def settle_partly(
        self, seq: int, refused: dict[str, float], reason: str, detail: str
    ) -> None:
        """The API took some metrics of a record and refused ``refused``."""
        spool = self._spool
        await self._run(
            lambda: spool.making_room(
                lambda: spool.outbox.settle_partly(seq, refused, reason, detail)
            )
        )
