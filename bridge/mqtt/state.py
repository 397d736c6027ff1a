"""What the rest of the bridge may read about the broker connection."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SourceState:
    """The connection as the source last saw it; ``generation`` changes on each connection,
    so a message of an earlier one is never acknowledged on a later one."""

    connected: bool = False
    subscribed: bool = False
    generation: int = 0
    session_present: bool | None = None
    last_error: str = ""
