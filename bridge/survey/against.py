"""``discover --against FILE``: what an existing mapping file would do with the messages seen.

Every message (of a topic the survey keeps) is mapped with the file's rules as it arrives and
its outcome counted per topic: mapped, ignored, unmatched (no rule matches) or dead-lettered
(a rule matches but mapping fails, by reason). The counts are then summed per pattern.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge.mapping.mapper import Mapper
from bridge.survey.patterns import Pattern
from bridge.survey.topics import Survey

DETAIL_CHARS = 160


@dataclass(slots=True)
class TopicOutcomes:
    """Outcomes of one topic's messages; ``details`` holds the first detail per reason."""

    counts: Counter[str] = field(default_factory=Counter)
    details: dict[str, str] = field(default_factory=dict)
    rules: Counter[str] = field(default_factory=Counter)


class Against:
    """Maps what a survey sees with an existing mapping file and counts the outcomes."""

    def __init__(self, mapper: Mapper, survey: Survey) -> None:
        self._mapper = mapper
        self._survey = survey
        self.topics: dict[str, TopicOutcomes] = {}

    def observe(self, topic: str, payload: bytes, received_us: int) -> None:
        """Map one message (call after :meth:`Survey.observe`, so the topic cap is shared)."""
        if topic not in self._survey.topics:
            return
        mapped = self._mapper.map(topic, payload, received_us)
        out = self.topics.get(topic)
        if out is None:
            out = self.topics[topic] = TopicOutcomes()
        if mapped.rule is not None:
            out.rules[mapped.rule] += 1
        if mapped.ignored:
            out.counts["ignored"] += 1
        elif not mapped.failures:
            out.counts["mapped"] += 1
        else:
            first = mapped.failures[0]
            key = "unmatched" if first.reason == "unmatched" else f"dead_letter:{first.reason}"
            out.counts[key] += 1
            out.details.setdefault(key, first.detail[:DETAIL_CHARS])


@dataclass(frozen=True, slots=True)
class PatternGap:
    """What the mapping file does with one pattern's messages."""

    pattern: str
    topics: int
    example: str
    counts: dict[str, int]
    details: dict[str, str]
    rules: dict[str, int]

    @property
    def missed(self) -> int:
        """Messages no rule matches."""
        return self.counts.get("unmatched", 0)

    @property
    def dead_lettered(self) -> int:
        """Messages a rule matches but cannot map (wholly or in part)."""
        return sum(n for k, n in self.counts.items() if k.startswith("dead_letter:"))


def gaps(against: Against, patterns: Sequence[tuple[str, Sequence[str]]]) -> list[PatternGap]:
    """Per pattern (its filter text and topics), the summed outcomes, worst first."""
    out: list[PatternGap] = []
    for name, topics in patterns:
        counts: Counter[str] = Counter()
        rules: Counter[str] = Counter()
        details: dict[str, str] = {}
        for topic in topics:
            o = against.topics.get(topic)
            if o is None:
                continue
            counts.update(o.counts)
            rules.update(o.rules)
            for k, v in o.details.items():
                details.setdefault(k, v)
        out.append(PatternGap(name, len(topics), topics[0], dict(counts), details, dict(rules)))
    out.sort(key=lambda g: (-(g.missed + g.dead_lettered), g.pattern))
    return out


def pattern_topics(patterns: Sequence[Pattern], survey: Survey) -> list[tuple[str, list[str]]]:
    """(name, topics) of every pattern, recipe-recognised topics grouped per recipe."""
    out: list[tuple[str, list[str]]] = [
        (p.filter_text, [t.topic for t in p.topics]) for p in patterns
    ]
    by_recipe: dict[str, list[str]] = {}
    for t in survey.topics.values():
        if t.recipe is not None:
            by_recipe.setdefault(t.recipe, []).append(t.topic)
    out += [(f"recipe {name}", topics) for name, topics in by_recipe.items()]
    return out
