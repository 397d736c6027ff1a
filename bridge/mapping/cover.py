"""The broker filters to subscribe with: no two of them may match the same topic.

A broker sends one copy of a message per matching subscription (mosquitto does; MQTT 5 allows
it, and brokers differ under 3.1.1), and each copy is a QoS 1 message of its own: the bridge
cannot tell the second copy from a new reading and would store it twice. Mapping files overlap
easily — a specific rule above a general one is the recommended order — so the bridge subscribes
to a *cover* of the rules' filters instead of the filters themselves: a filter that another one
already covers is left out, and filters that only partly overlap are replaced by one filter
that covers them (their join). A join can let in topics that no rule's filter matches; the mapper
acknowledges and counts those as ignored instead of dead-lettering them (see
:class:`bridge.mapping.mapper.Mapper`).

Pure functions over plain MQTT filters (``+`` and ``#``; captures already turned into ``+``).
Overlaps are found through a trie over the levels, so a file of 20,000 rules with the usual
literal prefixes costs about one walk per filter, not a comparison of every pair.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

_ONE = "+"
_TAIL = "#"
# A component of overlapping filters larger than this after the covered ones are left out is
# joined in one step (one broad filter) rather than pair by pair, which is quadratic.
_PAIRWISE_LIMIT = 200


def covers(a: str, b: str) -> bool:
    """Every topic that ``b`` matches, ``a`` matches too."""
    la, lb = a.split("/"), b.split("/")
    for i, x in enumerate(la):
        if x == _TAIL:
            # 'p/#' matches p itself and everything below it.
            return not (i == 0 and lb[0].startswith("$"))
        if i >= len(lb):
            return False
        y = lb[i]
        if y == _TAIL:
            return False
        if x == _ONE:
            if i == 0 and y.startswith("$"):
                return False
            continue
        if y == _ONE or x != y:
            return False
    return len(lb) == len(la)


def overlaps(a: str, b: str) -> bool:
    """Some topic matches both ``a`` and ``b``."""
    la, lb = a.split("/"), b.split("/")
    for i in range(max(len(la), len(lb))):
        xa = la[i] if i < len(la) else None
        xb = lb[i] if i < len(lb) else None
        if _TAIL in (xa, xb):
            other = xb if xa == _TAIL else xa
            return not (i == 0 and other is not None and other.startswith("$"))
        if xa is None or xb is None:
            return False  # different lengths, no '#'
        if _ONE in (xa, xb):
            other = xb if xa == _ONE else xa
            if i == 0 and other.startswith("$"):
                return False  # [MQTT-4.7.2-1]: '+' first never matches a '$' topic
            continue
        if xa != xb:
            return False
    return True


def join(a: str, b: str) -> str:
    """The narrowest filter of the form this module builds that covers both ``a`` and ``b``."""
    la, lb = a.split("/"), b.split("/")
    out: list[str] = []
    for i in range(max(len(la), len(lb))):
        xa = la[i] if i < len(la) else None
        xb = lb[i] if i < len(lb) else None
        if xa is None or xb is None or _TAIL in (xa, xb):
            out.append(_TAIL)
            break
        out.append(xa if xa == xb else _ONE)
    return "/".join(out)


@dataclass(slots=True)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    ends: list[int] = field(default_factory=list)  # filters ending here
    tails: list[int] = field(default_factory=list)  # filters with '#' here


def _trie(filters: Sequence[str]) -> _Node:
    root = _Node()
    for index, text in enumerate(filters):
        node = root
        for level in text.split("/"):
            if level == _TAIL:
                node.tails.append(index)
                break
            node = node.children.setdefault(level, _Node())
        else:
            node.ends.append(index)
    return root


def _subtree(node: _Node, depth: int) -> Iterator[int]:
    yield from node.ends
    yield from node.tails
    for level, child in node.children.items():
        if not (depth == 0 and level.startswith("$")):
            yield from _subtree(child, depth + 1)


def _overlapping(root: _Node, levels: list[str]) -> Iterator[int]:
    """Indices of the filters in the trie that overlap the filter ``levels``."""
    stack: list[tuple[_Node, int]] = [(root, 0)]
    while stack:
        node, i = stack.pop()
        here = levels[i] if i < len(levels) else None
        if not (i == 0 and here is not None and here.startswith("$")):
            yield from node.tails
        if here is None:
            yield from node.ends
            continue
        if here == _TAIL:
            yield from node.ends  # 'p/#' matches p itself
            for level, child in node.children.items():
                if not (i == 0 and level.startswith("$")):
                    yield from _subtree(child, i + 1)
            continue
        if here == _ONE:
            for level, child in node.children.items():
                if not (i == 0 and level.startswith("$")):
                    stack.append((child, i + 1))
            continue
        same = node.children.get(here)
        if same is not None:
            stack.append((same, i + 1))
        plus = node.children.get(_ONE)
        if plus is not None and not (i == 0 and here.startswith("$")):
            stack.append((plus, i + 1))


def _components(filters: list[str]) -> list[list[int]]:
    """Groups of filters connected by overlaps, each in the order of ``filters``."""
    parent = list(range(len(filters)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    root = _trie(filters)
    for index, text in enumerate(filters):
        for other in _overlapping(root, text.split("/")):
            a, b = find(index), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for index in range(len(filters)):
        groups.setdefault(find(index), []).append(index)
    return list(groups.values())


def _width(text: str) -> tuple[int, int]:
    """Sort key putting the filters most likely to cover others first."""
    levels = text.split("/")
    return (-(levels[-1] == _TAIL), -sum(level == _ONE for level in levels) + len(levels))


def _without_covered(group: list[str]) -> list[str]:
    """``group`` without the filters another one covers (of two that cover each other, the
    first stays)."""
    by_width = sorted(range(len(group)), key=lambda i: _width(group[i]))
    kept: list[str] = []
    for i, text in enumerate(group):
        coverer = next(
            (
                j
                for j in by_width
                if j != i and covers(group[j], text) and (j < i or not covers(text, group[j]))
            ),
            None,
        )
        if coverer is None:
            kept.append(text)
    return kept


def _settle(group: list[str]) -> list[str]:
    """Filters covering ``group`` of which no two overlap."""
    current = _without_covered(group)
    if len(current) > _PAIRWISE_LIMIT:
        joined = current[0]
        for text in current[1:]:
            joined = join(joined, text)
        return [joined]
    while True:
        pair = next(
            (
                (i, j)
                for i in range(len(current))
                for j in range(i + 1, len(current))
                if overlaps(current[i], current[j])
            ),
            None,
        )
        if pair is None:
            return current
        i, j = pair
        merged = join(current[i], current[j])
        rest = [t for k, t in enumerate(current) if k not in (i, j)]
        current = _without_covered([*rest[:i], merged, *rest[i:]])


@dataclass(frozen=True)
class Cover:
    """The subscriptions for a list of rule filters.

    Attributes:
        filters: what to subscribe to, in the order of the rules that first need them.
        left_out: rule filters another subscription covers, each with the one covering it.
        joined: subscriptions that are no rule's filter (each covers the rule filters listed),
            through which topics outside every rule's filter can arrive.
    """

    filters: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...] = ()
    joined: tuple[tuple[str, tuple[str, ...]], ...] = ()


def cover(rule_filters: Sequence[str]) -> Cover:
    """The cover of ``rule_filters`` (plain MQTT filters, duplicates allowed)."""
    distinct = list(dict.fromkeys(rule_filters))
    filters = tuple(distinct)
    while True:
        # A join can overlap a filter of another group: settle again until nothing changes
        # (each round that changes anything leaves fewer filters, so this ends).
        chosen: dict[int, list[str]] = {}  # first member's position -> its subscriptions
        for group in _components(list(filters)):
            members = [filters[i] for i in group]
            chosen[group[0]] = members if len(members) == 1 else _settle(members)
        settled = tuple(f for _, subs in sorted(chosen.items()) for f in subs)
        if settled == filters:
            break
        filters = settled
    originals = set(distinct)
    left_out: list[tuple[str, str]] = []
    joined: list[tuple[str, tuple[str, ...]]] = []
    for sub in filters:
        if sub not in originals:
            joined.append((sub, tuple(f for f in distinct if covers(sub, f))))
    for text in distinct:
        if text not in filters:
            by = next(f for f in filters if covers(f, text))
            if by in originals:
                left_out.append((text, by))
    return Cover(filters, tuple(left_out), tuple(joined))
