"""Logging setup (plain text or JSON lines) and a throttle so a repeating error logs once per
interval, with a count."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors (Loki, Elasticsearch, CloudWatch):
    ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``msg``, and ``exc`` with
    the traceback when there is one. A message is one line, whatever it contains."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out).decode()


def setup_logging(level: str, fmt: LogFormat = "text") -> None:
    """Logs to stderr, as text or as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def requested_format(environ: Mapping[str, str] | None = None) -> LogFormat:
    """The log format asked for in the environment, for messages written before the settings
    are loaded (a configuration error): ``METRIQO_BRIDGE_LOG_FORMAT``, then ``LOG_FORMAT``."""
    env = os.environ if environ is None else environ
    value = env.get("METRIQO_BRIDGE_LOG_FORMAT") or env.get("LOG_FORMAT") or "text"
    return "json" if value.strip().lower() == "json" else "text"


def json_line(level: str, msg: str, **fields: object) -> str:
    """One JSON log line in the shape of :class:`JsonFormatter`, with extra fields."""
    out: dict[str, object] = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": "bridge.cli.main",
        "msg": msg,
        **fields,
    }
    return orjson.dumps(out).decode()


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
