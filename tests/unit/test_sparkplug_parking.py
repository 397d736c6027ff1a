"""DATA before BIRTH: parked whole, mapped again in receive order when a BIRTH of its edge node
arrives, bounded by count, bytes and age with the overflow dead-lettered (never dropped); in the
intake (the real mapper, our encoder) and as a model of the pure parking."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.intake import Intake, Pending
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.metrics import BridgeMetrics
from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.encode import EdgeNode, Metric
from bridge.sparkplug.parking import Parked, Parking, ParkingLimits

T0_MS = 1_795_680_000_000
RULES = """version: 1
rules:
  - name: sp
    topic: "spBv1.0/#"
    payload: sparkplug
"""


class Clock:
    def __init__(self) -> None:
        self.now = T0_MS / 1000 + 60

    def __call__(self) -> float:
        return self.now


def intake(limits: ParkingLimits | None = None) -> tuple[Intake, Clock]:
    clock = Clock()
    mapper = Mapper(load_mappings_text(RULES, "m.yaml"))
    return Intake(
        mapper, BridgeMetrics(), wall_clock=clock, parking=limits or ParkingLimits()
    ), clock


def receive(i: Intake, message: tuple[str, bytes], mid: int = 1) -> Pending:
    i.receive(message[0], message[1], mid, 1, False, 1)
    [pending] = i.take(1)
    return pending


def values(p: Pending) -> list[tuple[int, dict[str, float]]]:
    return [(r.ts_us // 1000, r.metrics) for r in p.records]


def test_data_before_birth_waits_and_is_mapped_in_order_with_the_birth() -> None:
    """Two DATA messages of an unknown node are parked (stored with their own commits, and
    stamped so that a redelivery keeps its key); the NBIRTH maps them, in order, in its own
    commit, and removes their rows in it."""
    i, _clock = intake()
    node = EdgeNode("G", "E")
    birth = node.nbirth([Metric("a", DataType.INT8, 1)], T0_MS)
    first = receive(i, node.ndata({"a": -1}, T0_MS + 1))
    second = receive(i, node.ndata({"a": -2}, T0_MS + 2), mid=2)
    for p in (first, second):
        assert p.records == []
        assert p.dead is None
        assert p.stamped
        assert p.sparkplug is not None
        assert len(p.sparkplug.changes.park) == 1
    assert i.sparkplug.parking.count == 2
    born = receive(i, birth, mid=3)
    assert values(born) == [(T0_MS, {"a": 1.0}), (T0_MS + 1, {"a": -1.0}), (T0_MS + 2, {"a": -2.0})]
    assert born.sparkplug is not None
    assert born.sparkplug.changes.unpark == [
        ("G", "E", first.received_us),
        ("G", "E", second.received_us),
    ]
    assert i.sparkplug.parking.count == 0


def test_a_redelivered_parked_message_is_kept_once() -> None:
    i, _clock = intake()
    node = EdgeNode("G", "E")
    node.nbirth([Metric("a", DataType.DOUBLE, 1.0)], T0_MS)
    topic, payload = node.ndata({"a": 2.0}, T0_MS + 1)
    i.receive(topic, payload, 7, 1, False, 1)
    i.receive(topic, payload, 7, 1, True, 1)  # DUP: same packet id, not yet acknowledged
    first, again = i.take(2)
    assert again.received_us == first.received_us
    assert again.sparkplug is None or not again.sparkplug.changes.park
    assert i.sparkplug.parking.count == 1


def test_the_bounds_dead_letter_the_oldest_with_their_own_reason() -> None:
    i, clock = intake(ParkingLimits(max_messages=2, max_age_us=10_000_000))
    node = EdgeNode("G", "E")
    node.nbirth([Metric("a", DataType.DOUBLE, 1.0)], T0_MS)
    parked = [receive(i, node.ndata({"a": float(k)}, T0_MS + k), mid=k + 1) for k in range(3)]
    assert parked[2].sparkplug is not None
    [dead] = parked[2].sparkplug.dead
    assert dead.reason == "sparkplug_unknown_alias"
    assert dead.received_us == parked[0].received_us
    assert parked[2].sparkplug.changes.unpark == [("G", "E", parked[0].received_us)]
    clock.now += 11  # past the age bound: the next message, of any topic, finds them
    other = receive(i, EdgeNode("G", "X").ndeath(), mid=9)
    assert other.sparkplug is not None
    assert [d.received_us for d in other.sparkplug.dead] == [p.received_us for p in parked[1:]]
    assert i.sparkplug.parking.count == 0


def test_a_birth_of_another_device_leaves_the_rest_parked() -> None:
    i, _clock = intake()
    node = EdgeNode("G", "E")
    receive(i, node.nbirth([Metric("a", DataType.DOUBLE, 1.0)], T0_MS))
    node.dbirth("d1", [Metric("b", DataType.DOUBLE, 1.0)], T0_MS)
    node.dbirth("d2", [Metric("c", DataType.DOUBLE, 1.0)], T0_MS)
    node.seq = 0
    waiting = receive(i, node.ddata("d2", {"c": 5.0}, T0_MS + 1), mid=2)
    assert waiting.sparkplug is not None
    assert waiting.sparkplug.changes.park
    born = receive(i, node.dbirth("d1", [Metric("b", DataType.DOUBLE, 1.0)], T0_MS + 2), mid=3)
    assert born.sparkplug is not None
    assert born.sparkplug.changes.unpark == []
    assert i.sparkplug.parking.count == 1
    born = receive(i, node.dbirth("d2", [Metric("c", DataType.DOUBLE, 1.0)], T0_MS + 3), mid=4)
    assert values(born) == [(T0_MS + 3, {"c": 1.0}), (T0_MS + 1, {"c": 5.0})]


# -- the parking as a model ---------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("park"), st.sampled_from(["n1", "n2"]), st.integers(0, 40)),
        st.tuples(st.just("take"), st.sampled_from(["n1", "n2"]), st.just(0)),
        st.tuples(st.just("expire"), st.just(""), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(OPS, st.integers(1, 4), st.integers(40, 120))
def test_nothing_parked_is_lost_and_order_is_kept(
    ops: list[tuple[str, str, int]], most: int, max_bytes: int
) -> None:
    """Every message parked comes out exactly once (taken, pushed out by a bound, or expired)
    or is still parked; each node's messages come out in receive order."""
    parking = Parking(ParkingLimits(max_messages=most, max_bytes=max_bytes, max_age_us=50))
    now = 0
    parked: list[Parked] = []
    out: list[Parked] = []
    for op, node, size in ops:
        now += 10
        if op == "park":
            message = Parked("G", node, now, "t", b"x" * size, "r")
            parked.append(message)
            out += parking.park(message)
        elif op == "take":
            out += parking.take("G", node)
        else:
            out += parking.expire(now)
    left = parking.take("G", "n1") + parking.take("G", "n2")
    assert sorted(out + left) == sorted(parked)
    assert parking.count == 0
    for node in ("n1", "n2"):
        times = [m.received_us for m in out if m.node == node]
        assert times == sorted(times)
