"""MQTT topic filters with named captures, matched exactly as the MQTT specification says.

A rule's filter is a list of levels: a literal, ``+`` (any one level), ``#`` (any tail, last level
only), ``{name}`` (any one level, captured under ``name``), ``{name:REGEX}`` (one level that fully
matches REGEX, captured; ``{_:REGEX}`` only checks) or ``{name#}`` (the rest of the topic, last
level only, captured with its slashes). The broker subscription is the same filter with every
capture turned into ``+`` (or ``#`` for a tail capture).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CAPTURE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(#|:(.+))?\}$", re.DOTALL)
_NO_CAPTURE = "_"
_WILDCARD_ONE = "+"
_WILDCARD_TAIL = "#"


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """A compiled topic filter.

    Attributes:
        text: the filter as written in the mapping file.
        levels: per level, a literal string, or None for a single-level wildcard.
        captures: per level, the capture name or None.
        tail: True when the filter ends in ``#`` or a tail capture.
        patterns: per level, a regex the level must fully match, or None (may be empty).
        tail_capture: name under which a ``{name#}`` tail is captured.
    """

    text: str
    levels: tuple[str | None, ...]
    captures: tuple[str | None, ...]
    tail: bool
    patterns: tuple[re.Pattern[str] | None, ...] = ()
    tail_capture: str | None = None

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
        names = tuple(c for c in self.captures if c is not None)
        return (*names, self.tail_capture) if self.tail_capture else names

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
        for i, pattern in enumerate(self.patterns):
            if pattern is not None and not pattern.fullmatch(levels[i]):
                return None
        if self.tail_capture is not None:
            captured[self.tail_capture] = "/".join(levels[n:])
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
    patterns: list[re.Pattern[str] | None] = []
    seen: set[str] = set()
    tail = False
    tail_capture: str | None = None
    for i, level in enumerate(raw):
        last = i == len(raw) - 1
        if level == _WILDCARD_TAIL:
            if not last:
                raise ValueError("'#' is only allowed as the last level")
            tail = True
            continue
        if level == _WILDCARD_ONE:
            levels.append(None)
            captures.append(None)
            patterns.append(None)
            continue
        capture = _parse_capture(level, last, seen)
        if capture is not None:
            name, pattern, is_tail = capture
            if is_tail:
                tail, tail_capture = True, name
                continue
            levels.append(None)
            captures.append(name)
            patterns.append(pattern)
            continue
        if any(ch in level for ch in "+#{}"):
            raise ValueError(
                f"level {level!r} mixes wildcard characters with text; "
                "use '+', '#', '{name}', '{name:regex}' or '{name#}' as a whole level"
            )
        levels.append(level)
        captures.append(None)
        patterns.append(None)
    return TopicFilter(
        text=text,
        levels=tuple(levels),
        captures=tuple(captures),
        tail=tail,
        patterns=tuple(patterns) if any(p is not None for p in patterns) else (),
        tail_capture=tail_capture,
    )


def _parse_capture(
    level: str, last: bool, seen: set[str]
) -> tuple[str | None, re.Pattern[str] | None, bool] | None:
    """(name or None for '_', pattern, is_tail) for a capture level; None for other levels."""
    m = _CAPTURE.match(level)
    if not m:
        return None
    name, kind, regex = m.group(1), m.group(2), m.group(3)
    if name in seen:
        raise ValueError(f"capture {{{name}}} appears twice")
    if name != _NO_CAPTURE:
        seen.add(name)
    captured = None if name == _NO_CAPTURE else name
    if kind == "#":
        if not last:
            raise ValueError(f"tail capture {{{name}#}} is only allowed as the last level")
        return captured, None, True
    pattern = None
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise ValueError(f"bad pattern in {level!r}: {exc}") from None
    return captured, pattern, False


class _Node:
    """A level of the filter trie."""

    __slots__ = ("children", "ends", "plus", "tails")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.plus: _Node | None = None
        self.ends: list[int] = []  # filters that end exactly here
        self.tails: list[int] = []  # filters ending in '#' here: this level and everything below


class TopicRouter:
    """Finds the filters matching a topic, in rule order.

    A trie over the filters' levels narrows the candidates (a message costs about the same with
    1,000 rules as with 10); each candidate then checks its captures, patterns and the '$' rule.
    Plants publish a bounded set of topics at high rate, so results are also cached, with the
    cache cleared when it reaches its cap so memory stays bounded.
    """

    def __init__(self, filters: list[TopicFilter], cache_size: int = 65536) -> None:
        self._filters = filters
        self._root = _Node()
        for index, filt in enumerate(filters):
            node = self._root
            for level in filt.levels:
                if level is None:
                    if node.plus is None:
                        node.plus = _Node()
                    node = node.plus
                else:
                    node = node.children.setdefault(level, _Node())
            (node.tails if filt.tail else node.ends).append(index)
        self._cache: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self._cache_size = cache_size

    def route(self, topic: str) -> tuple[int, dict[str, str]] | None:
        """Return (index of the first matching filter, captures) or None."""
        found = self.route_all(topic)
        return found[0] if found else None

    def route_all(self, topic: str) -> list[tuple[int, dict[str, str]]]:
        """Every matching filter in order, as (index, captures); cached per topic."""
        try:
            return self._cache[topic]
        except KeyError:
            pass
        levels = topic.split("/")
        found: list[tuple[int, dict[str, str]]] = []
        for index in sorted(self._candidates(levels)):
            captured = self._filters[index].match(levels)
            if captured is not None:
                found.append((index, captured))
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[topic] = found
        return found

    def _candidates(self, levels: list[str]) -> list[int]:
        out: list[int] = []
        stack = [(self._root, 0)]
        depth_max = len(levels)
        while stack:
            node, depth = stack.pop()
            out.extend(node.tails)
            if depth == depth_max:
                out.extend(node.ends)
                continue
            child = node.children.get(levels[depth])
            if child is not None:
                stack.append((child, depth + 1))
            if node.plus is not None:
                stack.append((node.plus, depth + 1))
        return out
