"""Logging setup and a throttle so a repeating error logs once per interval, with a count."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable


def setup_logging(level: str) -> None:
    """Plain text logs to stderr."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


class LogThrottle:
    """Logs a message for a key at most once per ``interval`` seconds, saying how often it
    repeated in between, so an outage produces a few lines rather than one per message."""

    def __init__(self, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, *args: object) -> bool:
        """Log now if the key's interval has passed; return whether a line was written."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        repeated = self._suppressed.pop(key, 0)
        self._last[key] = now
        if repeated:
            logger.log(level, msg + " (repeated %d times since last report)", *args, repeated)
        else:
            logger.log(level, msg, *args)
        return True
