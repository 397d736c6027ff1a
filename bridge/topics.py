"""MQTT topic filters with named captures, matched exactly as the MQTT specification says.

A rule's filter is a list of levels: a literal, ``+`` (any one level), ``#`` (any tail, last level
only) or ``{name}`` (any one level, captured under ``name``). The broker subscription is the same
filter with every capture turned into ``+``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CAPTURE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_WILDCARD_ONE = "+"
_WILDCARD_TAIL = "#"


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """A compiled topic filter.

    Attributes:
        text: the filter as written in the mapping file.
        levels: per level, a literal string, or None for a single-level wildcard.
        captures: per level, the capture name or None.
        tail: True when the filter ends in ``#``.
    """

    text: str
    levels: tuple[str | None, ...]
    captures: tuple[str | None, ...]
    tail: bool

    @property
    def subscription(self) -> str:
        """The MQTT filter to subscribe with (captures become ``+``)."""
        parts = [_WILDCARD_ONE if lvl is None else lvl for lvl in self.levels]
        if self.tail:
            parts.append(_WILDCARD_TAIL)
        return "/".join(parts)

    @property
    def capture_names(self) -> tuple[str, ...]:
        """Names captured by this filter, in level order."""
        return tuple(c for c in self.captures if c is not None)

    def match(self, levels: list[str]) -> dict[str, str] | None:
        """Match a topic already split on ``/``; return its captures, or None."""
        n = len(self.levels)
        if len(levels) < n or (not self.tail and len(levels) != n):
            return None
        if levels[0].startswith("$") and (self.levels[0] is None if n else self.tail):
            # [MQTT-4.7.2-1]: wildcards at the first level never match topics starting with '$'.
            return None
        captured: dict[str, str] = {}
        for want, name, got in zip(self.levels, self.captures, levels, strict=False):
            if want is None:
                if name is not None:
                    captured[name] = got
            elif want != got:
                return None
        return captured


def parse_filter(text: str) -> TopicFilter:
    """Compile a filter; raise ValueError with a user-facing message when it is invalid."""
    if not text:
        raise ValueError("topic filter is empty")
    if "\x00" in text:
        raise ValueError("topic filter contains a NUL character")
    if len(text.encode()) > 65535:
        raise ValueError("topic filter is longer than 65535 bytes")
    raw = text.split("/")
    levels: list[str | None] = []
    captures: list[str | None] = []
    seen: set[str] = set()
    tail = False
    for i, level in enumerate(raw):
        if level == _WILDCARD_TAIL:
            if i != len(raw) - 1:
                raise ValueError("'#' is only allowed as the last level")
            tail = True
            continue
        if level == _WILDCARD_ONE:
            levels.append(None)
            captures.append(None)
            continue
        m = _CAPTURE.match(level)
        if m:
            name = m.group(1)
            if name in seen:
                raise ValueError(f"capture {{{name}}} appears twice")
            seen.add(name)
            levels.append(None)
            captures.append(name)
            continue
        if any(ch in level for ch in "+#{}"):
            raise ValueError(
                f"level {level!r} mixes wildcard characters with text; "
                "use '+', '#' or '{name}' as a whole level"
            )
        levels.append(level)
        captures.append(None)
    return TopicFilter(text=text, levels=tuple(levels), captures=tuple(captures), tail=tail)


class TopicRouter:
    """Finds the first filter matching a topic, with a bounded cache of recent topics.

    A plant has a bounded set of topics that repeat at high rate, so a dict lookup answers almost
    every message; the cache is cleared when it reaches its cap so memory stays bounded.
    """

    def __init__(self, filters: list[TopicFilter], cache_size: int = 65536) -> None:
        self._filters = filters
        self._cache: dict[str, tuple[int, dict[str, str]] | None] = {}
        self._cache_size = cache_size

    def route(self, topic: str) -> tuple[int, dict[str, str]] | None:
        """Return (index of the first matching filter, captures) or None."""
        try:
            return self._cache[topic]
        except KeyError:
            pass
        levels = topic.split("/")
        found: tuple[int, dict[str, str]] | None = None
        for index, filt in enumerate(self._filters):
            captured = filt.match(levels)
            if captured is not None:
                found = (index, captured)
                break
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[topic] = found
        return found
