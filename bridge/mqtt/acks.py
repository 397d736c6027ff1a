"""Acknowledgements written and not yet known to be read, by packet id, in fixed memory.

A drain through mosquitto 2.0.11 can hold one entry per packet id in use (its PINGRESP comes
behind the whole flood, so a fence may take the drain to pass): a dict of int objects costs
about 6 MB at 65,535 entries, these arrays under 1 MB whatever the load, and they are
allocated once, so the heap does not grow and fragment with the backlog.
"""

from __future__ import annotations

from array import array

PACKET_IDS = 1 << 16  # MQTT packet ids are 16-bit (0 is never used for QoS > 0)
_EPOCH_LIMIT = (1 << 32) - 1


class AckLedger:
    """The newest key acknowledged per packet id, in the order each id was first acknowledged.

    A broker may reuse a packet id only once it has read our PUBACK for it, so a newer ack of
    the same id supersedes the older one; the ledger keeps the newest key. ``clear`` is O(1):
    an id counts as present only when its stamp equals the current epoch.
    """

    __slots__ = ("_epoch", "_keys", "_order", "_stamp")

    def __init__(self) -> None:
        self._keys = array("q", bytes(8 * PACKET_IDS))
        self._stamp = array("I", bytes(4 * PACKET_IDS))
        self._epoch = 1
        self._order = array("H")

    def add(self, mid: int, key: int) -> None:
        """Record the newest acknowledgement of ``mid``."""
        if self._stamp[mid] != self._epoch:
            self._stamp[mid] = self._epoch
            self._order.append(mid)
        self._keys[mid] = key

    def __len__(self) -> int:
        return len(self._order)

    def items(self) -> list[tuple[int, int]]:
        """(packet id, newest key), in the order the ids were first acknowledged."""
        keys = self._keys
        return [(mid, keys[mid]) for mid in self._order]

    def clear(self) -> None:
        """Forget every entry."""
        self._order = array("H")
        if self._epoch == _EPOCH_LIMIT:  # once in four billion clears: restart the stamps
            self._stamp = array("I", bytes(4 * PACKET_IDS))
            self._epoch = 0
        self._epoch += 1
