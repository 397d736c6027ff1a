"""Logging setup (plain text or JSON lines), a throttle so a repeating error logs once per
interval with a count, and the duration format of log lines.

Context travels with a record as the standard library's ``extra``: ``log.warning("…", topic,
extra={"topic": topic})``. The text format ignores it (the message says it in words); the JSON
format adds every such key as a field, so a collector can filter on ``topic``, ``rule``,
``reason``, ``device`` or ``status`` without parsing the message."""

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
# What every LogRecord carries by itself; anything else on a record came in through ``extra``.
_RECORD_KEYS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
# The JSON line's own keys: an ``extra`` of the same name must not overwrite them.
_OWN_KEYS = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors (Loki, Elasticsearch, CloudWatch):
    ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``msg``, ``exc`` with
    the traceback when there is one, then the record's ``extra`` keys as fields. A message is
    one line, whatever it contains."""

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
        for key, value in vars(record).items():
            if key not in _RECORD_KEYS and key not in _OWN_KEYS and not key.startswith("_"):
                out[key] = value
        # default=str: a field of a type orjson does not know (a Path) is written as text
        # rather than losing the whole line.
        return orjson.dumps(out, default=str).decode()


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

    def log(
        self,
        logger: logging.Logger,
        level: int,
        key: str,
        msg: str,
        *args: object,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
        """Log now if the key's interval has passed; return whether a line was written.
        ``extra``: fields for the JSON format (with ``repeated`` added when lines were held
        back)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        repeated = self._suppressed.pop(key, 0)
        self._last[key] = now
        fields = dict(extra or {})
        if repeated:
            fields["repeated"] = repeated
            msg += " (repeated %d times since last report)"
            args = (*args, repeated)
        logger.log(level, msg, *args, extra=fields or None)
        return True


def duration(seconds: float) -> str:
    """A duration as a person reads it in a log line: ``0.4s``, ``12s``, ``60s``, ``2m13s``,
    ``3h05m``, ``2d04h``."""
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    s = int(seconds)
    if s < 100:  # "60s" and "90s" read better than "1m00s" and "1m30s"
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
