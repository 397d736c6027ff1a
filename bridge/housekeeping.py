"""Once a second: close the coalescing windows that ended, keep the dead letters within their
budget (age pruning needs no new dead letter to run), release points the fair share held back
once there is room for them, and pick up points that a ``dead-letters requeue`` wrote into the
spool from another process, and forget the deadbands' last sent values of series that went
quiet (twice their heartbeat ago); about once a minute, prune the audit of accepted points
and cap the table of delivered devices (spool/audit.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from bridge.dead_letter_log import DeadLetterReporter
from bridge.errors import SpoolFull
from bridge.spool.facade import AsyncSpool

log = logging.getLogger(__name__)


async def housekeeping_loop(
    spool: AsyncSpool,
    notify: Callable[[int], None],
    dead_letters: DeadLetterReporter,
    *,
    grace_s: float,
    coalescing: bool,
    interval: float = 1.0,
) -> None:
    """Run until cancelled; ``notify`` tells delivery about points added to the spool."""
    grace_us = round(grace_s * 1_000_000)
    if not coalescing:
        # Still flush once: windows left open by an earlier run or a removed rule.
        notify(await spool.flush_coalesced(2**62, 0))
    while True:
        now_us = int(time.time() * 1_000_000)
        try:
            added = await spool.flush_coalesced(now_us, grace_us)
        except SpoolFull:
            added = 0  # the windows stay in the spool and close once there is room
        notify(added)
        if spool.file.held_records:
            with contextlib.suppress(SpoolFull):  # a full disk: they stay held until there's room
                notify(await spool.release_held())
        requeued = await spool.external_changes()
        if requeued > 0:
            log.info("%d requeued point(s) found in the spool; delivering them", requeued)
            notify(requeued)
        dead_letters.pruned(await spool.keep_dead_letters())
        with contextlib.suppress(SpoolFull):  # a full disk: the rows go on the next round
            await spool.prune_deadbands(now_us)
            _, evicted = await spool.prune_audit(now_us)
            if evicted:
                log.info(
                    "%d least recently delivered device(s) evicted from the spool's table of "
                    "delivered devices (spool.max_delivered_devices)",
                    evicted,
                )
        await asyncio.sleep(interval)
