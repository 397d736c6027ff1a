"""Per-topic statistics of what a side session saw, in bounded memory.

A broker may carry millions of topics; the survey keeps at most ``max_topics`` of them (the
first seen) with at most :data:`SAMPLES` sample payloads of at most :data:`SAMPLE_BYTES` each,
and counts the messages of topics it could not keep, so a capped survey says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bridge.recipes import recognise
from bridge.survey.kinds import Kind, PayloadKind, classify

SAMPLES = 2  # distinct payloads kept per topic: one or two become the tests of a rule
SAMPLE_BYTES = 4096  # a longer payload is classified but not kept as a sample
WORDS = 16  # distinct text words remembered per topic (more: free text)
RECOGNISE_FIRST = 3  # messages per topic checked against the recipes


@dataclass(frozen=True, slots=True)
class Sample:
    """A payload as received."""

    payload: bytes
    received_us: int
    retained: bool


@dataclass(slots=True)
class TopicStats:
    """What one topic carried."""

    topic: str
    messages: int = 0
    retained: int = 0
    first_us: int = 0
    last_us: int = 0
    kinds: Counter[Kind] = field(default_factory=Counter)
    fields: dict[str, None] = field(default_factory=dict)  # numeric JSON fields, in order
    words: dict[str, None] = field(default_factory=dict)
    free_text: bool = False  # more distinct words than WORDS, or long text
    samples: list[Sample] = field(default_factory=list)
    recipe: str | None = None  # recognised by this recipe (every message checked)
    checked: int = 0  # messages checked against the recipes

    @property
    def kind(self) -> Kind:
        """The most common kind (ties: the first seen)."""
        return self.kinds.most_common(1)[0][0]

    def note(self, payload: bytes, kind: PayloadKind, received_us: int, retained: bool) -> None:
        """Count one message."""
        if not self.messages:
            self.first_us = received_us
        self.messages += 1
        self.retained += retained
        self.last_us = received_us
        self.kinds[kind.kind] += 1
        for name in kind.fields:
            if len(self.fields) < 64:
                self.fields.setdefault(name, None)
        if kind.kind == "text":
            if kind.word is None or (kind.word not in self.words and len(self.words) >= WORDS):
                self.free_text = True
            else:
                self.words.setdefault(kind.word, None)
        if (
            len(self.samples) < SAMPLES
            and len(payload) <= SAMPLE_BYTES
            and all(s.payload != payload for s in self.samples)
        ):
            self.samples.append(Sample(bytes(payload), received_us, retained))
        if self.checked < RECOGNISE_FIRST:
            found = recognise(self.topic, payload)
            recipe = found.name if found is not None else None
            if self.checked and self.recipe != recipe:
                recipe = None  # the recipe must recognise every message checked
            self.recipe = recipe
            self.checked += 1


class Survey:
    """Topics seen by a side session, capped at ``max_topics``."""

    def __init__(self, max_topics: int = 5000) -> None:
        self.max_topics = max_topics
        self.topics: dict[str, TopicStats] = {}
        self.messages = 0
        self.retained = 0
        self.untracked_messages = 0  # of topics beyond the cap
        self.first_us = 0
        self.last_us = 0
        self.duration_s: float | None = None  # how long the side session listened

    @property
    def capped(self) -> bool:
        """True when messages of topics beyond ``max_topics`` were seen (and only counted)."""
        return self.untracked_messages > 0

    def observe(self, topic: str, payload: bytes, received_us: int, retained: bool) -> None:
        """Count one message."""
        if not self.messages:
            self.first_us = received_us
        self.messages += 1
        self.retained += retained
        self.last_us = received_us
        stats = self.topics.get(topic)
        if stats is None:
            if len(self.topics) >= self.max_topics:
                self.untracked_messages += 1
                return
            stats = self.topics[topic] = TopicStats(topic)
        stats.note(payload, classify(payload), received_us, retained)

    def seconds(self) -> float:
        """The time the survey covers: how long it listened, else from its first message to
        its last (at least 1 ms, so rates stay finite)."""
        if self.duration_s is not None:
            return max(0.001, self.duration_s)
        return max(0.001, (self.last_us - self.first_us) / 1e6)
