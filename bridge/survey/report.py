"""What ``discover`` prints: the topic tree with rates and kinds, the patterns, the gaps of
``--against``, as text for people or one JSON object for scripts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.survey.against import PatternGap
from bridge.survey.patterns import Pattern
from bridge.survey.topics import Survey, TopicStats

CHILDREN_SHOWN = 12  # per tree node; the rest are summed up in one line
TREE_LINES = 400  # the whole tree; --json lists every kept topic


@dataclass(slots=True)
class _Node:
    messages: int = 0
    retained: int = 0
    children: dict[str, _Node] = field(default_factory=dict)
    leaf: TopicStats | None = None


def _kind_text(t: TopicStats) -> str:
    kinds = ", ".join(k for k, _ in t.kinds.most_common(3))
    if t.kind == "json" and t.fields:
        names = list(t.fields)
        more = f", +{len(names) - 4}" if len(names) > 4 else ""
        kinds += " {" + ", ".join(names[:4]) + more + "}"
    if t.recipe is not None:
        kinds += f"  [recipe {t.recipe}]"
    return kinds


def topic_tree(survey: Survey, seconds: float) -> list[str]:
    """The topics as an indented tree, busiest first, each with msg/s and its kinds."""
    root = _Node()
    for t in survey.topics.values():
        node = root
        node.messages += t.messages
        for level in t.topic.split("/"):
            node = node.children.setdefault(level, _Node())
            node.messages += t.messages
            node.retained += t.retained
        node.leaf = t
    lines: list[str] = []
    _walk(root, 1, seconds, lines)
    if len(lines) > TREE_LINES:
        cut = len(lines) - TREE_LINES
        lines = [*lines[:TREE_LINES], f"  … {cut} more line(s); --json lists every topic"]
    return lines


def _walk(node: _Node, depth: int, seconds: float, lines: list[str]) -> None:
    ordered = sorted(node.children.items(), key=lambda kv: (-kv[1].messages, kv[0]))
    for name, child in ordered[:CHILDREN_SHOWN]:
        rate = f"{child.messages / seconds:.3g}/s"
        retained = f", {child.retained} retained" if child.retained else ""
        label = name if name else "(empty level)"
        if child.leaf is not None and not child.children:
            lines.append(f"{'  ' * depth}{label}  {rate}{retained}  {_kind_text(child.leaf)}")
            continue
        lines.append(f"{'  ' * depth}{label}/  {rate}{retained}")
        if child.leaf is not None:
            lines.append(f"{'  ' * (depth + 1)}(itself)  {_kind_text(child.leaf)}")
        _walk(child, depth + 1, seconds, lines)
    rest = ordered[CHILDREN_SHOWN:]
    if rest:
        n = sum(c.messages for _, c in rest)
        lines.append(f"{'  ' * depth}… {len(rest)} more, {n / seconds:.3g}/s")


def pattern_lines(patterns: Sequence[Pattern], survey: Survey, seconds: float) -> list[str]:
    """One line per pattern (and per recipe recognised)."""
    rows: list[tuple[str, str, int, float, str]] = []
    recipes: dict[str, list[TopicStats]] = {}
    for t in survey.topics.values():
        if t.recipe is not None:
            recipes.setdefault(t.recipe, []).append(t)
    for name, topics in recipes.items():
        n = sum(t.messages for t in topics)
        rows.append((f"recipe {name}", "recipe", len(topics), n / seconds, topics[0].topic))
    for p in patterns:
        kind = p.kind if p.recipe is None else f"{p.kind} (to recipe {p.recipe})"
        rows.append((p.filter_text, kind, len(p.topics), p.messages / seconds, p.topics[0].topic))
    width = max((len(r[0]) for r in rows), default=10)
    return [
        f"  {f:<{width}}  {kind:<8} {n:>5} topic(s) {rate:>9.3g} msg/s  e.g. {example}"
        for f, kind, n, rate, example in rows
    ]


def gap_lines(found: Sequence[PatternGap], mapping: str) -> list[str]:
    """``--against``: per pattern, what the mapping file misses or dead-letters."""
    lines = []
    for g in found:
        if not g.missed and not g.dead_lettered:
            continue
        lines.append(f"  {g.pattern}  ({g.topics} topic(s), e.g. {g.example})")
        if g.missed:
            lines.append(f"    missed: {g.missed} message(s): no rule of {mapping} matches")
        for key, n in sorted(g.counts.items()):
            if key.startswith("dead_letter:"):
                rules = ", ".join(sorted(g.rules)) or "?"
                detail = g.details.get(key, "")
                reason = key.split(":", 1)[1]
                lines.append(f"    dead-lettered: {n} message(s) by {rules}: {reason}: {detail}")
    covered = sum(1 for g in found if not g.missed and not g.dead_lettered)
    lines.append(f"  {covered} of {len(found)} pattern(s) fully mapped (or ignored on purpose)")
    return lines


def survey_json(
    survey: Survey,
    seconds: float,
    patterns: Sequence[Pattern],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The whole survey as one JSON-ready object."""
    return {
        "messages": survey.messages,
        "retained": survey.retained,
        "seconds": round(seconds, 3),
        "topics_kept": len(survey.topics),
        "max_topics": survey.max_topics,
        "capped": survey.capped,
        "untracked_messages": survey.untracked_messages,
        "topics": [
            {
                "topic": t.topic,
                "messages": t.messages,
                "retained": t.retained,
                "rate": round(t.messages / seconds, 3),
                "kind": t.kind,
                "kinds": dict(t.kinds),
                "fields": list(t.fields),
                "recipe": t.recipe,
            }
            for t in survey.topics.values()
        ],
        "patterns": [
            {
                "filter": p.filter_text,
                "kind": p.kind,
                "topics": len(p.topics),
                "messages": p.messages,
                "rate": round(p.messages / seconds, 3),
                "example": p.topics[0].topic,
                "recipe": p.recipe,
            }
            for p in patterns
        ],
        **extra,
    }
