"""Unit tests of the acknowledgement ledger (pure): the newest key per packet id, in the order
the ids were first acknowledged, cleared in one step, in memory that does not grow."""

from __future__ import annotations

import tracemalloc

import pytest

from bridge.mqtt import acks
from bridge.mqtt.acks import AckLedger


def test_a_reused_packet_id_keeps_its_newest_key_in_first_ack_order() -> None:
    ledger = AckLedger()
    for mid, key in [(5, 1), (9, 2), (5, 3), (65_535, 4), (9, 5)]:
        ledger.add(mid, key)
    assert len(ledger) == 3
    assert ledger.items() == [(5, 3), (9, 5), (65_535, 4)]


def test_clear_forgets_every_entry_and_the_ledger_is_reusable() -> None:
    ledger = AckLedger()
    ledger.add(1, 10)
    ledger.add(2, 20)
    ledger.clear()
    assert len(ledger) == 0
    assert ledger.items() == []
    ledger.add(2, 21)
    assert ledger.items() == [(2, 21)]


def test_clear_after_the_last_epoch_restarts_the_stamps(monkeypatch: pytest.MonkeyPatch) -> None:
    """An id stamped in the last epoch must not look present after the wrap."""
    monkeypatch.setattr(acks, "_EPOCH_LIMIT", 3)
    ledger = AckLedger()
    ledger.clear()
    ledger.clear()  # epoch 3, the limit
    ledger.add(7, 1)
    ledger.clear()  # wraps to epoch 1
    ledger.clear()
    ledger.clear()  # epoch 3 again: id 7's old stamp would match
    ledger.add(7, 2)
    assert ledger.items() == [(7, 2)]


def test_a_full_ledger_allocates_nothing_per_entry() -> None:
    """Every packet id in use while a fence is out costs no memory per message."""
    ledger = AckLedger()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for mid in range(1, 65_536):
            ledger.add(mid, 1_700_000_000_000_000 + mid)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(ledger) == 65_535
    assert held < 200_000, f"{held} bytes for 65,535 entries"  # the id order: 2 bytes each
