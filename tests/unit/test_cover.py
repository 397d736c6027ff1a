"""The subscription cover: no topic may match two subscriptions (a broker would send it twice),
and every topic a rule's filter matches must match one. Checked against brute force over every
topic of a small universe, with filters from hypothesis."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mapping.cover import cover, covers, join, overlaps
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import OUTSIDE_FILTERS, Mapper
from bridge.mapping.topics import parse_filter

_LEVELS = ["a", "b", "$s", ""]
_UNIVERSE = ["/".join(parts) for n in range(1, 4) for parts in itertools.product(_LEVELS, repeat=n)]


def _matches(filt: str, topic: str) -> bool:
    return parse_filter(filt).match(topic.split("/")) is not None


def _filters() -> st.SearchStrategy[str]:
    level = st.sampled_from(["a", "b", "$s", "", "+"])
    return st.builds(
        lambda levels, tail: "/".join([*levels, "#"] if tail else levels) or "#",
        st.lists(level, min_size=0, max_size=3),
        st.booleans(),
    ).filter(lambda f: f != "")


@settings(max_examples=400, deadline=None)
@given(_filters(), _filters())
def test_covers_and_overlaps_agree_with_matching_every_topic(a: str, b: str) -> None:
    in_a = {t for t in _UNIVERSE if _matches(a, t)}
    in_b = {t for t in _UNIVERSE if _matches(b, t)}
    if covers(a, b):
        assert in_b <= in_a
    if in_a & in_b:
        assert overlaps(a, b)
    if not overlaps(a, b):
        assert not in_a & in_b
    if overlaps(a, b):  # only overlapping filters are ever joined
        assert in_a | in_b <= {t for t in _UNIVERSE if _matches(join(a, b), t)}


@settings(max_examples=400, deadline=None)
@given(st.lists(_filters(), min_size=1, max_size=6))
def test_every_topic_matches_exactly_one_subscription_if_any_rule(filters: list[str]) -> None:
    result = cover(filters)
    for topic in _UNIVERSE:
        hits = [f for f in result.filters if _matches(f, topic)]
        assert len(hits) <= 1, (filters, result.filters, topic)
        if any(_matches(f, topic) for f in filters):
            assert hits, (filters, result.filters, topic)


def test_a_specific_filter_above_a_general_one_is_left_out() -> None:
    result = cover(["plant/berlin/line1/env", "plant/+/+/env", "tele/+/SENSOR"])
    assert result.filters == ("plant/+/+/env", "tele/+/SENSOR")
    assert result.left_out == (("plant/berlin/line1/env", "plant/+/+/env"),)
    assert result.joined == ()


def test_filters_that_only_partly_overlap_are_joined() -> None:
    result = cover(["a/+/c", "a/b/+", "x/y"])
    assert result.filters == ("a/+/+", "x/y")
    assert result.joined == (("a/+/+", ("a/+/c", "a/b/+")),)


def test_dollar_topics_stay_apart_from_first_level_wildcards() -> None:
    assert cover(["#", "$SYS/broker/uptime"]).filters == ("#", "$SYS/broker/uptime")
    assert cover(["+/x", "$share-like/x"]).filters == ("+/x", "$share-like/x")


def test_a_mapper_counts_topics_only_a_join_let_in_as_ignored() -> None:
    text = """
version: 1
rules:
  - name: one
    topic: "a/{x}/c"
    device_id: "{x}"
    payload: number
    metric: v
  - name: two
    topic: "a/b/{m}"
    device_id: b
    payload: number
    metric: "{m}"
"""
    mapper = Mapper(load_mappings_text(text))
    assert mapper.subscriptions == ["a/+/+"]
    outside = mapper.map("a/z/z", b"1", 0)
    assert outside.ignored
    assert outside.rule == OUTSIDE_FILTERS
    assert not outside.failures
    assert mapper.map("a/z/c", b"1", 0).rule == "one"
    assert mapper.map("a/b/c", b"1", 0).rule == "one"  # first rule wins, as before


def test_twenty_thousand_rule_filters_under_one_tail_filter() -> None:
    """A large file (the speed is `bench check`'s to report)."""
    filters = [f"plant/site{i}/{{line}}/env".replace("{line}", "+") for i in range(20_000)]
    filters += ["plant/site7/line1/env", "plant/#"]
    result = cover(filters)
    assert result.filters == ("plant/#",)
    assert len(result.left_out) == 20_001
