"""``bench rules``: what a long mapping file costs per message.

A plant with many production lines writes one rule per line, so the rule that matches a message
may be anywhere in a list of 1,000. This module generates such mapping files and times the
bridge's own mapper on them in this process (parse, route, map: what intake does per message),
timeit-style: the best of several rounds, the rule sets measured in turn so that noise from other
work on the machine hits them alike. The end-to-end comparison (a backlog drained by the bridge
with each file) is run by :mod:`bridge.lab.bench.runner`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge.lab.localrun import METRICS_PER_MESSAGE, message_payload
from bridge.mapping.loader import load_mappings_text, make_mapper
from bridge.mapping.mapper import Mapper
from bridge.settings import MappingSettings

RULES_TARGET_RATIO = 1.2  # 1,000 rules may cost at most 1.2x what 10 rules cost per message
_RULE_BODY = """\
    device_id: "{device}"
    metrics: {temp: temp, rh: rh, kw: power.kw, hz: power.hz}
    timestamp: {field: ts, format: epoch_ms}
"""
_REPEATED_TOPICS = 200  # a plant's topics repeat: the same devices publish again and again


def bench_rule_index(n_rules: int) -> int:
    """Where the rule for the bench publisher's topics (``bench/{device}/env``) sits: the
    middle, so neither the first nor the last position flatters the result."""
    return n_rules // 2


def rules_yaml(n_rules: int) -> str:
    """A mapping file of ``n_rules`` rules: one per production line
    (``plant/lineNNNN/{device}/env``) and, in the middle, the bench publisher's rule."""
    if n_rules < 1:
        raise ValueError("at least one rule")
    lines = ["version: 1", "rules:"]
    for index in range(n_rules):
        if index == bench_rule_index(n_rules):
            lines.append('  - name: bench\n    topic: "bench/{device}/env"')
        else:
            lines.append(
                f'  - name: line{index:04d}\n    topic: "plant/line{index:04d}/{{device}}/env"'
            )
        lines.append(_RULE_BODY.rstrip("\n"))
    return "\n".join(lines) + "\n"


def topic_for(n_rules: int, rule_index: int, device: str) -> str:
    """A topic that rule ``rule_index`` of :func:`rules_yaml` matches."""
    if rule_index == bench_rule_index(n_rules):
        return f"bench/{device}/env"
    return f"plant/line{rule_index:04d}/{device}/env"


def spread(n_rules: int, count: int) -> list[int]:
    """``count`` rule indexes spread evenly over the whole list, first and last included."""
    if count <= 1 or n_rules == 1:
        return [0] * count
    return [round(i * (n_rules - 1) / (count - 1)) for i in range(count)]


@dataclass(frozen=True, slots=True)
class MappingTiming:
    """Per-message mapping time with one rule set (microseconds, best round)."""

    rules: int
    repeated_topic_us: float
    first_seen_topic_us: float
    messages_per_round: int
    rounds: int


@dataclass(slots=True)
class RulesReport:
    """What ``bench rules`` measured; ``problems`` is empty when every message mapped."""

    mode: str
    timings: list[MappingTiming]
    repeated_topic_ratio: float
    first_seen_topic_ratio: float
    end_to_end: dict[str, object] = field(default_factory=dict)
    forms: list[dict[str, object]] = field(default_factory=list)
    common_path_with_every_form_ratio: float = math.nan
    targets: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def ratio(slow: float, fast: float) -> float:
    """``slow / fast`` rounded to 3 places; NaN when ``fast`` is not positive."""
    if not fast > 0 or math.isnan(slow):
        return math.nan
    return round(slow / fast, 3)


class MappingBench:
    """Times one rule set's mapper on messages whose matching rule is anywhere in the list."""

    def __init__(self, n_rules: int, messages: int, base_ms: int) -> None:
        self.n_rules = n_rules
        self.mapper: Mapper = make_mapper(
            load_mappings_text(rules_yaml(n_rules)), MappingSettings()
        )
        self._messages = messages
        # Each message is matched by a rule drawn evenly from the whole list.
        self._rules = spread(n_rules, messages)
        random.Random(7).shuffle(self._rules)  # noqa: S311  # a fixed order, not a secret
        self._payloads = [message_payload(i, base_ms) for i in range(messages)]
        # The same 200 topics with every rule set (matched by rules spread over the list), so
        # both measure the mapper with its per-topic routes cached.
        known = [topic_for(n_rules, r, f"d{j:03d}") for j, r in enumerate(spread(n_rules, 200))]
        self._repeated = [known[i % len(known)] for i in range(messages)]
        self._now_us = (base_ms + messages + 1000) * 1000
        self._round = 0

    def check(self) -> list[str]:
        """Problems mapping the messages (each must give its 4 points): wrong numbers are
        worse than slow ones."""
        problems: list[str] = []
        for topic, payload in zip(self._repeated, self._payloads, strict=True):
            mapped = self.mapper.map(topic, payload, self._now_us)
            if mapped.failures or mapped.points != METRICS_PER_MESSAGE:
                problems.append(f"{self.n_rules} rules: {topic} gave {mapped.points} point(s)")
                break
        return problems

    def repeated_round(self) -> float:
        """Seconds per message over topics the mapper has seen before."""
        return self._timed(self._repeated)

    def first_seen_round(self) -> float:
        """Seconds per message over topics it has never seen (a new device in each)."""
        self._round += 1
        tag = f"r{self._round}"
        topics = [topic_for(self.n_rules, r, f"{tag}x{i}") for i, r in enumerate(self._rules)]
        return self._timed(topics)

    def _timed(self, topics: Sequence[str]) -> float:
        mapper, now_us = self.mapper, self._now_us
        start = time.perf_counter()
        for topic, payload in zip(topics, self._payloads, strict=True):
            mapper.map(topic, payload, now_us)
        return (time.perf_counter() - start) / len(topics)


def time_rule_sets(
    sizes: Sequence[int], messages: int, rounds: int, base_ms: int
) -> tuple[list[MappingTiming], list[str]]:
    """Time each rule set; the best round of each (timeit's advice: the minimum is the run
    least disturbed by the rest of the machine). Rounds alternate between the sets."""
    benches = [MappingBench(n, messages, base_ms) for n in sizes]
    problems = [p for b in benches for p in b.check()]
    repeated = [math.inf] * len(benches)
    first_seen = [math.inf] * len(benches)
    for _ in range(rounds):
        for i, b in enumerate(benches):
            repeated[i] = min(repeated[i], b.repeated_round())
            first_seen[i] = min(first_seen[i], b.first_seen_round())
    timings = [
        MappingTiming(
            rules=b.n_rules,
            repeated_topic_us=round(repeated[i] * 1e6, 2),
            first_seen_topic_us=round(first_seen[i] * 1e6, 2),
            messages_per_round=messages,
            rounds=rounds,
        )
        for i, b in enumerate(benches)
    ]
    return timings, problems
