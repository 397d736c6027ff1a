"""The garbage collector's settings for a long-running bridge (bridge/heap.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bridge import heap


class _Node:
    """A container that can sit in a reference cycle and be watched by a weak reference."""

    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def restored() -> Iterator[None]:
    """The test process's collector as it was before: nothing frozen, its own thresholds."""
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_settle_freezes_start_up_and_raises_the_young_threshold(restored: None) -> None:
    """After settle() the objects alive at start-up are frozen (a full collection no longer
    walks them) and the young generation is collected every YOUNG_THRESHOLD allocations; the
    older generations keep their thresholds."""
    _young, *older = gc.get_threshold()
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, *older)


def test_settle_collects_start_up_garbage_before_freezing(restored: None) -> None:
    """A reference cycle that start-up left behind is collected, not frozen for good."""
    gone = _cycle()
    heap.settle()
    assert gone() is None


def test_refreeze_collects_cycles_that_were_frozen(restored: None) -> None:
    """Rules replaced by a reload were frozen with the rest at start-up; after refreeze()
    their reference cycles are collected, and what is alive is frozen again."""
    heap.settle()
    frozen = _Node()
    frozen.other = frozen  # a cycle, alive while `frozen` refers to it
    watch = weakref.ref(frozen)
    gc.freeze()  # frozen with the start-up objects, as the running rules are
    del frozen
    gc.collect()
    assert watch() is not None  # a frozen cycle is never collected...
    heap.refreeze()
    assert watch() is None  # ...until the reload lets the collector see it
    assert gc.get_freeze_count() > 0


def test_refreeze_does_nothing_where_settle_never_ran(restored: None) -> None:
    """Tests and tools that never settle() the heap are not frozen by a reload."""
    gc.unfreeze()
    heap.refreeze()
    assert gc.get_freeze_count() == 0
