"""Property-based tests (hypothesis) of the mapper and of MQTT topic filter matching.

Every test runs derandomized and without an example database so CI sees the same examples on
every run; example counts keep the whole module to a few seconds.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from bridge.limits import MAX_POINTS_PER_REQUEST
from bridge.mapping.loader import load_mappings, load_mappings_text
from bridge.mapping.mapper import Mapped, Mapper
from bridge.mapping.timestamps import format_timestamp
from bridge.mapping.topics import parse_filter

REPO = Path(__file__).resolve().parents[2]
MIN_US = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
RECV_MIN_US = int(datetime(2001, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
RECV_MAX_US = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
RECV_US = int(datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()) * 1_000_000
BERLIN = ZoneInfo("Europe/Berlin")
ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{3}|\.\d{6})?Z")

PROPS = settings(derandomize=True, database=None, deadline=None, max_examples=300)
FEW = settings(derandomize=True, database=None, deadline=None, max_examples=150)


def _failure_reasons() -> frozenset[str]:
    """Every reason a PayloadError is constructed with anywhere in bridge/ (the vocabulary)."""
    found: set[str] = set()
    for source in (REPO / "bridge").rglob("*.py"):
        found.update(re.findall(r'PayloadError\(\s*"([^"]+)"', source.read_text("utf-8")))
    return frozenset(found)


REASONS = _failure_reasons()

# One rule per form of the mapping language (see the commented examples in topic-mappings.yaml).
ALL_FORMS_YAML = r"""
version: 1
rules:
  - name: drop-debug
    topic: "env/+/debug"
    ignore: true
  - name: env-json
    topic: "env/{site}/{line}"
    device_id: "{site|lower}-{line}"
    continue: true
    metrics:
      temp: temp
      first: list.0
      power_kw: {path: power.w, scale: 0.001, round: 3}
      energy_wh: {path: e, scale: 1000}
      pressure_bar: {path: p, scale: 0.001, range: [0, 16], out_of_range: reject}
      rh: {path: rh, range: [0, 100], out_of_range: clamp}
    timestamp: {field: ts, format: auto, timezone: Europe/Berlin}
  - name: env-collect
    topic: "env/{site}/+"
    device_id: "{site}-status"
    collect: {path: status, exclude: ["*.raw"], prefix: "st_"}
  - name: gateway
    topic: "gw/{gateway}/{rest#}"
    device_id: "{gateway}-{$meta.serial|slug}"
    on_error: reject_message
    metrics:
      pressure_bar: {path: p, scale: 0.001, round: 3, range: [0, 16], out_of_range: reject}
      humidity_pct: {path: rh, range: [0, 100], out_of_range: clamp}
    timestamp: {field: time, pattern: "%d.%m.%Y %H:%M:%S", timezone: Europe/Berlin,
                max_past_s: 86400, on_invalid: receive_time}
  - name: gateway-readings
    topic: "opcua/{gateway}/readings"
    device_id: "{gateway}"
    readings: {name: id, value: v, time: t, time_format: epoch_ms, where: {q: true}}
  - name: relay-state
    topic: "stat/{device}/POWER"
    device_id: "{device}"
    payload: boolean
    metric: power_on
  - name: machine-status
    topic: 'plant/{site}/{machine:press-\d+}/status'
    device_id: "{machine|upper}"
    payload: text
    metric: running
    transform: {map: {RUNNING: 1, IDLE: 0.5, STOPPED: 0}}
  - name: tele-number
    topic: "tele/{device}/{metric}"
    device_id: "{device}"
    payload: number
    metric: "{metric}"
    transform: {scale: 1000}
  - name: stamped-number
    topic: "stamped/{device}/{when}"
    device_id: "{device}"
    payload: number
    metric: v
    timestamp: {capture: when, format: epoch_s}
"""

SHIPPED = Mapper(load_mappings(REPO / "topic-mappings.yaml"))
ALL_FORMS = Mapper(load_mappings_text(ALL_FORMS_YAML, "all-forms.yaml"), max_payload_bytes=2048)


def check_invariants(mapped: Mapped) -> None:
    """Assert what every mapping outcome must satisfy, whatever the input."""
    assert mapped.records or mapped.failures or mapped.ignored or mapped.skipped_readings
    for record in mapped.records:
        assert record.device_id
        assert 0 < len(record.metrics) <= MAX_POINTS_PER_REQUEST
        for name, value in record.metrics.items():
            assert name, record  # the API refuses an empty metric name
            assert isinstance(value, float), (name, value)
            assert math.isfinite(value), (name, value)
        assert record.ts_us >= MIN_US
        text = format_timestamp(record.ts_us)
        assert ISO_Z.fullmatch(text), text
        back = datetime.fromisoformat(text) - datetime(1970, 1, 1, tzinfo=UTC)
        assert back // timedelta(microseconds=1) == record.ts_us
    for failure in mapped.failures:
        assert failure.reason, failure
        assert failure.reason in REASONS, failure.reason


# --- strategies -----------------------------------------------------------------------------

KNOWN_LEVELS = (
    "plant", "tele", "env", "gw", "opcua", "stat", "stamped", "POWER", "status", "state",
    "debug", "readings", "press-4", "berlin", "line1", "1795681920", "$SYS",
)  # fmt: skip
free_level = st.text(st.characters(exclude_characters="/", codec="utf-8"), max_size=8)
level = st.one_of(st.sampled_from(KNOWN_LEVELS), free_level, st.just(""))
first_level = st.one_of(level, level.map(lambda s: "$" + s))
random_topics = st.builds(
    lambda f, rest: "/".join([f, *rest]), first_level, st.lists(level, max_size=5)
)
rule_topics = st.sampled_from(
    [
        "plant/berlin/line1/env",
        "plant/berlin/press-4/state",
        "plant/berlin/press-4/status",
        "plant/berlin/line1/debug",
        "tele/meter-07/voltage",
        "stat/relay-1/POWER",
        "env/Berlin/line1",
        "env/berlin/debug",
        "gw/gw-1/a/b",
        "gw/gw-1",
        "opcua/gw-2/readings",
        "stamped/dev/1795681920",
        "stamped/dev/2026-11-26T08:32:00Z",
    ]
)
topics = st.one_of(rule_topics, random_topics)

received = st.integers(min_value=RECV_MIN_US, max_value=RECV_MAX_US)
any_number = st.one_of(
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-0.0, 0.0, 1e308, -1e308, 1.7976931348623157e308, 5e-324, 2**64, 10**30]),
)
json_scalars = st.one_of(st.none(), st.booleans(), any_number, st.text(max_size=12))
json_keys = st.one_of(
    st.sampled_from(["temp", "rh", "p", "e", "ts", "t", "time", "status", "meta", "id", "v", "q"]),
    st.text(max_size=6),
)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(json_keys, kids, max_size=5),
    max_leaves=20,
)
# Timestamps as devices send them: epoch numbers in any unit, ISO strings, local-time patterns.
timestamp_values = st.one_of(
    any_number,
    any_number.map(str),
    st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat),
    st.datetimes().map(lambda d: d.strftime("%d.%m.%Y %H:%M:%S")),
    st.text(max_size=20),
)


def dumps(doc: object) -> bytes:
    """The document as a JSON payload (hypothesis never generates NaN here)."""
    return json.dumps(doc, allow_nan=False).encode()


Message = tuple[str, bytes, int]  # topic, payload, receive time (epoch µs)


@st.composite
def good_times(draw: st.DrawFn, received_us: int) -> datetime:
    """A measurement time up to 12 h before the receive time, whole milliseconds."""
    back_ms = draw(st.integers(min_value=0, max_value=12 * 3600 * 1000))
    return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=received_us - back_ms * 1000)


def epoch_ms(when: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


@st.composite
def timestamps_for(draw: st.DrawFn, received_us: int, form: str) -> object:
    """A timestamp field value: usually valid in ``form`` for this receive time, else anything."""
    if draw(st.integers(0, 3)) == 0:
        return draw(timestamp_values)
    when = draw(good_times(received_us))
    if form == "epoch_ms":
        return epoch_ms(when)
    if form == "pattern":
        return when.astimezone(BERLIN).strftime("%d.%m.%Y %H:%M:%S")
    return draw(
        st.sampled_from(
            [when.isoformat(), when.astimezone(BERLIN).isoformat(), epoch_ms(when) / 1000]
        )
    )


@st.composite
def shaped_messages(draw: st.DrawFn) -> Message:
    """A topic and JSON payload shaped like one of the rules, with arbitrary field values."""
    received_us = draw(received)
    site = draw(st.sampled_from(["berlin", "Lyon", "x"]))
    num = st.one_of(any_number, json_scalars)
    shape = draw(st.sampled_from(["env", "state", "gateway", "readings", "shipped-env"]))
    if shape == "env":
        doc: object = {
            "temp": draw(num),
            "list": [draw(num)],
            "power": {"w": draw(num)},
            "e": draw(num),
            "p": draw(num),
            "rh": draw(num),
            "ts": draw(timestamps_for(received_us, "auto")),
            "status": draw(json_values),
        }
        topic = f"env/{site}/line1"
    elif shape == "state":
        ts = draw(timestamps_for(received_us, "epoch_ms"))
        doc = {"t": ts, "spindle": {"rpm": draw(num), "load": draw(num)}}
        topic = f"plant/{site}/press-4/state"
    elif shape == "shipped-env":
        ts = draw(timestamps_for(received_us, "auto"))
        doc = {"temp": draw(num), "rh": draw(num), "power": {"kw": draw(num)}, "ts": ts}
        topic = f"plant/{site}/line1/env"
    elif shape == "gateway":
        ts = draw(timestamps_for(received_us, "pattern"))
        doc = {"meta": {"serial": draw(json_scalars)}, "p": draw(num), "time": ts}
        topic = f"gw/{site}/a/b"
    else:
        element = st.fixed_dictionaries(
            {
                "id": st.one_of(st.sampled_from(["a", "b"]), json_scalars),
                "v": num,
                "t": timestamps_for(received_us, "epoch_ms"),
            },
            optional={"q": st.one_of(st.booleans(), json_scalars)},
        )
        doc = draw(st.lists(element, max_size=4))
        topic = f"opcua/{site}/readings"
    return topic, dumps(doc), received_us


@st.composite
def any_payloads(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, arbitrary text, number-like text, boolean words or JSON documents."""
    kind = draw(st.sampled_from(["bytes", "text", "number", "word", "json"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "text":
        return draw(st.text(max_size=40)).encode("utf-8", "surrogatepass")
    if kind == "number":
        return str(draw(any_number)).encode()
    if kind == "word":
        words = ["ON", "off", "true", "No", "1", "0", "RUNNING", "idle", " stopped ", ""]
        return draw(st.sampled_from(words)).encode()
    return dumps(draw(json_values))


# --- 1. any topic, any payload ------------------------------------------------------------------


@PROPS
@given(topic=topics, payload=any_payloads(), received_us=received)
def test_shipped_rules_map_any_message_without_raising(
    topic: str, payload: bytes, received_us: int
) -> None:
    """The shipped rules turn any topic and payload into valid records, failures or an ignore."""
    check_invariants(SHIPPED.map(topic, payload, received_us))


@PROPS
@given(topic=topics, payload=any_payloads(), received_us=received)
@example(topic="tele/meter-07/voltage", payload=b"1e+308", received_us=RECV_US)
def test_all_forms_rules_map_any_message_without_raising(
    topic: str, payload: bytes, received_us: int
) -> None:
    """Rules of every form turn any topic and payload into valid records, failures or skips."""
    check_invariants(ALL_FORMS.map(topic, payload, received_us))


# --- 2. JSON-structured payloads ----------------------------------------------------------------


HUGE_STATE = ("plant/berlin/press-4/state", b'{"t": 1e306, "spindle": {"rpm": 1}}', RECV_US)


@PROPS
@given(message=shaped_messages())
@example(message=HUGE_STATE)  # epoch_ms * 1e306 overflowed to inf: OverflowError (now fixed)
def test_shipped_rules_map_rule_shaped_json_without_raising(message: Message) -> None:
    """JSON shaped like the shipped rules' payloads, with any field values, maps cleanly."""
    check_invariants(SHIPPED.map(*message))


@PROPS
@given(message=shaped_messages())
@example(message=("opcua/gw/readings", b'[{"id": "a", "v": 1, "t": 1e306, "q": true}]', RECV_US))
@example(message=("env/berlin/line1", b'{"e": 1e306, "ts": "2026-11-26T11:00:00Z"}', RECV_US))
@example(message=("tele/meter-07/voltage", b"1e306", RECV_US))
def test_all_forms_rules_map_rule_shaped_json_without_raising(message: Message) -> None:
    """JSON shaped like the all-forms rules' payloads, with any field values, maps cleanly."""
    check_invariants(ALL_FORMS.map(*message))


@FEW
@given(doc=json_values, topic=topics, received_us=received)
def test_any_json_document_maps_without_raising(doc: object, topic: str, received_us: int) -> None:
    """Any JSON document on any topic maps cleanly under both rule sets."""
    payload = dumps(doc)
    check_invariants(SHIPPED.map(topic, payload, received_us))
    check_invariants(ALL_FORMS.map(topic, payload, received_us))


good_value = st.floats(min_value=0, max_value=100, allow_nan=False).map(lambda v: round(v, 3))
serials = st.text(st.characters(categories=["L", "N"], codec="ascii"), min_size=1, max_size=8)


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[Mapper, str, bytes, int, set[str]]:
    """A message every field of which its rule accepts, and the metric names it must yield."""
    received_us = draw(received)
    when = draw(good_times(received_us))
    form = draw(st.sampled_from(["env", "gateway", "readings", "state", "plain"]))
    if form == "env":
        ts = draw(st.sampled_from([when.isoformat(), when.astimezone(BERLIN).isoformat()]))
        status = draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), good_value, min_size=1))
        doc: object = {
            "temp": draw(good_value),
            "list": [draw(good_value)],
            "power": {"w": draw(good_value)},
            "e": draw(good_value),
            "p": draw(good_value) * 100,
            "rh": draw(st.floats(-50, 150)),
            "ts": ts,
            "status": status,
        }
        names = {"temp", "first", "power_kw", "energy_wh", "pressure_bar", "rh"}
        names |= {f"st_{k}" for k in status}
        return ALL_FORMS, "env/Berlin/line1", dumps(doc), received_us, names
    if form == "gateway":
        doc = {
            "meta": {"serial": draw(serials)},
            "p": draw(good_value) * 100,
            "rh": draw(st.floats(-50, 150)),
            "time": when.astimezone(BERLIN).strftime("%d.%m.%Y %H:%M:%S"),
        }
        return ALL_FORMS, "gw/gw-1/x", dumps(doc), received_us, {"pressure_bar", "humidity_pct"}
    if form == "readings":
        ids = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True))
        items = [{"id": i, "v": draw(good_value), "t": epoch_ms(when), "q": True} for i in ids]
        noise = {"id": "zz", "v": 1, "t": epoch_ms(when), "q": False}
        return ALL_FORMS, "opcua/gw/readings", dumps([*items, noise]), received_us, set(ids)
    if form == "state":
        doc = {
            "t": epoch_ms(when),
            "spindle": {"rpm": draw(st.integers(0, 10_000)), "load": draw(good_value)},
            "counters": {"parts": draw(st.integers(0, 2**53))},
        }
        names = {"spindle_rpm", "spindle_load", "parts_total"}
        return SHIPPED, "plant/berlin/press-4/state", dumps(doc), received_us, names
    topic, payload, name = draw(
        st.sampled_from(
            [
                ("tele/meter-07/voltage", b" 229.8 ", "voltage"),
                ("stat/relay-1/POWER", b"ON", "power_on"),
                ("plant/b/press-12/status", b"idle", "running"),
                ("stamped/dev/" + str(epoch_ms(when) // 1000), b"-1.5e3", "v"),
            ]
        )
    )
    return ALL_FORMS, topic, payload, received_us, {name}


@PROPS
@given(case=valid_messages())
def test_valid_shaped_messages_produce_records(
    case: tuple[Mapper, str, bytes, int, set[str]],
) -> None:
    """A message its rule fully accepts yields records with exactly the expected metrics."""
    mapper, topic, payload, received_us, names = case
    mapped = mapper.map(topic, payload, received_us)
    check_invariants(mapped)
    assert not mapped.failures, mapped.failures
    assert mapped.records
    assert {name for r in mapped.records for name in r.metrics} == names


COLLECT_NO_PREFIX = Mapper(
    load_mappings_text(
        "version: 1\nrules:\n  - name: plc\n    topic: plc/{plc}/status\n"
        '    device_id: "{plc}"\n    collect: {path: status}\n',
        "collect.yaml",
    )
)


@FEW
@given(status=json_values, received_us=received)
@example(status=42, received_us=RECV_US)
@example(status={"": 1.5, "a": 2}, received_us=RECV_US)
def test_collected_metric_names_are_never_empty(status: object, received_us: int) -> None:
    """A collect rule without prefix never emits a metric with an empty name."""
    check_invariants(COLLECT_NO_PREFIX.map("plc/p1/status", dumps({"status": status}), received_us))


# --- 3. topic filter matching against a reference -----------------------------------------------

TOPIC_WORDS = ("a", "b", "", "$SYS", "$a", "é")


def reference_match(filter_levels: list[str], topic_levels: list[str]) -> bool:
    """MQTT 3.1.1/5 §4.7 matching, written independently: '+' and '#' as the spec states them."""
    wild = ("+", "#")
    if topic_levels[0].startswith("$") and filter_levels[0] in wild:
        return False  # [MQTT-4.7.2-1]
    for i, want in enumerate(filter_levels):
        if want == "#":
            return True  # also matches the parent level: 'a/#' matches 'a'
        if i >= len(topic_levels) or want not in ("+", topic_levels[i]):
            return False
    return len(topic_levels) == len(filter_levels)


@st.composite
def filters(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A capture filter's text and the plain MQTT filter it stands for."""
    kinds = draw(st.lists(st.sampled_from(["word", "+", "capture", "regex"]), max_size=4))
    text: list[str] = []
    plain: list[str] = []
    for i, kind in enumerate(kinds):
        if kind == "word":
            word = draw(st.sampled_from(TOPIC_WORDS))
            text.append(word)
            plain.append(word)
        else:
            text.append({"+": "+", "capture": f"{{c{i}}}", "regex": f"{{x{i}:[ab]}}"}[kind])
            plain.append("+")
    tail = draw(st.sampled_from(["", "#", "{rest#}"]))
    if tail:
        text.append(tail)
        plain.append("#")
    assume(text and "/".join(text))
    return "/".join(text), plain


@settings(derandomize=True, database=None, deadline=None, max_examples=1000)
@given(
    filt=filters(),
    topic_levels=st.lists(st.sampled_from(TOPIC_WORDS), min_size=1, max_size=5),
)
@example(filt=("a/#", ["a", "#"]), topic_levels=["a"])
@example(filt=("#", ["#"]), topic_levels=["$SYS", "a"])
@example(filt=("+/a", ["+", "a"]), topic_levels=["$SYS", "a"])
@example(filt=("{c0}/#", ["+", "#"]), topic_levels=["$a"])
@example(filt=("$SYS/#", ["$SYS", "#"]), topic_levels=["$SYS"])
def test_topic_filter_match_agrees_with_reference(
    filt: tuple[str, list[str]], topic_levels: list[str]
) -> None:
    """TopicFilter.match matches exactly the topics MQTT matching does, capturing their levels."""
    text, plain = filt
    compiled = parse_filter(text)
    got = compiled.match(topic_levels)
    regex_ok = all(
        not lvl.startswith("{x") or re.fullmatch("[ab]", topic_levels[i])
        for i, lvl in enumerate(text.split("/"))
        if i < len(topic_levels)
    )
    assert (got is not None) == (reference_match(plain, topic_levels) and regex_ok)
    if got is None:
        return
    for i, lvl in enumerate(text.split("/")):
        if lvl.startswith("{c"):
            assert got[lvl[1:-1]] == topic_levels[i]
        if lvl.startswith("{x"):
            assert got[lvl[1:].split(":")[0]] == topic_levels[i]
    if text.endswith("{rest#}"):
        assert got["rest"] == "/".join(topic_levels[len(plain) - 1 :])
