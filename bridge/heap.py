"""The interpreter's cyclic garbage collector, set for a long-running bridge.

A full collection traverses every container object the collector tracks. After start-up that
is about 64,000 objects (the modules, the settings, the compiled rules, the metrics), which live
as long as the process and are never garbage, so every full collection walks them for nothing
and holds the event loop meanwhile. And CPython collects its youngest generation after every
700 net allocations of containers, promoting whatever is still alive at that moment (records
waiting for their commit, requests in flight) to be walked again in the older generations.

Measured in a 100,000-message backlog drain (``bench backlog``): untuned, 685 young, 62 middle
and 5 full collections took 0.17 s of a 5.7 s drain (3 %), and each full collection paused the
event loop for about 21 ms. With start-up frozen and the young threshold at 20,000: 3
collections, 2.4 ms (docs/design/performance.md, round 9).

Freezing is not leaking: a frozen object is still freed the moment its last reference goes.
Only reference cycles among frozen objects are never collected, so a mapping reload, which
replaces the compiled rules, unfreezes, collects and freezes again (:func:`refreeze`).
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

# Net container allocations between two young collections (CPython's default: 700). A young
# collection walks only what was allocated since the last one, so a larger threshold walks the
# same short-lived objects once, later, and promotes fewer of them; the garbage cycles it lets
# wait are a few megabytes at most.
YOUNG_THRESHOLD = 20_000


def settle() -> None:
    """Once start-up is done: collect its garbage, freeze what is left (never walked again),
    and collect the young generation every :data:`YOUNG_THRESHOLD` allocations."""
    gc.collect()  # first, so that start-up's own garbage is not frozen with the rest
    gc.freeze()
    _young, *older = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, *older)
    log.debug("garbage collector: %d start-up objects frozen", gc.get_freeze_count())


def refreeze() -> None:
    """After the rules were replaced: let the collector see the frozen objects again, collect
    the old rules' reference cycles, and freeze what is left. One full collection (tens of
    milliseconds), once per reload. Nothing to do where :func:`settle` never ran (tests, tools):
    the collector then walks every object anyway."""
    if not gc.get_freeze_count():
        return
    started = time.perf_counter()
    gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    log.debug(
        "garbage collector: %d unreachable objects collected after a reload in %.1f ms",
        found,
        (time.perf_counter() - started) * 1000,
    )
