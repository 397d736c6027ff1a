"""Sparkplug seq and bdSeq tracking (gaps, deaths, stale deaths, births after a death) and the
opt-in online metric, through the real mapper and our encoder."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.intake import Intake
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.metrics import BridgeMetrics
from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.encode import EdgeNode, Metric
from bridge.sparkplug.sessions import Seen, SessionTracker

T0_MS = 1_795_680_000_000
RECEIVED_US = (T0_MS + 60_000) * 1000
RULES = """version: 1
rules:
  - name: sp
    topic: "spBv1.0/#"
    payload: sparkplug
    sparkplug: {online_metric: online}
"""


def seen(kind: str, seq: int | None = None, bd_seq: int | None = None) -> Seen:
    return Seen("G", "E", "d" if kind[0] == "D" else None, kind, seq, bd_seq)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=600))
def test_a_gap_is_counted_once_per_run_of_lost_messages_across_the_wrap(sent: list[bool]) -> None:
    """The node numbers its messages 1, 2 ... 255, 0, 1 ... after an NBIRTH at 0; the bridge
    sees those marked True. Each run of lost messages before a seen one is one gap."""
    tracker = SessionTracker()
    assert tracker.observe(seen("NBIRTH", 0, 3)) == ()
    gaps = 0
    want = 0
    lost = False
    for i, arrives in enumerate(sent, start=1):
        if not arrives:
            lost = True
            continue
        gaps += tracker.observe(seen("NDATA", i % 256)).count("seq_gap")
        want += lost
        lost = False
    assert gaps == want


def test_deaths_stale_deaths_and_births_after_a_death() -> None:
    tracker = SessionTracker()
    assert tracker.observe(seen("NBIRTH", 0, 5)) == ()
    assert tracker.observe(seen("DDEATH", 1)) == ("device_death",)
    assert tracker.observe(seen("NDEATH", None, 4)) == ("stale_death",)  # an old session's Will
    assert tracker.observe(seen("NDATA", 2)) == ()  # the session goes on
    assert tracker.observe(seen("NDEATH", None, 5)) == ("node_death",)
    assert tracker.observe(seen("NBIRTH", 0, 6)) == ("birth_after_death",)
    assert tracker.observe(seen("NDATA", 5)) == ("seq_gap",)


def test_the_intake_counts_session_events_by_rule() -> None:
    metrics = BridgeMetrics()
    i = Intake(Mapper(load_mappings_text(RULES, "m.yaml")), metrics)
    node = EdgeNode("G", "E")
    messages = [node.nbirth([Metric("a", DataType.DOUBLE, 1.0)], T0_MS)]
    messages.append(node.ndata({"a": 2.0}, T0_MS + 1))
    node.seq += 3  # three messages lost
    messages += [node.ndata({"a": 3.0}, T0_MS + 2), node.ndeath()]
    for mid, (topic, payload) in enumerate(messages, start=1):
        i.receive(topic, payload, mid, 1, False, 1)
    i.flush_counters()

    def count(event: str) -> float | None:
        return metrics.registry.get_sample_value(
            "metriqo_bridge_sparkplug_session_events_total", {"rule": "sp", "event": event}
        )

    assert (count("seq_gap"), count("node_death")) == (1.0, 1.0)


def test_the_online_metric_is_1_at_birth_and_0_at_death_for_the_node_and_its_devices() -> None:
    m = Mapper(load_mappings_text(RULES, "m.yaml"))
    node = EdgeNode("G", "E")
    born = m.map(*node.nbirth([Metric("a", DataType.DOUBLE, 1.0)], T0_MS), RECEIVED_US)
    assert [r.metrics for r in born.records] == [{"online": 1.0, "a": 1.0}]
    m.map(*node.dbirth("d", [Metric("b", DataType.DOUBLE, 1.0)], T0_MS), RECEIVED_US)
    gone = m.map(*node.ddeath("d", T0_MS + 5), RECEIVED_US)
    assert [(r.device_id, r.ts_us // 1000, r.metrics) for r in gone.records] == [
        ("G-E-d", T0_MS + 5, {"online": 0.0})
    ]
    old = EdgeNode("G", "E", bd_seq=node.bd_seq - 1 if node.bd_seq else 255)
    stale = m.map(*old.ndeath(), RECEIVED_US)
    assert (stale.records, stale.ignored) == ([], True)  # an earlier session's Will
    dead = m.map(*node.ndeath(), RECEIVED_US)
    assert sorted((r.device_id, r.ts_us, r.metrics["online"]) for r in dead.records) == [
        ("G-E", RECEIVED_US, 0.0),  # an NDEATH has no timestamp: the receive time
        ("G-E-d", RECEIVED_US, 0.0),
    ]


def test_a_recognised_redelivery_is_not_a_gap() -> None:
    metrics = BridgeMetrics()
    i = Intake(Mapper(load_mappings_text(RULES, "m.yaml")), metrics)
    node = EdgeNode("G", "E")
    birth = node.nbirth([Metric("a", DataType.DOUBLE, 1.0)], T0_MS)
    first = node.ndata({"a": 2.0}, T0_MS + 1)
    second = node.ndata({"a": 3.0}, T0_MS + 2)
    i.receive(*birth, 1, 1, False, 1)
    i.receive(*first, 2, 1, False, 1)
    i.receive(*second, 3, 1, False, 1)
    i.receive(*first, 2, 1, True, 1)  # DUP after a reconnect: not acknowledged yet
    i.receive(*second, 3, 1, True, 1)
    i.flush_counters()
    gaps = metrics.registry.get_sample_value(
        "metriqo_bridge_sparkplug_session_events_total", {"rule": "sp", "event": "seq_gap"}
    )
    assert gaps is None
