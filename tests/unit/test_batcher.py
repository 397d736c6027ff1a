"""Unit tests of packing spooled records into API requests (pure, no I/O)."""

from __future__ import annotations

import random

import pytest

from bridge.batcher import Batch, dominant_device, take_batch, take_fair_batches
from bridge.models import SpooledRecord

T0_US = 1_731_657_600_000_000  # 2024-11-15T08:00:00Z


def sr(
    seq: int, n: int = 1, device: str = "d1", ts_us: int = T0_US, prefix: str = "m"
) -> SpooledRecord:
    """A spooled record with ``n`` metrics named ``<prefix>0..``."""
    return SpooledRecord(
        seq, device, ts_us, {f"{prefix}{i}": float(seq + i) for i in range(n)}, ts_us
    )


def test_batch_never_exceeds_max_points() -> None:
    """The batch is the longest prefix whose points fit in max_points."""
    records = [sr(1, 40), sr(2, 40), sr(3, 40), sr(4, 5)]
    batch = take_batch(records, 100)
    assert batch.seqs == [1, 2]
    assert batch.points == 80


def test_batch_fills_exactly_to_max_points() -> None:
    """Records that exactly fill max_points are all taken."""
    batch = take_batch([sr(1, 60), sr(2, 40), sr(3, 1)], 100)
    assert (batch.seqs, batch.points) == ([1, 2], 100)


def test_batch_stops_at_the_first_record_that_does_not_fit() -> None:
    """A smaller later record is not pulled ahead of one that did not fit (order is kept)."""
    batch = take_batch([sr(1, 90), sr(2, 20), sr(3, 1)], 100)
    assert batch.seqs == [1]


def test_batch_always_takes_at_least_one_record() -> None:
    """A first record larger than max_points is still taken alone, so the spool drains."""
    batch = take_batch([sr(1, 100), sr(2, 1)], 10)
    assert (batch.seqs, batch.points) == ([1], 100)


def test_empty_input_gives_an_empty_batch() -> None:
    """No records give an empty batch."""
    batch = take_batch([], 100)
    assert (batch.records, batch.points, batch.body_objects()) == ((), 0, [])


def test_random_inputs_respect_size_order_and_minimum() -> None:
    """For random record sizes a batch is a non-empty, in-order prefix within max_points."""
    rng = random.Random(42)
    for _ in range(300):
        records = [sr(i, rng.randint(1, 100)) for i in range(1, rng.randint(2, 20))]
        max_points = rng.randint(1, 100)
        batch = take_batch(records, max_points)
        assert list(batch.records) == records[: len(batch.records)]
        assert len(batch.records) >= 1
        assert batch.points == sum(r.points for r in batch.records)
        assert batch.points <= max_points or len(batch.records) == 1
        rest = records[len(batch.records) :]
        if rest:
            assert batch.points + rest[0].points > max_points


def test_body_objects_merge_same_device_and_timestamp() -> None:
    """Records of one device and timestamp with disjoint metrics become one object."""
    batch = take_batch(
        [sr(1, 2, prefix="a"), sr(2, 1, prefix="b"), sr(3, 1, device="d2"), sr(4, 1, prefix="c")],
        100,
    )
    assert batch.body_objects() == [
        {
            "device_id": "d1",
            "timestamp": "2024-11-15T08:00:00Z",
            "metrics": {"a0": 1.0, "a1": 2.0, "b0": 2.0, "c0": 4.0},
        },
        {"device_id": "d2", "timestamp": "2024-11-15T08:00:00Z", "metrics": {"m0": 3.0}},
    ]


def test_body_objects_keep_separate_objects_on_metric_name_collision() -> None:
    """A record repeating a metric name of the same device and time gets its own object."""
    batch = take_batch([sr(1, 2), sr(2, 1), sr(3, 1, prefix="x")], 100)
    objects = batch.body_objects()
    assert [o["metrics"] for o in objects] == [{"m0": 1.0, "m1": 2.0}, {"m0": 2.0, "x0": 3.0}]
    sizes = [len(m) for o in objects if isinstance(m := o["metrics"], dict)]
    assert sum(sizes) == batch.points


def test_body_objects_keep_different_timestamps_apart() -> None:
    """Records of one device at different timestamps are separate objects."""
    batch = take_batch([sr(1, 1), sr(2, 1, ts_us=T0_US + 1_000, prefix="b")], 100)
    assert [o["timestamp"] for o in batch.body_objects()] == [
        "2024-11-15T08:00:00Z",
        "2024-11-15T08:00:00.001Z",
    ]


def test_body_objects_do_not_alias_the_spooled_metrics() -> None:
    """Merging never mutates the metrics dicts of the spooled records."""
    first, second = sr(1, 1, prefix="a"), sr(2, 1, prefix="b")
    take_batch([first, second], 100).body_objects()
    assert first.metrics == {"a0": 1.0}
    assert second.metrics == {"b0": 2.0}


def test_single_object_mode_stops_at_another_device_or_timestamp() -> None:
    """With single_object the batch holds only records merging into the first one's object."""
    records = [
        sr(1, 1, prefix="a"),
        sr(2, 1, prefix="b"),
        sr(3, 1, device="d2"),
        sr(4, 1, prefix="c"),
    ]
    batch = take_batch(records, 100, single_object=True)
    assert batch.seqs == [1, 2]
    assert len(batch.body_objects()) == 1
    later = [sr(1, 1), sr(2, 1, ts_us=T0_US + 1, prefix="b")]
    assert take_batch(later, 100, single_object=True).seqs == [1]


def test_single_object_mode_stops_at_a_metric_name_collision() -> None:
    """With single_object a record repeating a metric name starts the next batch."""
    batch = take_batch([sr(1, 2), sr(2, 1, prefix="x"), sr(3, 1)], 100, single_object=True)
    assert batch.seqs == [1, 2]
    assert len(batch.body_objects()) == 1


def test_single_object_mode_still_respects_max_points() -> None:
    """single_object batches are also capped at max_points."""
    batch = take_batch([sr(1, 60, prefix="a"), sr(2, 60, prefix="b")], 100, single_object=True)
    assert batch.seqs == [1]


def test_idempotency_key_depends_only_on_seqs_and_metric_names() -> None:
    """The same seqs and metric names give the same key (across retries and restarts); other
    seqs, or a part of a record's metrics (a refused record is bisected), another key."""
    a = take_batch([sr(1), sr(2)], 100)
    same_seqs_other_values = Batch((sr(1, 1, device="x"), sr(2)), 2)
    assert a.idempotency_key == take_batch([sr(1), sr(2)], 100).idempotency_key
    assert a.idempotency_key == same_seqs_other_values.idempotency_key
    whole = Batch((sr(5, 4),), 4)
    part = Batch((SpooledRecord(5, "d1", T0_US, {"m0": 5.0, "m1": 6.0}, T0_US),), 2)
    rest = Batch((SpooledRecord(5, "d1", T0_US, {"m2": 7.0, "m3": 8.0}, T0_US),), 2)
    assert len({whole.idempotency_key, part.idempotency_key, rest.idempotency_key}) == 3
    keys = {
        a.idempotency_key,
        take_batch([sr(1)], 100).idempotency_key,
        take_batch([sr(2), sr(1)], 100).idempotency_key,
        take_batch([sr(1), sr(3)], 100).idempotency_key,
        take_batch([sr(12)], 100).idempotency_key,
    }
    assert len(keys) == 5
    assert len(a.idempotency_key) == 24
    int(a.idempotency_key, 16)


@pytest.mark.parametrize(
    ("offset_us", "text"),
    [
        (0, "2024-11-15T08:00:00Z"),
        (500_000, "2024-11-15T08:00:00.500Z"),
        (123_456, "2024-11-15T08:00:00.123456Z"),
    ],
)
def test_timestamps_are_formatted_as_utc_with_z(offset_us: int, text: str) -> None:
    """Object timestamps are ISO 8601 UTC ending in 'Z' at the value's precision."""
    batch = take_batch([sr(1, ts_us=T0_US + offset_us)], 100)
    assert batch.body_objects()[0]["timestamp"] == text


def test_fair_batches_give_each_device_an_equal_quantum_in_order() -> None:
    """Across per-device queues, each device gets about max_points / devices per request (at
    least one record), its records in order and none skipped; the batch is in seq order."""
    heavy = [sr(i, 4, device="heavy") for i in range(1, 200)]
    light = [sr(1000 + i, 4, device=f"q{i}") for i in range(3)]
    batches = take_fair_batches([heavy, *[[r] for r in light]], 2, 100)
    first = batches[0]
    assert first.points == 100
    assert [r.device_id for r in first.records if r.device_id != "heavy"] == ["q0", "q1", "q2"]
    assert first.seqs == sorted(first.seqs)
    heavy_seqs = [r.seq for b in batches for r in b.records if r.device_id == "heavy"]
    assert heavy_seqs == list(range(1, len(heavy_seqs) + 1))  # in order, none skipped
    assert sum(b.points for b in batches) == 200


def test_fair_batches_return_a_partial_batch_only_first() -> None:
    """As oldest-first: a partial batch after a full one waits for its linger."""
    assert [b.points for b in take_fair_batches([[sr(i, 10) for i in range(15)]], 4, 100)] == [100]
    assert [b.points for b in take_fair_batches([[sr(1, 10)], [sr(2, 5, "e")]], 4, 100)] == [15]


def test_fair_batches_of_single_objects_take_turns() -> None:
    """With one object per request, the devices take turns (objects of one point fill a
    request of one point, so all four are taken)."""
    a = [sr(i, 1, device="a", ts_us=T0_US + i) for i in range(1, 4)]
    b = [sr(10 + i, 1, device="b", ts_us=T0_US + 10 + i) for i in range(3)]
    got = take_fair_batches([a, b], 4, 1, single_object=True)
    assert [x.records[0].device_id for x in got] == ["a", "b", "a", "b"]


def test_dominant_device_holds_more_than_half_of_the_points() -> None:
    """Fair batches are only needed when one device holds most of a request."""
    assert dominant_device([take_batch([sr(1, 60), sr(2, 40, device="e")], 100)]) == "d1"
    assert dominant_device([take_batch([sr(1, 50), sr(2, 50, device="e")], 100)]) is None
