"""Unit tests of the mapper: YAML rules compiled by load_mappings_text, applied by Mapper."""

from __future__ import annotations

import gzip
import random
from datetime import UTC, datetime

import orjson
import pytest

from bridge.errors import PayloadError
from bridge.limits import MAX_POINTS_PER_REQUEST
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapped, Mapper
from bridge.models import Record

T0 = datetime(2024, 11, 15, 8, 0, 0, tzinfo=UTC)
T0_US = int(T0.timestamp()) * 1_000_000
RECV_US = T0_US + 1_500_000  # receive time, 1.5 s after the reading
WIDE = 250  # metrics in the "wide" rule: more than two requests' worth

WIDE_METRICS = "".join(f"      m{i:03d}: v.{i}\n" for i in range(WIDE))
RULES_YAML = f"""\
version: 1
rules:
  - name: env
    topic: plant/{{site}}/{{device}}/env
    device_id: "{{site}}-{{device}}"
    metrics:
      temp: sensors.temp
      hum: sensors.hum
      first: readings.0
    timestamp:
      field: meta.ts
  - name: strict
    topic: strict/{{device}}
    device_id: "{{device}}"
    on_error: reject_message
    metrics: {{a: a, b: b}}
  - name: loose
    topic: loose/{{device}}
    device_id: "{{device}}"
    metrics: {{a: a, b: b}}
  - name: num
    topic: num/{{device}}/{{metric}}
    device_id: "{{device}}"
    payload: number
    metric: "{{metric}}"
  - name: wide
    topic: wide/{{device}}
    device_id: "{{device}}"
    metrics:
{WIDE_METRICS}"""


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    """The mapper for RULES_YAML with the default 64 KiB payload cap."""
    return Mapper(load_mappings_text(RULES_YAML, "mappings.yaml"), max_payload_bytes=65536)


def payload(doc: object) -> bytes:
    """JSON-encode a test document."""
    return orjson.dumps(doc)


def reasons(mapped: Mapped) -> list[str]:
    """Failure reasons of one mapped message, in order."""
    return [f.reason for f in mapped.failures]


def env_doc(ts: object = "2024-11-15T08:00:00Z", **sensors: object) -> dict[str, object]:
    """A payload for the 'env' rule."""
    values: dict[str, object] = {"temp": 21.5, "hum": 40}
    values.update(sensors)
    return {"meta": {"ts": ts}, "sensors": values, "readings": [7, 8, 9]}


# -- successful mapping -----------------------------------------------------------------------


def test_json_metrics_are_read_by_nested_path_and_array_index(mapper: Mapper) -> None:
    """Dotted paths reach nested objects and numeric segments index arrays."""
    out = mapper.map("plant/north/d1/env", payload(env_doc()), RECV_US)
    assert out.rule == "env"
    assert out.failures == []
    assert out.records == [
        Record("north-d1", T0_US, {"temp": 21.5, "hum": 40.0, "first": 7.0}, RECV_US)
    ]
    assert out.points == 3


def test_timestamp_field_sets_the_record_time(mapper: Mapper) -> None:
    """The record carries the payload's timestamp (any supported form), not the receive time."""
    for ts in ("2024-11-15T09:00:00+01:00", T0_US // 1_000_000, T0_US // 1000, str(T0_US)):
        out = mapper.map("plant/north/d1/env", payload(env_doc(ts=ts)), RECV_US)
        assert [r.ts_us for r in out.records] == [T0_US], ts
        assert out.records[0].received_us == RECV_US


def test_receive_time_is_used_when_the_rule_has_no_timestamp(mapper: Mapper) -> None:
    """A rule without 'timestamp' stamps records with the receive time."""
    out = mapper.map("loose/d9", payload({"a": 1, "b": 2.5}), RECV_US)
    assert out.records == [Record("d9", RECV_US, {"a": 1.0, "b": 2.5}, RECV_US)]


@pytest.mark.parametrize(
    ("body", "value"),
    [(b"1013.25", 1013.25), (b" -3.5e2\n", -350.0), (b"+7", 7.0), (b".5", 0.5), (b"0", 0.0)],
)
def test_plain_number_payload_takes_its_metric_name_from_the_topic(
    mapper: Mapper, body: bytes, value: float
) -> None:
    """A 'number' rule maps a bare decimal payload to the metric named by the topic."""
    out = mapper.map("num/d2/pressure", body, RECV_US)
    assert out.failures == []
    assert out.records == [Record("d2", RECV_US, {"pressure": value}, RECV_US)]


def test_extra_payload_fields_are_ignored(mapper: Mapper) -> None:
    """Fields no rule names do not produce points or failures."""
    out = mapper.map("loose/d1", payload({"a": 1, "b": 2, "zzz": "text", "n": None}), RECV_US)
    assert out.failures == []
    assert out.points == 2


def test_subscriptions_are_the_rule_filters_with_captures_as_plus(mapper: Mapper) -> None:
    """The mapper subscribes with each rule's filter, captures turned into '+'."""
    assert mapper.subscriptions == ["plant/+/+/env", "strict/+", "loose/+", "num/+/+", "wide/+"]


# -- failures from the malformed payload corpus ---------------------------------------------------

DEEP = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
GZIP = gzip.compress(b'{"a": 1, "b": 2}', mtime=0)  # stable test ids


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        ("loose/d1", b"", "invalid_json"),
        ("loose/d1", b"   \n\t", "invalid_json"),
        ("loose/d1", b"\xff\xfe", "invalid_json"),
        ("loose/d1", b'{"a": 1', "invalid_json"),
        ("loose/d1", b'{"a": 1}x', "invalid_json"),
        ("loose/d1", b'{"a": NaN, "b": 1}', "invalid_json"),
        ("loose/d1", b'{"a": Infinity, "b": 1}', "invalid_json"),
        ("loose/d1", b'{"a": -Infinity, "b": 1}', "invalid_json"),
        ("loose/d1", b'{"a": 1e400, "b": 1}', "invalid_json"),
        ("loose/d1", b'{"a": ' + b"9" * 5000 + b', "b": 1}', "invalid_json"),
        ("loose/d1", DEEP, "invalid_json"),
        ("loose/d1", DEEP_OBJECT, "invalid_json"),
        ("loose/d1", GZIP, "invalid_json"),
        ("loose/d1", b'{"a": "\\ud800", "b": 1}', "invalid_json"),
        ("loose/d1", b"[]", "not_an_object"),
        ("loose/d1", b'"s"', "not_an_object"),
        ("loose/d1", b"42", "not_an_object"),
        ("loose/d1", b"null", "not_an_object"),
        ("num/d1/p", b"", "not_numeric"),
        ("num/d1/p", b"abc", "not_numeric"),
        ("num/d1/p", b"1_000", "not_numeric"),
        ("num/d1/p", b"1,5", "not_numeric"),
        ("num/d1/p", b"0x10", "not_numeric"),
        ("num/d1/p", b"NaN", "not_numeric"),
        ("num/d1/p", b"inf", "not_numeric"),
        ("num/d1/p", b'{"v": 1}', "not_numeric"),
        ("num/d1/p", b"1 2", "not_numeric"),
        ("num/d1/p", GZIP, "not_numeric"),
        ("num/d1/p", b"1e400", "non_finite"),
        ("num/d1/p", b"9" * 5000, "non_finite"),
        ("num//p", b"1", "bad_device_id"),
        ("num/d1/", b"1", "bad_metric_name"),
        ("plant/north/d1/env", payload({"sensors": {"temp": 1}}), "missing_timestamp"),
        ("plant/north/d1/env", payload(env_doc(ts="2024-11-15T08:00:00")), "bad_timestamp"),
        ("plant/north/d1/env", payload(env_doc(ts=True)), "bad_timestamp"),
        ("plant/north/d1/env", payload(env_doc(ts=0)), "bad_timestamp"),
        ("plant/north/d1/env", payload(env_doc(ts="3000-01-01T00:00:00Z")), "bad_timestamp"),
        ("nowhere/d1", b'{"a": 1}', "unmatched"),
        ("$SYS/broker/load", b"1", "unmatched"),
        ("loose/d1/extra", b'{"a": 1}', "unmatched"),
    ],
)
def test_malformed_message_is_a_failure_with_its_reason(
    mapper: Mapper, topic: str, body: bytes, reason: str
) -> None:
    """Each kind of malformed message yields no records and one failure with its reason."""
    out = mapper.map(topic, body, RECV_US)
    assert out.records == []
    assert reasons(out) == [reason]
    assert all(isinstance(f, PayloadError) for f in out.failures)


def test_unmatched_topic_has_no_rule(mapper: Mapper) -> None:
    """A message no rule matches reports rule None."""
    assert mapper.map("nowhere", b"1", RECV_US).rule is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "boolean_value"),
        (False, "boolean_value"),
        ("abc", "not_numeric"),
        ("12", "not_numeric"),
        (None, "not_numeric"),
        ([1], "not_numeric"),
        ({"x": 1}, "not_numeric"),
    ],
)
def test_wrong_value_type_drops_that_metric_only(
    mapper: Mapper, value: object, reason: str
) -> None:
    """With drop_metric a non-numeric value is a failure while the other metrics are kept."""
    out = mapper.map("loose/d1", payload({"a": value, "b": 2}), RECV_US)
    assert reasons(out) == [reason]
    assert out.records == [Record("d1", RECV_US, {"b": 2.0}, RECV_US)]


def test_missing_field_drops_that_metric_only(mapper: Mapper) -> None:
    """A missing metric field is a missing_field failure; present metrics are still mapped."""
    out = mapper.map("loose/d1", payload({"b": 3}), RECV_US)
    assert reasons(out) == ["missing_field"]
    assert [r.metrics for r in out.records] == [{"b": 3.0}]


def test_array_index_out_of_range_is_a_missing_field(mapper: Mapper) -> None:
    """An array index beyond the array (or into a non-array) is a missing_field failure."""
    doc = env_doc()
    doc["readings"] = []
    out = mapper.map("plant/north/d1/env", payload(doc), RECV_US)
    assert reasons(out) == ["missing_field"]
    doc["readings"] = {"0": 5}
    assert reasons(mapper.map("plant/north/d1/env", payload(doc), RECV_US)) == []
    doc["readings"] = 5
    assert reasons(mapper.map("plant/north/d1/env", payload(doc), RECV_US)) == ["missing_field"]


def test_object_with_no_metric_fields_yields_no_records(mapper: Mapper) -> None:
    """An object holding none of the rule's fields yields one failure per metric and no record."""
    out = mapper.map("loose/d1", b"{}", RECV_US)
    assert out.records == []
    assert reasons(out) == ["missing_field", "missing_field"]


def test_reject_message_drops_the_whole_message_on_any_metric_failure(mapper: Mapper) -> None:
    """With reject_message one bad metric rejects the message; drop_metric keeps the rest."""
    body = payload({"a": 1, "b": "oops"})
    strict = mapper.map("strict/d1", body, RECV_US)
    loose = mapper.map("loose/d1", body, RECV_US)
    assert reasons(strict) == reasons(loose) == ["not_numeric"]
    assert strict.records == []
    assert loose.records == [Record("d1", RECV_US, {"a": 1.0}, RECV_US)]


def test_reject_message_maps_a_clean_message_normally(mapper: Mapper) -> None:
    """A reject_message rule still maps a message without problems."""
    out = mapper.map("strict/d1", payload({"a": 1, "b": 2}), RECV_US)
    assert out.failures == []
    assert out.points == 2


def test_payload_over_the_cap_is_refused_before_parsing() -> None:
    """A payload larger than max_payload_bytes is a too_large failure, whatever its content."""
    small = Mapper(load_mappings_text(RULES_YAML, "mappings.yaml"), max_payload_bytes=64)
    ok = payload({"a": 1, "b": 2})
    assert small.map("loose/d1", ok, RECV_US).failures == []
    big = payload({"a": 1, "b": 2, "pad": "x" * 64})
    out = small.map("loose/d1", big, RECV_US)
    assert reasons(out) == ["too_large"]
    assert out.rule == "loose"
    assert reasons(small.map("num/d1/p", b" " * 64 + b"1", RECV_US)) == ["too_large"]


def test_default_cap_refuses_one_mebibyte(mapper: Mapper) -> None:
    """The default 64 KiB cap refuses a 1 MiB payload as too_large."""
    big = b'{"a": 1, "b": "' + b"x" * (1 << 20) + b'"}'
    assert reasons(mapper.map("loose/d1", big, RECV_US)) == ["too_large"]


def test_future_limit_is_configurable() -> None:
    """max_future_s bounds how far ahead of the receive time a payload timestamp may be."""
    rules = load_mappings_text(RULES_YAML, "mappings.yaml")
    ahead = payload(env_doc(ts="2024-11-15T08:10:00Z"))  # 10 min after T0
    assert reasons(Mapper(rules, max_future_s=3600).map("plant/n/d/env", ahead, T0_US)) == []
    out = Mapper(rules, max_future_s=60).map("plant/n/d/env", ahead, T0_US)
    assert reasons(out) == ["bad_timestamp"]


def test_unicode_digit_path_segment_does_not_raise() -> None:
    """A field path segment like '²' (isdigit but not a decimal) never makes map() raise."""
    rules = load_mappings_text(
        'version: 1\nrules:\n  - {name: r, topic: t, device_id: d, metrics: {v: "a.²"}}\n',
        "mappings.yaml",
    )
    out = Mapper(rules).map("t", b'{"a": [1]}', RECV_US)
    assert reasons(out) == ["missing_field"]


# -- splitting and record ids -----------------------------------------------------------------


def wide_doc(n: int = WIDE) -> bytes:
    """A payload for the 'wide' rule with ``n`` values."""
    return payload({"v": [float(i) for i in range(n)]})


def test_more_than_100_metrics_are_split_into_records_of_at_most_100(mapper: Mapper) -> None:
    """A message with 250 metrics becomes records of 100, 100 and 50 points, nothing lost."""
    out = mapper.map("wide/d1", wide_doc(), RECV_US)
    assert out.failures == []
    assert [len(r.metrics) for r in out.records] == [100, 100, 50]
    assert all(len(r.metrics) <= MAX_POINTS_PER_REQUEST for r in out.records)
    merged: dict[str, float] = {}
    for r in out.records:
        assert (r.device_id, r.ts_us, r.received_us) == ("d1", RECV_US, RECV_US)
        assert merged.keys().isdisjoint(r.metrics)
        merged.update(r.metrics)
    assert merged == {f"m{i:03d}": float(i) for i in range(WIDE)}
    assert len({r.record_id for r in out.records}) == 3


def test_exactly_100_metrics_stay_in_one_record(mapper: Mapper) -> None:
    """A message with exactly 100 good metrics is one record (the others missing fields)."""
    out = mapper.map("wide/d1", wide_doc(100), RECV_US)
    assert [len(r.metrics) for r in out.records] == [100]
    assert reasons(out) == ["missing_field"] * (WIDE - 100)


def test_record_id_is_stable_for_the_same_message(mapper: Mapper) -> None:
    """Mapping the same message again (e.g. a redelivery, even later) gives the same record ids."""
    body = payload(env_doc())
    first = mapper.map("plant/north/d1/env", body, RECV_US)
    again = mapper.map("plant/north/d1/env", body, RECV_US + 60_000_000)
    assert [r.record_id for r in first.records] == [r.record_id for r in again.records]
    assert len(first.records[0].record_id) == 16
    split1 = mapper.map("wide/d1", wide_doc(), RECV_US)
    split2 = mapper.map("wide/d1", wide_doc(), RECV_US)
    assert [r.record_id for r in split1.records] == [r.record_id for r in split2.records]


def test_record_id_differs_for_another_timestamp_metric_set_or_device(mapper: Mapper) -> None:
    """The record id changes with the timestamp, the set of metric names and the device."""
    base = mapper.map("plant/north/d1/env", payload(env_doc()), RECV_US).records[0].record_id
    later = mapper.map(
        "plant/north/d1/env", payload(env_doc(ts="2024-11-15T08:00:00.000001Z")), RECV_US
    )
    fewer = mapper.map("plant/north/d1/env", payload(env_doc(hum="n/a")), RECV_US)
    other = mapper.map("plant/north/d2/env", payload(env_doc()), RECV_US)
    ids = {base, later.records[0].record_id, fewer.records[0].record_id, other.records[0].record_id}
    assert len(ids) == 4


def test_record_id_ignores_values_so_a_redelivery_with_the_same_time_dedupes(
    mapper: Mapper,
) -> None:
    """Same device, timestamp and metric names give the same id even if values differ."""
    one = mapper.map("plant/north/d1/env", payload(env_doc(temp=1.0)), RECV_US)
    two = mapper.map("plant/north/d1/env", payload(env_doc(temp=2.0)), RECV_US)
    assert one.records[0].record_id == two.records[0].record_id


# -- robustness -------------------------------------------------------------------------------

TOPICS = ["plant/north/d1/env", "strict/d1", "loose/d1", "num/d1/p", "wide/d1", "nowhere"]


def test_mapper_never_raises_on_random_bytes(mapper: Mapper) -> None:
    """Hundreds of random byte payloads on every rule come back as results, never exceptions."""
    rng = random.Random(20241115)
    for i in range(400):
        body = rng.randbytes(rng.choice([0, 1, 2, 3, 8, 64, 500, 5000]))
        if i % 4 == 0:
            body = b"{" + body  # reach deeper into the JSON parser
        for topic in TOPICS:
            out = mapper.map(topic, body, RECV_US)
            assert out.records or out.failures


def random_value(rng: random.Random, depth: int = 0) -> object:
    """A random JSON value biased toward the edge cases the mapper must classify."""
    pool: list[object] = [
        rng.randint(-(2**63), 2**64 - 1),
        rng.random() * 10 ** rng.randint(-320, 308),
        -0.0,
        5e-324,
        1.7976931348623157e308,
        T0_US // 1_000_000,
        T0_US,
        T0_US * 1000,
        "2024-11-15T08:00:00Z",
        "2024-11-15T08:00:00",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+14:00",
        "1" * 400,
        "-1",
        "",
        "\x00\u202e%s{}\x1b[31m",
        True,
        None,
    ]
    if depth < 3 and rng.random() < 0.2:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 3 and rng.random() < 0.2:
        return {k: random_value(rng, depth + 1) for k in ("0", "ts", "temp", "a")}
    return rng.choice(pool)


def test_mapper_never_raises_on_random_json_documents(mapper: Mapper) -> None:
    """Random JSON with edge-case values in the mapped fields never makes map() raise."""
    rng = random.Random(7)
    for _ in range(500):
        doc = {
            "meta": {"ts": random_value(rng)},
            "sensors": {"temp": random_value(rng), "hum": random_value(rng)},
            "readings": random_value(rng),
            "a": random_value(rng),
            "b": random_value(rng),
            "v": [random_value(rng) for _ in range(rng.randint(0, 120))],
        }
        for topic in TOPICS:
            out = mapper.map(topic, payload(doc), RECV_US)
            assert out.records or out.failures
            for r in out.records:
                assert 0 < len(r.metrics) <= MAX_POINTS_PER_REQUEST
                assert all(isinstance(v, float) for v in r.metrics.values())
