"""``explain`` refuses topics a broker never delivers (wildcards, NUL, empty) and says what a
coalescing window does with a message: which window, what function, when it is sent."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cli.main import main
from bridge.mapping.explain import (
    DEFAULT_GRACE_US,
    explain,
    explanation_json,
    format_explanation,
    topic_problem,
)
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper

PROPS = settings(derandomize=True, database=None, deadline=None, max_examples=200)
RECV_US = int(datetime(2026, 11, 26, 8, 32, 17, tzinfo=UTC).timestamp()) * 1_000_000
COALESCE_YAML = """version: 1
rules:
  - name: power
    topic: 'meter/{dev}/power'
    device_id: '{dev}'
    payload: number
    metric: watts
    coalesce: {window_s: 60, function: avg}
  - name: counts
    topic: 'door/{dev}'
    device_id: '{dev}'
    metrics: {opened: opened}
    timestamp: {field: ts}
    coalesce: {window_s: 10, function: count}
"""


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    """The mapper for COALESCE_YAML."""
    return Mapper(load_mappings_text(COALESCE_YAML, "co.yaml"))


@pytest.mark.parametrize(
    ("topic", "words"),
    [
        ("tele/+/SENSOR", "wildcard"),
        ("tele/#", "wildcard"),
        ("tele/a+b/x", "wildcard"),
        ("", "empty"),
        ("tele/\0/x", "NUL"),
        ("tele/\udcff", "UTF-8"),
        ("t" * 65536, "65535"),
    ],
)
def test_topics_no_broker_delivers_are_refused(topic: str, words: str) -> None:
    """A wildcard, NUL, empty, non-UTF-8 or oversized topic names its problem."""
    problem = topic_problem(topic)
    assert problem is not None
    assert words in problem


def test_explain_exits_2_on_a_wildcard_topic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """explain tele/+/SENSOR is a usage error (2) with the reason, and prints no match."""
    path = tmp_path / "co.yaml"
    path.write_text(COALESCE_YAML)
    assert main(["explain", "meter/+/power", "1", "--mapping-file", str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "'meter/+/power' holds a wildcard" in out.err
    assert main(["explain", "--topic", "", "1", "--mapping-file", str(path)]) == 2
    assert "the topic is empty" in capsys.readouterr().err
    assert main(["explain", "meter/m1/power", "1", "--mapping-file", str(path)]) == 0


def test_explain_says_which_window_and_when_it_is_sent(mapper: Mapper) -> None:
    """A coalesced point: its window (aligned to the epoch), the function, the send time (end +
    grace) and the body holds the window's point stamped with the window start."""
    ex = explain(mapper, "meter/m1/power", b"230.5", RECV_US)
    [w] = ex.windows
    assert (w.device_id, w.metric, w.function, w.value, w.late) == (
        "m1",
        "watts",
        "avg",
        230.5,
        False,
    )
    assert w.start_us == RECV_US - 17_000_000
    assert w.end_us == w.start_us + 60_000_000
    assert w.send_us == w.end_us + DEFAULT_GRACE_US
    text = format_explanation(ex)
    assert "window  m1 watts: avg over 2026-11-26T08:32:00Z to 2026-11-26T08:33:00Z" in text
    assert "sent at about 2026-11-26T08:33:02Z" in text
    assert ex.body == [
        {"device_id": "m1", "timestamp": "2026-11-26T08:32:00Z", "metrics": {"watts": 230.5}}
    ]
    doc = explanation_json(ex)
    assert doc["windows"][0]["sent_after"] == "2026-11-26T08:33:02Z"
    assert doc["windows"][0]["function"] == "avg"


def test_a_late_point_forms_a_second_point_for_its_closed_window(mapper: Mapper) -> None:
    """A measurement whose window closed (plus grace) before it arrived is said to be late; count
    sends 1 for a lone message."""
    ts = "2026-11-26T08:31:03Z"
    ex = explain(mapper, "door/d1", f'{{"opened": 1, "ts": "{ts}"}}'.encode(), RECV_US)
    [w] = ex.windows
    assert (w.function, w.value, w.late) == ("count", 1.0, True)
    assert "closed before the message arrived" in format_explanation(ex)
    assert ex.body[0]["timestamp"] == "2026-11-26T08:31:00Z"
    assert ex.body[0]["metrics"] == {"opened": 1.0}


def test_a_rule_without_coalesce_has_no_window() -> None:
    """Uncoalesced points show no window line and their own timestamp in the body."""
    m = Mapper(load_mappings_text(COALESCE_YAML.split("    coalesce", maxsplit=1)[0], "one.yaml"))
    ex = explain(m, "meter/m1/power", b"1", RECV_US)
    assert ex.windows == ()
    assert "window" not in format_explanation(ex)
    assert ex.body[0]["timestamp"] == "2026-11-26T08:32:17Z"


_LEVEL = st.text(st.characters(codec="utf-8", exclude_characters="/+#\0"), max_size=5)


@PROPS
@given(st.lists(_LEVEL, min_size=1, max_size=5), st.sampled_from(["+", "#", "a+", "#b"]), st.data())
def test_any_topic_with_a_wildcard_is_refused(
    levels: list[str], wildcard: str, data: st.DataObject
) -> None:
    """Wherever a '+' or '#' sits, the topic is refused; without one (and non-empty) it is not."""
    topic = "/".join(levels)
    if topic:
        assert topic_problem(topic) is None
    at = data.draw(st.integers(0, len(levels)))
    assert topic_problem("/".join([*levels[:at], wildcard, *levels[at:]])) is not None


@PROPS
@given(st.integers(0, 10**9), st.integers(0, 10**6))
def test_the_window_holds_the_measurement_time(offset_s: int, extra_us: int) -> None:
    """start <= ts < end, start is a multiple of the window, and the send time is end + grace."""
    m = Mapper(load_mappings_text(COALESCE_YAML, "co.yaml"))
    ts_us = 1_600_000_000_000_000 + offset_s * 1_000_000 + extra_us
    ts = f"{ts_us // 1_000_000}.{ts_us % 1_000_000:06d}"
    ex = explain(m, "door/d1", f'{{"opened": 1, "ts": {ts}}}'.encode(), ts_us + 1)
    assert not ex.failures
    [w] = ex.windows
    assert w.start_us <= ex.points[0].ts_us < w.end_us
    assert w.start_us % 10_000_000 == 0
    assert w.end_us - w.start_us == 10_000_000
    assert w.send_us == w.end_us + DEFAULT_GRACE_US
    assert w.late is False
