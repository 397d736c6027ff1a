"""Topics grouped into patterns: topic filters whose varying levels are named captures.

Topics are grouped by their first level, number of levels and payload kind (and, for JSON, the
numeric fields they carry, so a line's ``env`` and ``state`` objects stay apart); a level is
captured where the group's topics differ. Two patterns that could both match a topic would make
rule order decide, which ``check --strict`` refuses; so patterns of one JSON kind that meet are
merged, and other patterns that meet are split on a captured level (the one with fewest
values, preferring a level the other pattern fixes) until no two meet. Splitting ends at the
latest when every level is literal: each topic has one kind, so it is then in one pattern only.
A pattern that meets a recipe's filter is split the same way, or left to the recipe when the
recipe's filter takes all of its topics.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bridge.mapping.overlap import covers, example_topic
from bridge.mapping.topics import TopicFilter, parse_filter
from bridge.survey.kinds import Kind
from bridge.survey.topics import TopicStats

PLAIN_KINDS = ("number", "boolean", "text")
# A level with these characters cannot be written as literal filter or template text.
_UNSAFE = re.compile(r"[{}|$\\]|^\s|\s$")


@dataclass(slots=True)
class Pattern:
    """A group of topics of one kind and the filter that matches them.

    ``levels`` holds a literal per fixed level and None per captured one; ``names`` the
    capture name per level (None for literals).
    """

    kind: Kind
    topics: list[TopicStats]
    levels: tuple[str | None, ...] = ()
    names: tuple[str | None, ...] = ()
    recipe: str | None = None  # set when the pattern's topics are left to this recipe's rule

    def __post_init__(self) -> None:
        self.levels = _levels(self.topics)
        last = {t.topic.rsplit("/", 1)[-1] for t in self.topics}
        self.names = capture_names(self.levels, self.kind, last_values=last)

    @property
    def filter_text(self) -> str:
        """The mapping-file filter, e.g. ``plant/{site}/{device}/{metric}``."""
        return "/".join(
            lit if lit is not None else "{" + str(name) + "}"
            for lit, name in zip(self.levels, self.names, strict=True)
        )

    @property
    def topic_filter(self) -> TopicFilter:
        """The compiled filter."""
        return parse_filter(self.filter_text)

    @property
    def messages(self) -> int:
        """Messages of all its topics."""
        return sum(t.messages for t in self.topics)


def _levels(topics: Sequence[TopicStats]) -> tuple[str | None, ...]:
    split = [t.topic.split("/") for t in topics]
    out: list[str | None] = []
    for i, first in enumerate(split[0]):
        same = all(levels[i] == first for levels in split)
        out.append(first if same and not _UNSAFE.search(first) else None)
    return tuple(out)


def capture_names(
    levels: Sequence[str | None], kind: Kind, last_values: Iterable[str] = ()
) -> tuple[str | None, ...]:
    """Names for the captured levels: the last one of a plain payload is the ``metric`` when
    its values read as names (most have no digit: ``temp``, ``pressure``; ``s001`` is a device),
    the one before it the ``device``, and earlier ones ``site``, ``line``, then ``level<N>``."""
    captured = [i for i, lit in enumerate(levels) if lit is None]
    names: dict[int, str] = {}
    values = list(last_values)
    wordlike = sum(not any(c.isdigit() for c in v) for v in values) * 2 >= len(values)
    if kind in PLAIN_KINDS and captured and captured[-1] == len(levels) - 1 and wordlike:
        names[captured.pop()] = "metric"
    if captured:
        names[captured.pop()] = "device"
    early = ["site", "line"] if len(captured) <= 2 else []
    for n, i in enumerate(captured):
        names[i] = early[n] if n < len(early) else f"level{i + 1}"
    return tuple(names.get(i) for i in range(len(levels)))


def _meet(a: Pattern, b: Pattern) -> bool:
    return len(a.levels) == len(b.levels) and all(
        x is None or y is None or x == y for x, y in zip(a.levels, b.levels, strict=True)
    )


def _fixed_by(p: Pattern, other: Sequence[str | None]) -> list[int]:
    """Levels ``p`` captures and ``other`` fixes: splitting there parts ``p`` from ``other``."""
    return [i for i, lit in enumerate(p.levels) if lit is None and i < len(other) and other[i]]


def _split(p: Pattern, other: Sequence[str | None]) -> list[Pattern]:
    """``p`` split on one captured level (preferring one ``other`` fixes)."""
    captured = [i for i, lit in enumerate(p.levels) if lit is None]
    candidates = _fixed_by(p, other) or captured
    by_level: dict[int, dict[str, list[TopicStats]]] = {}
    for i in candidates:
        parts: dict[str, list[TopicStats]] = defaultdict(list)
        for t in p.topics:
            parts[t.topic.split("/")[i]].append(t)
        by_level[i] = parts
    usable = {i: parts for i, parts in by_level.items() if len(parts) > 1}
    if not usable:
        return [p]  # only unsafe levels vary: nothing to split on
    level = min(usable, key=lambda i: (len(usable[i]), i))
    return [Pattern(p.kind, topics) for topics in usable[level].values()]


def group_topics(
    topics: Iterable[TopicStats], recipe_filters: Sequence[tuple[str, TopicFilter]] = ()
) -> list[Pattern]:
    """Patterns covering ``topics``, no two of which meet (see the module docstring), most
    specific first. Patterns whose topics a recipe filter takes all have ``recipe`` set."""
    groups: dict[tuple[object, ...], list[TopicStats]] = defaultdict(list)
    for t in topics:
        levels = t.topic.split("/")
        shape = tuple(sorted(t.fields)) if t.kind == "json" else ()
        groups[(levels[0], len(levels), t.kind, shape)].append(t)
    patterns = [Pattern(key[2], members) for key, members in groups.items()]  # type: ignore[arg-type]
    patterns = _merge_json(patterns)
    patterns = _separate(patterns)
    patterns = _clear_of_recipes(patterns, recipe_filters)
    patterns.sort(key=lambda p: (-sum(x is not None for x in p.levels), p.filter_text))
    return patterns


def _merge_json(patterns: list[Pattern]) -> list[Pattern]:
    # JSON objects of different shapes under one filter map alike (collect takes what is
    # there), so meeting JSON patterns become one rule rather than many literal ones.
    done = False
    while not done:
        done = True
        for i, a in enumerate(patterns):
            partner = next(
                (b for b in patterns[i + 1 :] if b.kind == a.kind == "json" and _meet(a, b)), None
            )
            if partner is not None:
                patterns.remove(partner)
                patterns[i] = Pattern("json", a.topics + partner.topics)
                done = False
                break
    return patterns


def _separate(patterns: list[Pattern]) -> list[Pattern]:
    by_shape: dict[tuple[str | None, int], list[Pattern]] = defaultdict(list)
    for p in patterns:
        by_shape[(p.levels[0], len(p.levels))].append(p)
    out: list[Pattern] = []
    for group in by_shape.values():
        out.extend(_separate_group(group))
    return out


def _separate_group(work: list[Pattern]) -> list[Pattern]:
    done = False
    while not done:
        done = True
        for i, a in enumerate(work):
            b = next((b for b in work[i + 1 :] if _meet(a, b)), None)
            if b is None:
                continue
            # Split the pattern that captures a level the other fixes: its parts then meet the
            # other in one part at most, where a blind split would shatter both.
            fix_a = _fixed_by(a, b.levels) or not _fixed_by(b, a.levels)
            parts_a = _split(a, b.levels) if fix_a else [a]
            parts_b = _split(b, a.levels) if len(parts_a) == 1 else [b]
            if len(parts_a) == 1 and len(parts_b) == 1:
                continue  # neither can split (unsafe levels): left as is, check will say
            work = [p for p in work if p is not a and p is not b] + parts_a + parts_b
            done = False
            break
    return work


def _clear_of_recipes(
    patterns: list[Pattern], recipe_filters: Sequence[tuple[str, TopicFilter]]
) -> list[Pattern]:
    out: list[Pattern] = []
    work = list(patterns)
    while work:
        p = work.pop()
        f = p.topic_filter
        hit = next(
            ((name, r) for name, r in recipe_filters if example_topic(r, f) and not covers(f, r)),
            None,
        )
        if hit is None:
            out.append(p)
            continue
        name, r = hit
        if covers(r, f):
            p.recipe = name  # the recipe's rule comes first and takes every topic of p
            out.append(p)
            continue
        parts = _split(p, r.levels)
        if len(parts) == 1:
            out.append(p)  # cannot split further; check --strict will name the overlap
        else:
            work.extend(parts)
    return out
