"""Rule-order warnings for ``check``: rules that can never match, and rules whose filters
overlap. Pure functions over compiled rules.

``check`` warns about rules that can never match (an earlier filter matches every topic theirs
can) and about rules whose filters overlap (topics in the overlap go to the earlier rule).
:func:`mismatch` says why one topic misses a filter, for ``explain``.

Filter containment follows the MQTT matching rules exactly, as :meth:`TopicFilter.match` does:
``+`` and ``{name}`` match any one level, including an empty one; ``a/#`` also matches ``a``
itself; and a filter whose first level is a wildcard never matches a topic starting with ``$``.
Regex levels (``{name:REGEX}``) are judged conservatively, so that a warning is never wrong: a
regex level covers only a literal it matches or the same regex, and an overlap between regex
levels is reported only when one of a few sample levels fits both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bridge.config.yamlfile import load_yaml_file
from bridge.mapping.mapper import Rule
from bridge.mapping.topics import TopicFilter

# Levels an example topic tries where both filters accept any level (regexes permitting).
_SAMPLES = ("x", "0", "1", "a", "A", "x1", "-", "_", "")


def _first_is_wildcard(filt: TopicFilter) -> bool:
    return filt.levels[0] is None if filt.levels else filt.tail


def _starts_with_dollar(filt: TopicFilter) -> bool:
    first = filt.levels[0] if filt.levels else None
    return first is not None and first.startswith("$")


def _min_levels(filt: TopicFilter) -> int:
    # A topic has at least one level, so "#" (no levels before the tail) needs one too.
    return max(len(filt.levels), 1) if filt.tail else len(filt.levels)


def _pattern(filt: TopicFilter, i: int) -> re.Pattern[str] | None:
    return filt.patterns[i] if i < len(filt.patterns) else None


def _fits(level: str, *patterns: re.Pattern[str] | None) -> bool:
    return all(p is None or p.fullmatch(level) for p in patterns)


def covers(a: TopicFilter, b: TopicFilter) -> bool:
    """True when every topic matching ``b`` also matches ``a`` (see the module docstring)."""
    na, nb = len(a.levels), len(b.levels)
    if a.tail:
        if _min_levels(b) < na:
            return False
    elif b.tail or nb != na:
        return False
    # [MQTT-4.7.2-1]: b's '$' topics (b's first level is a literal '$...') escape a's wildcard.
    if _first_is_wildcard(a) and _starts_with_dollar(b):
        return False
    for i, want in enumerate(a.levels):
        # Levels of b past its own length (under its '#') are unconstrained.
        got = b.levels[i] if i < nb else None
        if want is not None:
            if got != want:
                return False
            continue
        pattern = _pattern(a, i)
        if pattern is None:
            continue
        if got is not None:
            if not pattern.fullmatch(got):
                return False
            continue
        other = _pattern(b, i) if i < nb else None
        if other is None or (other.pattern, other.flags) != (pattern.pattern, pattern.flags):
            return False
    return True


def example_topic(a: TopicFilter, b: TopicFilter) -> str | None:
    """A topic matching both filters, or None when there is none (or none is found for regex
    levels)."""
    na, nb = len(a.levels), len(b.levels)
    if not a.tail and not b.tail:
        if na != nb:
            return None
        length = na
    elif not a.tail:
        if na < _min_levels(b):
            return None
        length = na
    elif not b.tail:
        if nb < _min_levels(a):
            return None
        length = nb
    else:
        length = max(na, nb, 1)
    parts: list[str] = []
    for i in range(length):
        x = a.levels[i] if i < na else None
        y = b.levels[i] if i < nb else None
        if x is not None and y is not None and x != y:
            return None
        literal = x if x is not None else y
        candidates = (literal,) if literal is not None else _SAMPLES
        pa = _pattern(a, i) if i < na else None
        pb = _pattern(b, i) if i < nb else None
        level = next((c for c in candidates if _fits(c, pa, pb)), None)
        if level is None:
            return None
        parts.append(level)
    if parts[0].startswith("$") and (_first_is_wildcard(a) or _first_is_wildcard(b)):
        return None
    return "/".join(parts)


def mismatch(filt: TopicFilter, levels: Sequence[str]) -> str | None:
    """Why a topic (split on ``/``) does not match ``filt``, in a few words; None if it does."""
    n, got = len(filt.levels), len(levels)
    if filt.tail and got < n:
        return f"topic has {_levels(got)}, filter needs at least {n}"
    if not filt.tail and got != n:
        return f"topic has {_levels(got)}, filter {n}"
    if levels[0].startswith("$") and _first_is_wildcard(filt):
        return "topic starts with '$', which a wildcard first level never matches"
    for i, want in enumerate(filt.levels):
        if want is not None and levels[i] != want:
            return f"level {i + 1} {levels[i]!r} ≠ {want!r}"
        pattern = _pattern(filt, i)
        if pattern is not None and not pattern.fullmatch(levels[i]):
            return f"level {i + 1} {levels[i]!r} does not match /{pattern.pattern}/"
    return None


def _levels(n: int) -> str:
    return f"{n} level" if n == 1 else f"{n} levels"


# --- check: rule-order warnings ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleWarning:
    """A rule that the first-match order makes unreachable or partly unreachable.

    Attributes:
        kind: ``shadowed`` (the rule never matches) or ``overlap`` (some of its topics go to
            an earlier rule).
        index: position of the rule in the file (0-based, as in ``rules[i]``).
        rule: its name.
        other_index: position of the earlier rule that takes the topics.
        other_rule: that rule's name.
        example: a topic both rules match, which goes to the earlier one (None when none was
            constructed: a shadowing regex level).
        message: the explanation, without file, line or rule.
        line: line of the rule's ``topic`` key, when known.
    """

    kind: Literal["shadowed", "overlap"]
    index: int
    rule: str
    other_index: int
    other_rule: str
    example: str | None
    message: str
    line: int | None = None


@dataclass(slots=True)
class OverlapWork:
    """What :func:`rule_warnings` did, for the benchmark and the tests of its cost.

    Attributes:
        nodes: trie nodes visited while looking for the earlier rules a rule may meet.
        pairs: (earlier rule, rule) pairs compared in full (``covers``, ``example_topic``).
    """

    nodes: int = 0
    pairs: int = 0


class _Node:
    """A level of :class:`_EarlierFilters`' trie."""

    __slots__ = ("children", "ends", "plus", "tails")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.plus: _Node | None = None
        self.ends: list[int] = []  # filters that end exactly here
        self.tails: list[int] = []  # filters ending in '#' here


class _EarlierFilters:
    """The filters of the rules seen so far, in a trie of levels, so that a rule is compared
    only with the earlier rules whose filters it could share a topic with, instead of with
    every earlier rule (which made ``check`` quadratic in the number of rules).

    :meth:`meeting` over-approximates on purpose: it matches levels as if every wildcard level
    had no regex and ignores the ``$`` rule; :func:`covers` and :func:`example_topic` then judge
    each candidate exactly, as they judged every pair before.
    """

    def __init__(self, work: OverlapWork) -> None:
        self._root = _Node()
        self._work = work

    def add(self, index: int, filt: TopicFilter) -> None:
        node = self._root
        for level in filt.levels:
            if level is None:
                if node.plus is None:
                    node.plus = _Node()
                node = node.plus
            else:
                node = node.children.setdefault(level, _Node())
        (node.tails if filt.tail else node.ends).append(index)

    def meeting(self, filt: TopicFilter) -> list[int]:
        """Indexes of the stored filters that may match a topic ``filt`` matches: at each level
        both are the same literal or one is a wildcard, and their lengths can agree."""
        levels, tail = filt.levels, filt.tail
        n = len(levels)
        out: list[int] = []
        stack = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            self._work.nodes += 1
            # A stored 'x/#' (depth levels, then any tail) needs a topic of max(depth, 1) levels.
            if node.tails and (tail or n >= max(depth, 1)):
                out.extend(node.tails)
            if node.ends and (n == depth if not tail else depth >= max(n, 1)):
                out.extend(node.ends)
            if depth < n:
                want = levels[depth]
                if want is None:
                    stack.extend((child, depth + 1) for child in node.children.values())
                else:
                    child = node.children.get(want)
                    if child is not None:
                        stack.append((child, depth + 1))
            elif tail:  # past the query's levels, its '#' meets every deeper level
                stack.extend((child, depth + 1) for child in node.children.values())
            else:
                continue
            if node.plus is not None:
                stack.append((node.plus, depth + 1))
        return out


def rule_warnings(
    rules: Sequence[Rule], lines: Sequence[int | None] = (), work: OverlapWork | None = None
) -> list[RuleWarning]:
    """Warnings about rule order, in rule order; ``lines[i]`` is rule i's ``topic`` line.

    A rule is reported as shadowed by the first earlier rule that covers it (and nothing else is
    said about it); otherwise each earlier rule it overlaps without either covering the other is
    reported. An earlier, narrower rule inside a later, broader one is the intended
    specific-before-general order and is not reported, and neither is an earlier rule with
    ``continue: true`` (its topics go on to later rules). Shadowing by the union of several
    earlier filters (``a/#`` after both ``a`` and ``a/+/#``) is not detected.

    Each rule is compared only with the earlier rules a trie of their filters finds it may
    meet, so a file of many distinct rules is checked in about linear time; ``work`` (if given)
    counts what was done.
    """
    work = work if work is not None else OverlapWork()
    earlier_filters = _EarlierFilters(work)
    out: list[RuleWarning] = []
    for j, rule in enumerate(rules):
        line = lines[j] if j < len(lines) else None
        found: list[RuleWarning] = []
        for i in sorted(earlier_filters.meeting(rule.topic)):
            work.pairs += 1
            earlier = rules[i]
            a, b = earlier.topic, rule.topic
            example = example_topic(a, b)
            if covers(a, b):
                message = (
                    f"never matches: rules[{i}] ({earlier.name}) {a.text!r} comes first and "
                    f"matches every topic {b.text!r} matches; move this rule above it or remove it"
                )
                found = [
                    RuleWarning("shadowed", j, rule.name, i, earlier.name, example, message, line)
                ]
                break
            if example is not None and not covers(b, a):
                fate = "are ignored by it" if earlier.ignore else f"go to {earlier.name} only"
                message = (
                    f"overlaps rules[{i}] ({earlier.name}) {a.text!r}: topics matching both, "
                    f"e.g. {example!r}, {fate}"
                )
                found.append(
                    RuleWarning("overlap", j, rule.name, i, earlier.name, example, message, line)
                )
        out.extend(found)
        if not (rule.keep_going and not rule.ignore):  # "continue: true": never takes topics
            earlier_filters.add(j, rule.topic)
    return out


def topic_lines(path: Path) -> list[int | None]:
    """Line of each rule's ``topic`` key in a mapping file, in file order.

    Meant for a file :func:`bridge.mapping.loader.load_mappings` has accepted: it compiles every
    rule or raises, so index i here is index i of the compiled rules.
    """
    data, index = load_yaml_file(path)
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        return []
    return [index.line_of(("rules", i, "topic")) for i in range(len(rules))]


def format_warning(warning: RuleWarning, file: str) -> str:
    """``warning: FILE:LINE: rules[i] (name): message``."""
    where = file if warning.line is None else f"{file}:{warning.line}"
    return f"warning: {where}: rules[{warning.index}] ({warning.rule}): {warning.message}"
