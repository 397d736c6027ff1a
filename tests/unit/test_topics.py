"""Unit tests of MQTT topic filters with captures and of the first-match router."""

from __future__ import annotations

import random

import pytest

from bridge.mapping.topics import TopicFilter, TopicRouter, parse_filter


def matches(filter_text: str, topic: str) -> dict[str, str] | None:
    """Captures of ``topic`` under ``filter_text``, or None."""
    return parse_filter(filter_text).match(topic.split("/"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a/#/b", "'#' is only allowed as the last level"),
        ("#/a", "'#' is only allowed as the last level"),
        ("+x", "mixes wildcard characters"),
        ("a/x#", "mixes wildcard characters"),
        ("a/{x}y", "mixes wildcard characters"),
        ("a/{x", "mixes wildcard characters"),
        ("a/{1x}", "mixes wildcard characters"),
        ("{x}/b/{x}", "capture {x} appears twice"),
        ("", "topic filter is empty"),
        ("a/\x00", "NUL"),
        ("a" * 65536, "longer than 65535 bytes"),
    ],
)
def test_invalid_filters_are_refused_with_a_reason(text: str, message: str) -> None:
    """parse_filter raises ValueError naming what is wrong with an invalid filter."""
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_filter(text)


def test_parsed_filter_exposes_levels_captures_and_subscription() -> None:
    """A filter compiles into levels, capture names and a broker subscription with '+'."""
    filt = parse_filter("plant/{site}/+/{device}/#")
    assert filt.levels == ("plant", None, None, None)
    assert filt.captures == (None, "site", None, "device")
    assert filt.capture_names == ("site", "device")
    assert filt.tail is True
    assert filt.subscription == "plant/+/+/+/#"
    assert isinstance(filt, TopicFilter)


def test_single_level_wildcard_matches_exactly_one_level() -> None:
    """'+' matches any one level (including an empty one) and never zero or two levels."""
    assert matches("a/+/c", "a/b/c") == {}
    assert matches("a/+/c", "a//c") == {}
    assert matches("a/+/c", "a/c") is None
    assert matches("a/+/c", "a/b/x/c") is None
    assert matches("a/+", "a") is None
    assert matches("+", "x") == {}
    assert matches("+", "x/y") is None


def test_literal_levels_must_match_exactly() -> None:
    """Literal levels compare case-sensitively and the level count must agree."""
    assert matches("a/b", "a/b") == {}
    assert matches("a/b", "A/b") is None
    assert matches("a/b", "a/b/c") is None
    assert matches("a/b", "a/b/") is None


def test_multi_level_wildcard_matches_any_tail() -> None:
    """'#' matches every remaining level, and '#' alone matches every ordinary topic."""
    assert matches("a/#", "a/b") == {}
    assert matches("a/#", "a/b/c/d") == {}
    assert matches("a/#", "a/") == {}
    assert matches("a/#", "b/c") is None
    assert matches("#", "x") == {}
    assert matches("#", "x/y/z") == {}


def test_multi_level_wildcard_also_matches_the_parent_level() -> None:
    """'a/#' matches the topic 'a' itself, as [MQTT-4.7.1-2] requires."""
    assert matches("a/#", "a") == {}
    assert matches("a/b/#", "a/b") == {}
    assert matches("a/b/#", "a") is None


def test_captures_return_the_topic_levels_by_name() -> None:
    """Named captures return the matched level text under their names."""
    assert matches("plant/{site}/{line}/temp", "plant/north/l7/temp") == {
        "site": "north",
        "line": "l7",
    }
    assert matches("plant/{site}/#", "plant/south/x/y") == {"site": "south"}
    assert matches("plant/{site}/temp", "plant/south/pressure") is None


@pytest.mark.parametrize("filter_text", ["#", "+/x", "+/#", "{sys}/x", "+"])
def test_dollar_topics_are_not_matched_by_leading_wildcards(filter_text: str) -> None:
    """Topics starting with '$' are not matched by a wildcard in the first level."""
    topic = "$SYS" if filter_text == "+" else "$SYS/x"
    assert matches(filter_text, topic) is None


def test_dollar_topics_are_matched_by_an_explicit_first_level() -> None:
    """'$SYS/#' and '$SYS/+' match '$SYS/...' topics."""
    assert matches("$SYS/#", "$SYS/x") == {}
    assert matches("$SYS/#", "$SYS/broker/uptime") == {}
    assert matches("$SYS/+", "$SYS/x") == {}


def test_dollar_in_a_later_level_is_an_ordinary_character() -> None:
    """Only a '$' in the first level is special: 'a/$x' is matched by 'a/+'."""
    assert matches("a/+", "a/$x") == {}
    assert matches("#", "a/$x") == {}


def test_router_returns_the_first_matching_filter() -> None:
    """The router picks the first filter in list order that matches, with its captures."""
    router = TopicRouter([parse_filter("a/specific"), parse_filter("a/{name}"), parse_filter("#")])
    assert router.route("a/specific") == (0, {})
    assert router.route("a/other") == (1, {"name": "other"})
    assert router.route("b/c") == (2, {})
    assert TopicRouter([parse_filter("a/+")]).route("b") is None


def test_router_answers_repeated_topics_consistently_from_its_cache() -> None:
    """A second lookup of a topic (hit or miss) gives the same answer as the first."""
    router = TopicRouter([parse_filter("a/{x}")])
    first = router.route("a/1")
    assert router.route("a/1") == first == (0, {"x": "1"})
    assert router.route("zzz") is None
    assert router.route("zzz") is None


def test_router_cache_stays_within_its_bound() -> None:
    """The cache never holds more than cache_size topics and routing stays correct."""
    router = TopicRouter([parse_filter("t/{n}")], cache_size=8)
    for i in range(100):
        assert router.route(f"t/{i}") == (0, {"n": str(i)})
        assert len(router._cache) <= 8
    assert router.route("t/3") == (0, {"n": "3"})


def test_router_trie_agrees_with_checking_every_filter() -> None:
    """The trie finds exactly the filters (in rule order) that a scan of all of them finds."""
    rng = random.Random(7)
    words = ["a", "b", "$SYS", "", "c"]

    def level(last: bool) -> str:
        kind = rng.random()
        if kind < 0.2:
            return "+"
        if kind < 0.3:
            return "{x" + str(rng.randrange(1000)) + "}"
        if kind < 0.35:
            return "{p" + str(rng.randrange(1000)) + ":[ab]}"
        if last and kind < 0.5:
            return "#"
        return rng.choice(words)

    filters = []
    for _ in range(300):
        n = rng.randrange(1, 5)
        try:
            filters.append(parse_filter("/".join(level(i == n - 1) for i in range(n))))
        except ValueError:
            continue
    router = TopicRouter(filters)
    for _ in range(3000):
        topic = "/".join(rng.choice(words) for _ in range(rng.randrange(1, 6)))
        levels = topic.split("/")
        brute = [(i, c) for i, f in enumerate(filters) if (c := f.match(levels)) is not None]
        assert router.route_all(topic) == brute, topic
