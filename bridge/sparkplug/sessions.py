"""Sequence and session awareness of Sparkplug B edge nodes: ``seq`` gaps, deaths, rebirths.

Every message of an edge node's session but its NDEATH carries ``seq``, 0 at the NBIRTH and one
more (modulo 256) for each message after it, the node's and its devices' alike. A number other
than the one expected means messages were lost between the node and the bridge (or arrived out
of order): a **gap**. The NBIRTH and the NDEATH (the node's MQTT Will) both carry the
session's ``bdSeq``: an NDEATH whose bdSeq is not the one of the node's last NBIRTH is the Will
of an earlier session, delivered late, and does not end the current one (a **stale death**).

Pure: :meth:`SessionTracker.observe` takes the facts of one message (:class:`Seen`) in receive
order and returns what it shows, as bounded event names for the caller to count. Not stored:
after a restart the first message of each node starts its tracking afresh (no gap can be told
from it), which counts a gap too few, never one too many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

EVENTS = ("seq_gap", "node_death", "stale_death", "device_death", "birth_after_death")
"""Every event :meth:`SessionTracker.observe` returns."""


class Seen(NamedTuple):
    """What session tracking needs of one message: its topic's parts, ``seq`` and (NBIRTH,
    NDEATH) ``bd_seq``."""

    group: str
    node: str
    device: str | None
    message_type: str
    seq: int | None
    bd_seq: int | None


@dataclass(slots=True)
class _Session:
    seq: int | None = None
    bd_seq: int | None = None
    dead: bool = False


class SessionTracker:
    """The current session of every edge node seen since the start."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[str, str], _Session] = {}

    def observe(self, seen: Seen) -> tuple[str, ...]:
        """Take in one message (in receive order); returns the events it shows."""
        key = (seen.group, seen.node)
        state = self._nodes.get(key)
        kind = seen.message_type
        if kind == "NBIRTH":
            events: tuple[str, ...] = ("birth_after_death",) if state and state.dead else ()
            self._nodes[key] = _Session(seen.seq, seen.bd_seq)
            return events
        if kind == "NDEATH":
            if state and None not in (state.bd_seq, seen.bd_seq) and state.bd_seq != seen.bd_seq:
                return ("stale_death",)
            self._nodes[key] = _Session(None, state.bd_seq if state else None, dead=True)
            return ("node_death",)
        if state is None:
            state = self._nodes[key] = _Session()
        events = ("device_death",) if kind == "DDEATH" else ()
        if seen.seq is not None:
            if state.seq is not None and seen.seq != (state.seq + 1) % 256:
                events = (*events, "seq_gap")
            state.seq = seen.seq
        return events
