"""How long a link was down: from its first failure to the next success.

The API delivery and the broker link each keep one :class:`Outage`. It only measures; the
caller says whether the failure was announced in the log, so a recovery is logged exactly when
the operator saw the failure — the last line of an outage that ended is never "will retry".
Pure: time is an argument (a clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ended:
    """An outage that is over.

    Attributes:
        down_s: seconds from its first failure to the success that ended it.
        failures: failed attempts (requests, connections) it counted.
        announced: whether any of its failures was logged.
        kind: what the first failure was (``failing``, ``paused``, ``disconnected``).
    """

    down_s: float
    failures: int
    announced: bool
    kind: str


class Outage:
    """One link's current outage, if any."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None
        self._failures = 0
        self._announced = False
        self._kind = ""

    @property
    def down(self) -> bool:
        """True from the first failure until :meth:`recovered`."""
        return self._since is not None

    def failed(self, *, announced: bool, kind: str = "failing") -> None:
        """One more failure; ``announced``: it was logged (not held back by a throttle). The
        kind of a pause (401/403/404) wins over plain failures: its ending says why."""
        if self._since is None:
            self._since = self._clock()
            self._kind = kind
        elif kind == "paused":
            self._kind = kind
        self._failures += 1
        self._announced = self._announced or announced

    def recovered(self) -> Ended | None:
        """A success: the outage that it ends, or None if there was none."""
        if self._since is None:
            return None
        ended = Ended(
            max(0.0, self._clock() - self._since), self._failures, self._announced, self._kind
        )
        self._since, self._failures, self._announced, self._kind = None, 0, False, ""
        return ended
