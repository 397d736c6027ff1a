"""The malformed-input corpus (reliability matrix rows 14 and 15, all 24 kinds of its list) as a
table: each item with the fate ``tests/faults/test_corpus.py`` holds the bridge to, and the
mapping rules it is published against."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal

from tests.support.harness import TEST_MAPPINGS

# The harness rules (env: plant/{site}/{line}/env, plain: tele/{device}/{metric}) plus rules
# that give some kinds something to hit: one numeric field (probe), a declared range (gauge),
# a device id from the payload (serial), metric names from the payload (tags), a device id from
# a topic level (dev), a regex level (hall) and a filter starting with a wildcard (dollar).
MAPPINGS = (
    TEST_MAPPINGS
    + r"""
  - name: probe
    topic: "probe/{dev}"
    device_id: "probe-{dev}"
    metrics: {v: v}
    timestamp: {field: ts, format: auto}
  - name: gauge
    topic: "gauge/{dev}"
    device_id: "gauge-{dev}"
    metrics:
      bar: {path: p, range: [0, 16]}
      bar_clamped: {path: p, range: [0, 16], out_of_range: clamp}
    timestamp: {field: ts, format: auto}
  - name: serial
    topic: "serial/{gw}"
    device_id: "{$serial}"
    metrics: {v: v}
    timestamp: {field: ts, format: auto}
  - name: tags
    topic: "tags/{gw}"
    device_id: "tags-{gw}"
    readings: {path: r, name: id, value: v}
    timestamp: {field: ts, format: auto}
  - name: dev
    topic: "dev/{device}/reading"
    device_id: "{device}"
    payload: number
    metric: reading
  - name: hall
    topic: 'hall/{id:dev-\d+}/temp'
    device_id: "{id}"
    payload: number
    metric: temp
  - name: dollar
    topic: "+/{dev}/probe"
    device_id: "{dev}"
    payload: number
    metric: v
"""
)

CAP = 65536  # mqtt.max_payload_bytes (default): larger payloads are dead-lettered unparsed
MAX_TOPIC = 65535  # MQTT's limit for a topic in bytes; mosquitto 2.0.11 accepts exactly this

Point = tuple[str, str, int | None, float]  # device, metric, ts_us (None: receive time), value

RECEIVED = "received"  # the bridge gets it and maps it
NOT_SUBSCRIBED = "not subscribed"  # no subscription of the bridge matches: never delivered to it
BROKER_REFUSES = "broker refuses"  # mosquitto drops it (and disconnects the publisher or nacks)


@dataclass(frozen=True)
class Item:
    """One corpus message and what must become of it."""

    kind: int
    what: str
    topic: str
    payload: bytes
    reason: str | None = None  # dead-letter reason (the message's first failure); None: none
    failures: tuple[str, ...] | None = None  # every failure counted; None: just (reason,)
    points: frozenset[Point] = frozenset()  # points delivered because of this message
    fate: str = RECEIVED
    retain: bool = False
    note: str = ""  # where a demanding user might expect something else

    @property
    def counted_failures(self) -> tuple[str, ...]:
        if self.failures is not None:
            return self.failures
        return (self.reason,) if self.reason else ()


@dataclass
class Corpus:
    """The items, plus the times they were built for."""

    now_s: int
    items: list[Item] = field(default_factory=list)

    def add(self, *items: Item) -> None:
        self.items.extend(items)


def _probe(kind: int, what: str, payload: bytes, reason: str, *, note: str = "") -> Item:
    """A bad item on the one-field ``probe`` rule, topic ``probe/k<kind>-<what>``."""
    return Item(kind, what, f"probe/k{kind:02d}-{what}", payload, reason, note=note)


def _v(item_topic: str, value: float, ts_us: int | None) -> frozenset[Point]:
    """The single point ``v`` of a probe item."""
    return frozenset({(f"probe-{item_topic.split('/', 1)[1]}", "v", ts_us, value)})


def corpus(now_s: int) -> Corpus:
    """The corpus table: every kind of the matrix, each sub-variant with its expected fate."""
    c = Corpus(now_s)
    ts_s = now_s - 60  # a minute ago: plausible, inside every future/past limit
    ts_ms = ts_s * 1000
    ts_us = ts_s * 1_000_000
    tsb = b"%d" % ts_ms

    def probe_ok(kind: int, what: str, payload: bytes, value: float, at_us: int = ts_us) -> Item:
        topic = f"probe/k{kind:02d}-{what}"
        return Item(kind, what, topic, payload, points=_v(topic, value, at_us))

    # -- kind 18 first: the log line of a dead letter is rate-limited per reason, so the first
    # dead letter of each reason is the one logged; hostile text must be that one.
    c.add(
        Item(
            18,
            "ansi-payload",
            "probe/k18-ansi-payload",
            b"\x1b[2J\x1b[31m\nFAKE LOG LINE %s {}",
            "invalid_json",
        ),
        Item(
            18,
            "hostile-metric-names",
            "tags/k18-names",
            b'{"ts": %s, "r": [{"id": "\\u001b[31mred\\u001b[0m", "v": 1},'
            b' {"id": "line\\nFAKE", "v": 2}, {"id": "%%s%%n%%x", "v": 3},'
            b' {"id": "{}{0}{ts}", "v": 4}, {"id": "nul\\u0000x", "v": 5}]}' % tsb,
            "bad_metric_name",
            failures=("bad_metric_name",) * 3,
            points=frozenset(
                {
                    ("tags-k18-names", "%s%n%x", ts_us, 3.0),
                    ("tags-k18-names", "{}{0}{ts}", ts_us, 4.0),
                }
            ),
            note="a metric name with a control character drops only that metric",
        ),
        Item(
            18,
            "hostile-device-ids",
            "serial/k18-a",
            b'{"serial": "\\u001b[31mdev\\nFAKE", "v": 1, "ts": %s}' % tsb,
            "bad_device_id",
        ),
        Item(
            18,
            "nul-device-id",
            "serial/k18-b",
            b'{"serial": "dev\\u0000x", "v": 2, "ts": %s}' % tsb,
            "bad_device_id",
        ),
        Item(
            18,
            "format-device-id",
            "serial/k18-c",
            b'{"serial": "%%s%%n{}{0}", "v": 3, "ts": %s}' % tsb,
            points=frozenset({("%s%n{}{0}", "v", ts_us, 3.0)}),
        ),
        Item(
            18,
            "format-topic-level",
            "dev/%s%n{}{0}/reading",
            b"18.5",
            points=frozenset({("%s%n{}{0}", "reading", None, 18.5)}),
        ),
        Item(
            18,
            "bidi-topic-level",
            "dev/\u202egnp.exe\ufeff/reading",
            b"18.25",
            "bad_device_id",
            note="a right-to-left override in a topic level is refused in the device id",
        ),
        Item(18, "ansi-unmatched-topic", "hall/\u202e%s{}\u200b/temp", b"\x1b[31m1", "unmatched"),
    )
    for what, level in (("esc", "a\x1b[31mb"), ("newline", "a\nb"), ("nul", "a\x00b"),
                        ("del", "a\x7fb"), ("c1", "a\x85b")):  # fmt: skip
        c.add(Item(18, f"topic-{what}", f"dev/{level}/reading", b"1", fate=BROKER_REFUSES))

    # -- kinds 1-7: not JSON, or not a JSON object
    c.add(
        _probe(1, "empty", b"", "invalid_json"),
        Item(1, "empty-number", "tele/k01-empty/v", b"", "not_numeric"),
        _probe(2, "whitespace", b" \t\r\n ", "invalid_json"),
        _probe(3, "invalid-utf8", b"\xff\xfe", "invalid_json"),
        _probe(
            3, "invalid-utf8-in-string", b'{"v": 1, "note": "\xff", "ts": %s}' % tsb, "invalid_json"
        ),
        _probe(
            4,
            "bom",
            b'\xef\xbb\xbf{"v": 1, "ts": %s}' % tsb,
            "invalid_json",
            note="orjson refuses a UTF-8 BOM (RFC 8259 lets a parser ignore it)",
        ),
        _probe(5, "truncated", b'{"v":1', "invalid_json"),
        _probe(6, "trailing-garbage", b'{"v":1}x', "invalid_json"),
        _probe(7, "list", b"[]", "not_an_object"),
        _probe(7, "string", b'"s"', "not_an_object"),
        _probe(7, "number", b"42", "not_an_object"),
        _probe(7, "null", b"null", "not_an_object"),
    )
    # -- kind 8: a required field is missing
    c.add(
        _probe(8, "no-value", b'{"ts": %s}' % tsb, "missing_field"),
        _probe(8, "no-timestamp", b'{"v": 8}', "missing_timestamp"),
        Item(
            8,
            "env-one-metric",
            "plant/corpus/k08/env",
            b'{"temp": 8.5, "ts": %s}' % tsb,
            "missing_field",
            failures=("missing_field",) * 3,
            points=frozenset({("corpus-k08", "temp", ts_us, 8.5)}),
        ),
    )
    # -- kind 9: a value of the wrong type
    c.add(
        _probe(9, "string", b'{"v": "abc", "ts": %s}' % tsb, "not_numeric"),
        _probe(9, "numeric-string", b'{"v": "42", "ts": %s}' % tsb, "not_numeric"),
        _probe(9, "object", b'{"v": {"x": 1}, "ts": %s}' % tsb, "not_numeric"),
        _probe(9, "array", b'{"v": [1], "ts": %s}' % tsb, "not_numeric"),
        _probe(9, "true", b'{"v": true, "ts": %s}' % tsb, "boolean_value"),
        _probe(9, "false", b'{"v": false, "ts": %s}' % tsb, "boolean_value"),
        _probe(9, "null", b'{"v": null, "ts": %s}' % tsb, "not_numeric"),
        Item(
            9,
            "env-partial",
            "plant/corpus/k09/env",
            b'{"temp": true, "rh": "wet", "power": {"kw": 2.5, "hz": 50}, "ts": %s}' % tsb,
            "boolean_value",
            failures=("boolean_value", "not_numeric"),
            points=frozenset({("corpus-k09", "kw", ts_us, 2.5), ("corpus-k09", "hz", ts_us, 50.0)}),
        ),
    )
    # -- kinds 10-13: numbers JSON cannot hold, huge integers, deep nesting
    c.add(
        _probe(
            10,
            "nan",
            b'{"v": NaN, "ts": %s}' % tsb,
            "invalid_json",
            note="a NaN token fails the whole document: invalid_json, not non_finite",
        ),
        _probe(10, "infinity", b'{"v": Infinity, "ts": %s}' % tsb, "invalid_json"),
        _probe(10, "minus-infinity", b'{"v": -Infinity, "ts": %s}' % tsb, "invalid_json"),
        Item(10, "nan-number", "tele/k10-nan/v", b"nan", "not_numeric"),
        Item(10, "inf-number", "tele/k10-inf/v", b"Infinity", "not_numeric"),
        Item(10, "minus-inf-number", "tele/k10-minus-inf/v", b"-inf", "not_numeric"),
        _probe(11, "1e400", b'{"v": 1e400, "ts": %s}' % tsb, "invalid_json"),
        Item(11, "1e400-number", "tele/k11-overflow/v", b"1e400", "non_finite"),
        _probe(12, "4301-digits", b'{"v": 1%s, "ts": %s}' % (b"0" * 4300, tsb), "invalid_json"),
        Item(12, "4301-digits-number", "tele/k12-digits/v", b"1" + b"0" * 4300, "non_finite"),
        probe_ok(12, "2-pow-64", b'{"v": 18446744073709551616, "ts": %s}' % tsb, 2.0**64),
        _probe(
            13,
            "depth-1000",
            b'{"v": %s, "ts": %s}' % (b"[" * 1000 + b"]" * 1000, tsb),
            "not_numeric",
        ),
        _probe(
            13,
            "depth-1025",
            b'{"v": %s, "ts": %s}' % (b"[" * 1025 + b"]" * 1025, tsb),
            "invalid_json",
        ),
        _probe(13, "depth-100000", b"[" * 100_000 + b"]" * 100_000, "too_large"),
        _probe(13, "depth-30000", b"[" * 30_000 + b"]" * 30_000, "invalid_json"),
    )
    # -- kinds 14-15: duplicate keys, surrogates, NUL
    c.add(
        probe_ok(14, "duplicate-key", b'{"v": 1, "v": 2, "ts": %s}' % tsb, 2.0),
        Item(
            14,
            "duplicate-ts",
            "probe/k14-duplicate-ts",
            b'{"v": 14, "ts": %d, "ts": %s}' % (ts_ms - 5000, tsb),
            points=_v("probe/k14-duplicate-ts", 14.0, ts_us),
            note="the last of duplicate keys wins silently; no reason flags the ambiguity",
        ),
        _probe(
            15, "lone-surrogate", b'{"v": 1, "note": "\\ud800", "ts": %s}' % tsb, "invalid_json"
        ),
        _probe(
            15,
            "lone-surrogate-utf8",
            b'{"v": 1, "note": "\xed\xa0\x80", "ts": %s}' % tsb,
            "invalid_json",
        ),
        probe_ok(15, "nul-in-string", b'{"v": 15, "note": "a\\u0000b", "ts": %s}' % tsb, 15.0),
    )
    # -- kind 16: timestamps
    c.add(
        _probe(16, "negative", b'{"v": 1, "ts": -1}', "bad_timestamp"),
        _probe(16, "zero", b'{"v": 1, "ts": 0}', "bad_timestamp"),
        _probe(16, "year-3000-iso", b'{"v": 1, "ts": "3000-01-01T00:00:00Z"}', "bad_timestamp"),
        _probe(16, "year-3000-epoch-s", b'{"v": 1, "ts": 32503680000}', "bad_timestamp"),
        _probe(16, "1999", b'{"v": 1, "ts": "1999-12-31T23:59:59Z"}', "bad_timestamp"),
        probe_ok(16, "epoch-s", b'{"v": 16.1, "ts": %d}' % ts_s, 16.1),
        probe_ok(16, "epoch-ms", b'{"v": 16.2, "ts": %d}' % ts_ms, 16.2),
        probe_ok(16, "epoch-us", b'{"v": 16.3, "ts": %d}' % ts_us, 16.3),
        probe_ok(16, "epoch-ns", b'{"v": 16.4, "ts": %d}' % (ts_us * 1000), 16.4),
        probe_ok(16, "epoch-ms-string", b'{"v": 16.5, "ts": "%d"}' % ts_ms, 16.5),
        # 1e11 is read as milliseconds (seconds stop below 1e11): 1973, before 2000.
        _probe(16, "s-ms-boundary", b'{"v": 1, "ts": 100000000000}', "bad_timestamp"),
        _probe(16, "iso-without-zone", b'{"v": 1, "ts": "2026-01-01T00:00:00"}', "bad_timestamp"),
        _probe(16, "unparsable", b'{"v": 1, "ts": "yesterday"}', "bad_timestamp"),
        _probe(16, "boolean", b'{"v": 1, "ts": true}', "bad_timestamp"),
        _probe(16, "null", b'{"v": 1, "ts": null}', "bad_timestamp"),
        probe_ok(
            16,
            "20-decimals",
            b'{"v": 16.6, "ts": %d.12345678901234567890}' % ts_s,
            16.6,
            # float64 keeps ~7 decimals at this magnitude; the bridge reads the float's shortest
            # text exactly and truncates it to the µs (docs/guide/mapping-file.md, exact time)
            at_us=int(Decimal(repr(float(f"{ts_s}.12345678901234567890"))) * 1_000_000),
        ),
        probe_ok(
            16,
            "iso-with-offset",
            b'{"v": 16.7, "ts": "%s"}'
            % time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts_s)).encode(),
            16.7,
        ),
    )
    # -- kinds 17, 19 and row 15: size
    big_string = b'{"v": 1, "s": "%s", "ts": %s}' % (b"x" * (1 << 20), tsb)
    many_keys = b'{%s, "v": 1, "ts": %s}' % (
        b", ".join(b'"k%d": %d' % (i, i) for i in range(100_000)),
        tsb,
    )
    under = b'{"v": 17, "s": "", "ts": %s}' % tsb
    at_cap = under.replace(b'"s": ""', b'"s": "%s"' % (b"y" * (CAP - len(under))))
    over_cap = at_cap.replace(b'"s": "', b'"s": "y')
    c.add(
        _probe(17, "1mib-string", big_string, "too_large"),
        _probe(17, "100000-keys", many_keys, "too_large"),
        probe_ok(
            17,
            "3000-keys",
            b'{%s, "v": 17.5, "ts": %s}'
            % (b", ".join(b'"k%d": %d' % (i, i) for i in range(3000)), tsb),
            17.5,
        ),
        probe_ok(19, "exactly-64kib", at_cap, 17.0),
        _probe(19, "64kib-plus-1", over_cap, "too_large"),
        _probe(19, "1mib", b"z" * (1 << 20), "too_large"),
        _probe(19, "16mib", b"{" * (16 << 20), "too_large"),
    )
    assert len(at_cap) == CAP
    assert len(over_cap) == CAP + 1
    # -- kinds 20-21: binary payloads, another schema
    c.add(
        _probe(
            20,
            "gzip",
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xabV*S\xb2R0\xac\x05\x00",
            "invalid_json",
        ),
        _probe(20, "protobuf", b"\x08\x96\x01\x12\x07testing", "invalid_json"),
        Item(20, "gzip-number", "tele/k20-gzip/v", b"\x1f\x8b\x08\x00", "not_numeric"),
        _probe(
            21,
            "schema-v2",
            b'{"schema": 2, "data": [{"name": "v", "value": 1}], "ts": %s}' % tsb,
            "missing_field",
        ),
        _probe(
            21,
            "schema-v2-no-ts",
            b'{"schema": 2, "data": {"v": 1}, "time": %s}' % tsb,
            "missing_timestamp",
            note="the missing metric of a message without its time is not counted",
        ),
    )
    # -- kind 22: topics
    long_level = "x" * (MAX_TOPIC - len("hall//temp"))
    long_device = "d" * (MAX_TOPIC - len("dev//reading"))
    c.add(
        Item(22, "unmapped", "factory/k22/env", b'{"v": 1}', fate=NOT_SUBSCRIBED),
        Item(22, "extra-level", "plant/s0/l0/env/extra", b'{"temp": 1}', fate=NOT_SUBSCRIBED),
        Item(22, "missing-level", "plant/s0/env", b'{"temp": 1}', fate=NOT_SUBSCRIBED),
        Item(22, "empty-level-3", "plant//env", b'{"temp": 1}', fate=NOT_SUBSCRIBED),
        Item(
            22,
            "empty-level-4",
            "plant//k22/env",
            b'{"temp": 22.5, "ts": %s}' % tsb,
            "missing_field",
            failures=("missing_field",) * 3,
            points=frozenset({("-k22", "temp", ts_us, 22.5)}),
            note="an empty topic level renders into the device id ('-k22')",
        ),
        Item(22, "empty-device", "dev//reading", b"1", "bad_device_id"),
        Item(22, "regex-mismatch", "hall/oven/temp", b"250", "unmatched"),
        Item(
            22,
            "regex-match",
            "hall/dev-22/temp",
            b"22.25",
            points=frozenset({("dev-22", "temp", None, 22.25)}),
        ),
        Item(22, "longest-unmatched", f"hall/{long_level}/temp", b"1", "unmatched"),
        Item(
            22,
            "longest-device",
            f"dev/{long_device}/reading",
            b"22.75",
            "bad_device_id",
            note="a 65,523-character device id is over mapping.max_device_id_length (128)",
        ),
        Item(22, "201-levels", "dev/" + "l/" * 200 + "reading", b"1", fate=BROKER_REFUSES),
        Item(22, "sys", "$SYS/k22/probe", b"1", fate=BROKER_REFUSES),
        Item(22, "dollar", "$k22/d/probe", b"1", fate=NOT_SUBSCRIBED),
        Item(
            22,
            "wildcard-first",
            "k22/d/probe",
            b"22.125",
            points=frozenset({("d", "v", None, 22.125)}),
        ),
    )
    # -- kind 23: the same message twice, and a retained one replayed after the re-subscribe
    # (a retained plain number: test_retained_replay_of_a_receive_time_reading_is_stored_once)
    twice = b'{"temp": 23.5, "rh": 23, "power": {"kw": 2.3, "hz": 50}, "ts": %s}' % tsb
    env23 = frozenset(
        {("corpus-k23", m, ts_us, v) for m, v in (("temp", 23.5), ("rh", 23.0), ("kw", 2.3),
                                                   ("hz", 50.0))})  # fmt: skip
    c.add(
        Item(23, "twice-1", "plant/corpus/k23/env", twice, points=env23),
        Item(23, "twice-2", "plant/corpus/k23/env", twice, points=env23),
        Item(
            23,
            "retained-json",
            "probe/k23-retained",
            b'{"v": 23.25, "ts": %s}' % tsb,
            points=_v("probe/k23-retained", 23.25, ts_us),
            retain=True,
        ),
    )
    # -- kind 24: signed zero, subnormals, the engineering range
    c.add(
        probe_ok(24, "minus-zero", b'{"v": -0.0, "ts": %s}' % tsb, -0.0),
        probe_ok(24, "subnormal", b'{"v": 5e-324, "ts": %s}' % tsb, 5e-324),
        Item(
            24,
            "underflow",
            "probe/k24-underflow",
            b'{"v": 1e-400, "ts": %s}' % tsb,
            points=_v("probe/k24-underflow", 0.0, ts_us),
            note="a literal below the smallest subnormal becomes 0.0 without a word",
        ),
        Item(
            24,
            "minus-zero-number",
            "tele/k24-minus-zero/v",
            b"-0.0",
            points=frozenset({("k24-minus-zero", "v", None, -0.0)}),
        ),
        Item(
            24,
            "subnormal-number",
            "tele/k24-subnormal/v",
            b"4.9e-324",
            points=frozenset({("k24-subnormal", "v", None, 5e-324)}),
        ),
        Item(
            24,
            "in-range",
            "gauge/k24-in",
            b'{"p": 16, "ts": %s}' % tsb,
            points=frozenset(
                {("gauge-k24-in", "bar", ts_us, 16.0), ("gauge-k24-in", "bar_clamped", ts_us, 16.0)}
            ),
        ),
        Item(
            24,
            "above-range",
            "gauge/k24-above",
            b'{"p": 16.5, "ts": %s}' % tsb,
            "out_of_range",
            points=frozenset({("gauge-k24-above", "bar_clamped", ts_us, 16.0)}),
        ),
        Item(
            24,
            "below-range",
            "gauge/k24-below",
            b'{"p": -1e-300, "ts": %s}' % tsb,
            "out_of_range",
            points=frozenset({("gauge-k24-below", "bar_clamped", ts_us, 0.0)}),
        ),
        Item(
            24,
            "minus-zero-range",
            "gauge/k24-minus-zero",
            b'{"p": -0.0, "ts": %s}' % tsb,
            points=frozenset(
                {
                    ("gauge-k24-minus-zero", "bar", ts_us, -0.0),
                    ("gauge-k24-minus-zero", "bar_clamped", ts_us, -0.0),
                }
            ),
        ),
    )
    return c
