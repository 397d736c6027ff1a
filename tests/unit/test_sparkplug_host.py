"""The Sparkplug host mode's pure part (bridge/sparkplug/host.py): the STATE payloads, the
rebirth NCMD as our decoder reads it, the rebirth rate limit, and the ``sparkplug.*`` settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config.loader import load_settings
from bridge.errors import ConfigError
from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.decode import decode_payload
from bridge.sparkplug.encode import REBIRTH
from bridge.sparkplug.host import RebirthLimiter, rebirth_command, state_payload, state_topic
from bridge.sparkplug.topic import StateTopic, parse_topic
from tests.support.guide import guide_block


def test_state_topic_and_payloads_are_the_3_0_forms() -> None:
    assert state_topic("scada-1") == "spBv1.0/STATE/scada-1"
    assert parse_topic(state_topic("scada-1")) == StateTopic("scada-1")
    assert json.loads(state_payload(True, 1700000000123)) == {
        "online": True,
        "timestamp": 1700000000123,
    }
    assert state_payload(False, 5) == b'{"online":false,"timestamp":5}'


def test_the_rebirth_command_is_an_ncmd_with_a_true_boolean() -> None:
    topic, payload = rebirth_command("plant", "edge-7", 1700000000123)
    assert topic == "spBv1.0/plant/NCMD/edge-7"
    decoded = decode_payload(payload)
    assert decoded.timestamp_ms == 1700000000123
    [m] = decoded.metrics
    assert (m.name, m.datatype, m.value) == (REBIRTH, DataType.BOOLEAN, ("boolean_value", True))


def test_one_request_per_node_per_interval() -> None:
    limit = RebirthLimiter(interval_s=30, per_minute=100)
    assert limit.allow("g", "a", 0.0)
    assert not limit.allow("g", "a", 1.0)
    assert not limit.allow("g", "a", 29.9)
    assert limit.allow("g", "b", 1.0)  # another node is not held back
    assert limit.allow("h", "a", 1.0)  # nor the same node name in another group
    assert limit.allow("g", "a", 30.0)


def test_the_global_cap_holds_across_nodes_and_slides() -> None:
    limit = RebirthLimiter(interval_s=1, per_minute=3)
    assert [limit.allow("g", f"n{i}", float(i)) for i in range(5)] == [True] * 3 + [False] * 2
    assert limit.allow("g", "late", 60.0)  # the first one left the window
    assert not limit.allow("g", "later", 60.5)


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.floats(0, 5, allow_nan=False)),
        max_size=60,
    ),
    st.floats(0.5, 30),
    st.integers(1, 10),
)
def test_never_more_than_the_limits_allow(
    requests: list[tuple[str, float]], interval: float, cap: int
) -> None:
    limit = RebirthLimiter(interval_s=interval, per_minute=cap)
    now = 0.0
    sent: list[tuple[str, float]] = []
    for node, step in requests:
        now += step
        if limit.allow("g", node, now):
            sent.append((node, now))
    for i, (node, at) in enumerate(sent):
        same = [t for n, t in sent[:i] if n == node]
        assert not same or at - same[-1] >= interval
        assert sum(1 for _, t in sent[: i + 1] if at - t < 60.0) <= cap
    # And it is not a limiter that refuses everything: the first request always goes out.
    if requests:
        assert sent


def test_host_mode_is_off_unless_a_host_id_is_set() -> None:
    s = load_settings(environ={})
    assert s.sparkplug.host_id is None
    assert not s.sparkplug.host_mode
    on = load_settings(environ={"METRIQO_BRIDGE_SPARKPLUG__HOST_ID": "scada-1"})
    assert on.sparkplug.host_mode
    assert on.sparkplug.host_id == "scada-1"
    assert on.sparkplug.rebirth_interval_s == 30.0


@pytest.mark.parametrize("bad", ["a/b", "a+", "#", ""])
def test_a_host_id_must_be_one_topic_level(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"sparkplug\.host_id"):
        load_settings(environ={"METRIQO_BRIDGE_SPARKPLUG__HOST_ID": bad})


def test_the_guides_host_mode_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(guide_block("sparkplug.md", "yaml", "host_id"), encoding="utf-8")
    s = load_settings(file=path, environ={}).sparkplug
    assert (s.host_id, s.rebirth_interval_s, s.rebirth_max_per_minute) == ("metriqo-bridge", 30, 20)
