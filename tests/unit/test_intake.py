"""Unit tests of the intake (pure, no network): mapping each received message into pending
records or a dead letter, counting outcomes once per commit, and recognising redeliveries."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc

import pytest

from bridge.intake import Intake, Pending
from bridge.mapping.loader import load_mappings_text, make_mapper
from bridge.metrics import BridgeMetrics
from bridge.models import PayloadExcerpt
from bridge.settings import MappingSettings
from tests.unit.clock import FakeClock

NOW_S = 1_731_657_600.0  # 2024-11-15T08:00:00Z
NOW_US = int(NOW_S * 1_000_000)
ENV_OK = b'{"temp": 1.5, "rh": 40, "ts": 1731657500000}'  # payload carries its time

MAPPINGS = """
version: 1
rules:
  - name: env
    topic: "plant/{site}/env"
    device_id: "{site}"
    metrics: {temp: temp, rh: rh}
    timestamp: {field: ts, format: auto}
  - name: plain
    topic: "tele/{device}/{metric}"
    device_id: "{device}"
    payload: number
    metric: "{metric}"
  - name: quiet
    topic: "noise/#"
    ignore: true
"""


def make_intake(clock: FakeClock | None = None) -> tuple[Intake, BridgeMetrics]:
    """An intake over the test rules with a fake wall clock (frozen unless advanced)."""
    metrics = BridgeMetrics()
    mapper = make_mapper(load_mappings_text(MAPPINGS, "test.yaml"), MappingSettings())
    return Intake(mapper, metrics, wall_clock=clock or FakeClock(NOW_S)), metrics


def value(metrics: BridgeMetrics, name: str, **labels: str) -> float:
    """One sample of the registry; 0 when the series does not exist yet."""
    got = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if got is None else got


def receive(
    intake: Intake, topic: str, payload: bytes, mid: int = 1, *, dup: bool = False
) -> Pending:
    """Receive one QoS 1 message of connection generation 1; return what it became."""
    before = len(intake)
    intake.receive(topic, payload, mid, 1, dup, 1)
    assert len(intake) == before + 1
    batch = intake.take(len(intake))
    intake.put_back(batch)
    return batch[-1]


def test_outcomes_are_counted_in_metrics_once_per_flush() -> None:
    """Counts wait in the intake until flush_counters(); a second flush adds nothing."""
    intake, m = make_intake()
    intake.receive("plant/s1/env", ENV_OK, 1, 1, False, 1)
    intake.receive("plant/s2/env", b'{"temp": "x", "rh": 40, "ts": 1731657500000}', 2, 1, False, 1)
    intake.receive("plant/s3/env", b"{oops", 3, 1, False, 1)
    intake.receive("tele/d1/temp", b"21.5", 4, 1, False, 1)
    intake.receive("nowhere/x", b"1", 5, 1, False, 1)
    intake.receive("noise/a", b"1", 6, 1, False, 1)
    assert value(m, "metriqo_bridge_messages_received_total") == 0
    assert value(m, "metriqo_bridge_points_mapped_total", rule="env") == 0
    for _ in range(2):
        intake.flush_counters()
        assert value(m, "metriqo_bridge_messages_received_total") == 6
        assert value(m, "metriqo_bridge_messages_unmatched_total") == 1
        assert value(m, "metriqo_bridge_points_mapped_total", rule="env") == 3  # 2 + rh of s2
        assert value(m, "metriqo_bridge_points_mapped_total", rule="plain") == 1
        assert value(m, "metriqo_bridge_messages_ignored_total", rule="quiet") == 1
        failures = "metriqo_bridge_mapping_failures_total"
        assert value(m, failures, rule="env", reason="not_numeric") == 1
        assert value(m, failures, rule="env", reason="invalid_json") == 1
        assert value(m, failures, rule="", reason="unmatched") == 1


def test_bad_payload_becomes_a_dead_letter_with_its_reason() -> None:
    """Invalid JSON gives no records and a dead letter naming the reason, rule, topic and the
    original bytes, stamped with the receive time."""
    intake, _ = make_intake()
    p = receive(intake, "plant/s3/env", b"{oops")
    assert p.records == []
    assert p.dead is not None
    assert (p.dead.reason, p.dead.rule, p.dead.topic, p.dead.payload) == (
        "invalid_json",
        "env",
        "plant/s3/env",
        b"{oops",
    )
    assert p.dead.received_us == p.received_us == NOW_US
    assert "invalid_json" in p.dead.detail


def test_partly_mapped_message_keeps_its_good_points_and_is_dead_lettered() -> None:
    """One bad metric: the good ones become records, the message a dead letter saying so."""
    intake, _ = make_intake()
    p = receive(intake, "plant/s2/env", b'{"temp": "x", "rh": 40, "ts": 1731657500000}')
    assert [r.metrics for r in p.records] == [{"rh": 40.0}]
    assert p.dead is not None
    assert p.dead.reason == "not_numeric"
    assert p.dead.detail.startswith("partially mapped (1 point(s) kept)")


def test_unmatched_topics_are_sampled_and_dead_lettered() -> None:
    """A topic no rule matches is counted in the unmatched sample and kept as a dead letter."""
    intake, _ = make_intake()
    receive(intake, "nowhere/x", b"1", 1)
    p = receive(intake, "nowhere/x", b"2", 2)
    receive(intake, "tele/d1/temp", b"3", 3)  # matched: not sampled
    assert p.dead is not None
    assert (p.dead.reason, p.dead.rule) == ("unmatched", "")
    assert intake.unmatched.recent() == [
        {"topic": "nowhere/x", "count": 2, "last_seen_us": p.received_us}
    ]


def test_dup_redelivery_of_a_receive_stamped_message_reuses_its_receive_time() -> None:
    """A DUP with the same id, topic and payload gets the first receive time, so its record
    id is the same and the spool stores it once."""
    clock = FakeClock(NOW_S)
    intake, _ = make_intake(clock)
    first = receive(intake, "tele/d1/temp", b"21.5", 9)
    clock.advance(5.0)
    again = receive(intake, "tele/d1/temp", b"21.5", 9, dup=True)
    assert first.stamped
    assert again.received_us == first.received_us
    assert again.records[0].record_id == first.records[0].record_id
    assert intake.take(10)[0].digest == again.digest != b""


@pytest.mark.parametrize(
    ("topic", "payload", "mid", "dup"),
    [
        ("tele/d1/temp", b"21.5", 9, False),  # not marked as a redelivery
        ("tele/d1/temp", b"99.0", 9, True),  # another payload under the same id
        ("tele/d2/temp", b"21.5", 9, True),  # another topic
        ("tele/d1/temp", b"21.5", 10, True),  # another id
    ],
    ids=["no-dup-flag", "other-payload", "other-topic", "other-mid"],
)
def test_anything_but_the_same_message_gets_a_new_receive_time(
    topic: str, payload: bytes, mid: int, dup: bool
) -> None:
    """Only a DUP matching id, topic and payload is taken for the earlier message."""
    clock = FakeClock(NOW_S)
    intake, _ = make_intake(clock)
    first = receive(intake, "tele/d1/temp", b"21.5", 9)
    clock.advance(5.0)
    other = receive(intake, topic, payload, mid, dup=dup)
    assert other.received_us == first.received_us + 5_000_000


def test_a_puback_read_or_a_lost_session_forgets_the_receive_time() -> None:
    """Once the broker has read the PUBACK it may reuse the id, and after a lost session
    nothing is redelivered: a DUP then is a new message with a new receive time. Until the
    broker has read it, a PUBACK may be lost, and a DUP is still the same message."""
    clock = FakeClock(NOW_S)
    intake, metrics = make_intake(clock)
    first = receive(intake, "tele/d1/temp", b"1", 1)
    receive(intake, "tele/d1/temp", b"2", 2)
    clock.advance(1.0)
    # PUBACK written, not known read (no fence passed): the redelivery is recognised.
    assert receive(intake, "tele/d1/temp", b"1", 1, dup=True).received_us == NOW_US
    intake.acks_read([(1, first.received_us)])
    assert value(metrics, "metriqo_bridge_mqtt_puback_fences_total") == 1
    clock.advance(1.0)
    assert receive(intake, "tele/d1/temp", b"1", 1, dup=True).received_us == NOW_US + 2_000_000
    intake.session_lost()
    clock.advance(1.0)
    assert receive(intake, "tele/d1/temp", b"2", 2, dup=True).received_us == NOW_US + 3_000_000


def test_a_puback_read_for_an_older_message_keeps_a_reused_ids_entry() -> None:
    """The broker reused an id before the fence of its earlier PUBACK passed: that fence
    forgets neither the newer message's receive time nor its spool row."""
    clock = FakeClock(NOW_S)
    intake, _ = make_intake(clock)
    old = receive(intake, "tele/d1/temp", b"1", 5)
    intake.persisted([(5, old.received_us)])
    clock.advance(1.0)
    new = receive(intake, "tele/d1/temp", b"1", 5)  # DUP=0: the id was reused
    intake.persisted([(5, new.received_us)])
    intake.acks_read([(5, old.received_us)])
    assert intake.take_acked() == (False, [])
    clock.advance(1.0)
    again = receive(intake, "tele/d1/temp", b"1", 5, dup=True)
    assert again.received_us == new.received_us
    intake.acks_read([(5, new.received_us)])
    assert intake.take_acked() == (False, [(5, new.received_us)])


def test_every_packet_id_unacknowledged_holds_no_memory_per_message() -> None:
    """A drain through mosquitto keeps an entry for each of the 65,535 packet ids until a
    fence passes (its PINGRESP comes after the whole flood): the table is allocated once, so a
    full one costs no memory per message, and a DUP still matches only its own entry (same
    id, topic and payload)."""
    clock = FakeClock(NOW_S)
    intake, _ = make_intake(clock)
    intake.receive("tele/d0/temp", b"0", 1, 1, False, 1)  # mapper caches warmed
    intake.take(1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for mid in range(1, 65_536):
            intake.receive(f"tele/d{mid % 50}/temp", b"%d" % mid, mid, 1, False, 1)
            intake.take(1)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1_000_000, f"{held} bytes held for 65,535 unacknowledged messages"
    first = receive(intake, "tele/d7/temp", b"7", 7)
    intake.take(1)
    clock.advance(1.0)
    assert receive(intake, "tele/d7/temp", b"7", 7, dup=True).received_us == first.received_us
    intake.take(1)
    assert receive(intake, "tele/d7/temp", b"8", 7, dup=True).received_us != first.received_us
    intake.take(1)
    assert receive(intake, "tele/d8/temp", b"8", 7, dup=True).received_us != first.received_us


def test_restored_entries_are_recognised_and_reported_when_acknowledged() -> None:
    """Receive times a crashed run committed are reused, and once the broker has read their
    PUBACK they are handed to the next commit once (handed back by untake_acked when that
    commit fails)."""
    clock = FakeClock(NOW_S)
    intake, _ = make_intake(clock)
    first = receive(intake, "tele/d1/temp", b"21.5", 9)
    intake.take(10)
    restored = make_intake(clock)[0]
    restored.restore_unacked({9: ("tele/d1/temp", first.digest, first.received_us)})
    clock.advance(60.0)
    again = receive(restored, "tele/d1/temp", b"21.5", 9, dup=True)
    assert again.received_us == first.received_us
    rx = first.received_us
    restored.acks_read([(9, rx), (9, rx)])  # a second ack of the same id is not reported twice
    restored.acks_read([(4, rx)])  # never persisted: nothing to delete from the spool
    forget, acked = restored.take_acked()
    assert (forget, acked) == (False, [(9, rx)])
    restored.untake_acked(forget, acked)
    assert restored.take_acked() == (False, [(9, rx)])
    assert restored.take_acked() == (False, [])


def test_session_lost_tells_the_next_commit_to_forget_everything() -> None:
    """session_lost drops persisted ids and pending acks and asks for the table to be cleared
    once; a failed commit keeps that request."""
    intake, _ = make_intake()
    intake.persisted([(1, NOW_US), (2, NOW_US)])
    intake.acks_read([(1, NOW_US)])
    intake.session_lost()
    intake.acks_read([(2, NOW_US)])  # forgotten: not reported
    forget, acked = intake.take_acked()
    assert (forget, acked) == (True, [])
    intake.untake_acked(forget, acked)
    assert intake.take_acked() == (True, [])
    assert intake.take_acked() == (False, [])


def test_put_back_keeps_receive_order() -> None:
    """A batch returned after a failed commit goes back in front, in its original order."""
    intake, _ = make_intake()
    for mid in range(1, 6):
        intake.receive("tele/d1/temp", b"%d" % mid, mid, 1, False, 1)
    batch = intake.take(3)
    assert [p.mid for p in batch] == [1, 2, 3]
    intake.receive("tele/d1/temp", b"6", 6, 1, False, 1)
    intake.put_back(batch)
    assert [p.mid for p in intake.take(100)] == [1, 2, 3, 4, 5, 6]
    assert intake.take(5) == []


def test_not_accepting_drops_nothing_into_pending_and_counts_nothing() -> None:
    """While shutting down, a message is left to the broker: not pending, not counted."""
    intake, m = make_intake()
    intake.accepting = False
    intake.receive("tele/d1/temp", b"1", 1, 1, False, 1)
    intake.receive("nowhere/x", b"1", 2, 1, False, 1)
    intake.flush_counters()
    assert len(intake) == 0
    assert intake.unmatched.recent() == []
    assert value(m, "metriqo_bridge_messages_received_total") == 0


def test_receive_times_strictly_increase_even_when_the_clock_does_not() -> None:
    """Identical plain payloads in the same microsecond (or with the clock stepping back) get
    distinct, increasing receive times, hence distinct record ids."""
    clock = FakeClock(NOW_S)
    intake, _ = make_intake(clock)
    for mid in range(1, 4):
        intake.receive("tele/d1/temp", b"1", mid, 1, False, 1)
    clock.advance(-10.0)
    intake.receive("tele/d1/temp", b"1", 4, 1, False, 1)
    batch = intake.take(10)
    times = [p.received_us for p in batch]
    assert times == [NOW_US, NOW_US + 1, NOW_US + 2, NOW_US + 3]
    assert len({p.records[0].record_id for p in batch}) == 4


def test_pending_carries_what_the_commit_and_the_ack_need() -> None:
    """Each pending message keeps packet id, QoS and connection generation for its PUBACK."""
    intake, _ = make_intake()
    intake.receive("plant/s1/env", ENV_OK, 42, 1, False, 7)
    intake.receive("tele/d1/temp", b"1", 0, 0, False, 7)
    env, plain = intake.take(2)
    assert (env.mid, env.qos, env.generation, env.stamped) == (42, 1, 7, False)
    assert env.records[0].ts_us == 1_731_657_500_000_000  # the payload's own time
    assert (plain.qos, plain.stamped, plain.digest) == (0, False, b"")


async def test_wait_returns_once_a_message_is_pending() -> None:
    """wait() blocks while nothing is pending and returns after the next receive."""
    intake, _ = make_intake()
    waiter = asyncio.create_task(intake.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    intake.receive("tele/d1/temp", b"1", 1, 1, False, 1)
    async with asyncio.timeout(5):
        await waiter


def _excerpt(payload: bytes, keep: int = 16) -> PayloadExcerpt:
    """What the MQTT wire hands on for a payload it streamed past."""
    digest = hashlib.blake2b(payload, digest_size=8).digest()
    return PayloadExcerpt(payload[:keep], len(payload), digest)


def test_a_payload_streamed_past_is_too_large_with_its_whole_size() -> None:
    """An excerpt on a matched topic is a ``too_large`` dead letter naming the whole size
    (never parsed); its receive-time entry uses the hash of the whole payload."""
    intake, _ = make_intake()
    big = b'{"temp": 1.5, "pad": "' + b"x" * 200_000 + b'"}'
    p = receive(intake, "plant/s1/env", _excerpt(big))
    assert p.records == []
    assert p.dead is not None
    assert (p.dead.reason, p.dead.payload) == ("too_large", big[:16])
    assert "200024 bytes > cap 65536" in p.dead.detail
    assert p.digest == hashlib.blake2b(big, digest_size=8).digest()


def test_a_payload_streamed_past_keeps_the_rules_order_of_decisions() -> None:
    """Routing comes before the size check, as for any payload: on an ignored topic it is
    ignored, on a topic no rule matches it is an unmatched dead letter."""
    intake, _ = make_intake()
    assert receive(intake, "noise/a", _excerpt(b"1" * 100_000)).dead is None
    unmatched = receive(intake, "nowhere/x", _excerpt(b"1" * 100_000), 2).dead
    assert unmatched is not None
    assert unmatched.reason == "unmatched"


@pytest.mark.parametrize(
    "payload", [b"{oops", b"x" * 100_000], ids=["invalid-json", "streamed-past"]
)
def test_a_redelivered_dead_letter_is_stored_once(payload: bytes) -> None:
    """A dead-lettered QoS 1 message is remembered like a receive-stamped one; its DUP
    redelivery (same id, topic and payload, in this run or after a restart) is acknowledged
    again but brings no second dead letter."""
    clock = FakeClock(NOW_S)
    intake, _ = make_intake(clock)
    sent = _excerpt(payload) if len(payload) > 65536 else payload
    first = receive(intake, "plant/s3/env", sent, 9)
    assert first.dead is not None
    assert first.stamped  # persisted in the spool's unacked table with the dead letter
    clock.advance(5.0)
    again = receive(intake, "plant/s3/env", sent, 9, dup=True)
    assert again.dead is None
    assert not again.stamped
    restored = make_intake(clock)[0]
    restored.restore_unacked({9: ("plant/s3/env", first.digest, first.received_us)})
    assert receive(restored, "plant/s3/env", sent, 9, dup=True).dead is None
    # Not a redelivery: a dead letter of its own.
    assert receive(intake, "plant/s3/env", b"{other", 9, dup=True).dead is not None
