"""The bench's own process: its garbage collector while it measures."""

from __future__ import annotations

import gc
import weakref

import pytest

from bridge.lab.bench.workspace import collector_paused


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_collector_is_off_while_measuring_and_collects_once_after() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        cycle = weakref.ref(_Cycle())  # garbage only a collection frees
        # Enough containers to set off young collections many times over, were it on.
        allocated: list[list[int]] = [[] for _ in range(100_000)]
        del allocated
        assert cycle() is not None
    assert gc.isenabled()
    assert cycle() is None  # the collection at the end


def test_the_collector_comes_back_after_a_failed_measurement() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("the bridge did not start")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
