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


def rule_warnings(rules: Sequence[Rule], lines: Sequence[int | None] = ()) -> list[RuleWarning]:
    """Warnings about rule order, in rule order; ``lines[i]`` is rule i's ``topic`` line.

    A rule is reported as shadowed by the first earlier rule that covers it (and nothing else is
    said about it); otherwise each earlier rule it overlaps without either covering the other is
    reported. An earlier, narrower rule inside a later, broader one is the intended
    specific-before-general order and is not reported, and neither is an earlier rule with
    ``continue: true`` (its topics go on to later rules). Shadowing by the union of several
    earlier filters (``a/#`` after both ``a`` and ``a/+/#``) is not detected.
    """
    out: list[RuleWarning] = []
    for j, rule in enumerate(rules):
        line = lines[j] if j < len(lines) else None
        found: list[RuleWarning] = []
        for i, earlier in enumerate(rules[:j]):
            if earlier.keep_going and not earlier.ignore:
                continue  # "continue: true": its topics go on to later rules as well
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
