"""discover's pure core: payload kinds, the topic survey and its caps, patterns, drafts that
pass check --strict and test, --against counts, and tap's batching."""

from __future__ import annotations

import orjson
import pytest

from bridge.batcher import take_batch
from bridge.config.yamlfile import load_yaml_text
from bridge.errors import BrokerError
from bridge.lab.mixedplant import MixedPlant
from bridge.mapping.loader import compile_mappings, load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.mapping.overlap import rule_warnings
from bridge.mapping.selftest import run_mapping_tests
from bridge.mapping.spec import MappingFile
from bridge.models import SpooledRecord
from bridge.mqtt.side import SideSession, side_client_id
from bridge.recipes import catalogue, names, recipe, recognise
from bridge.settings import MqttSettings
from bridge.survey.against import Against, gaps, pattern_topics
from bridge.survey.drafts import draft_mapping
from bridge.survey.kinds import classify
from bridge.survey.patterns import group_topics
from bridge.survey.report import TREE_LINES, topic_tree
from bridge.survey.tap import Tap
from bridge.survey.topics import Survey

T0 = 1_795_000_000_000_000


def _survey(messages: list[tuple[str, bytes]], max_topics: int = 5000) -> Survey:
    survey = Survey(max_topics)
    for i, (topic, payload) in enumerate(messages):
        survey.observe(topic, payload, T0 + i, retained=False)
    return survey


def _plant() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for rnd in range(3):
        for d in range(1, 6):
            sensor = {"Time": "2026-12-03T10:00:00", "ENERGY": {"Power": 40 + d + rnd}}
            out.append((f"tele/plug-{d}/SENSOR", orjson.dumps(sensor)))
            out.append((f"tele/plug-{d}/LWT", b"Online"))
            out.append((f"stat/plug-{d}/POWER", b"ON" if rnd % 2 else b"OFF"))
            out.append((f"relay/r-{d}/state", b"ON" if rnd % 2 else b"OFF"))
            for site in ("berlin", "lyon"):
                for m in ("temp", "pressure"):
                    out.append((f"plant/{site}/m-{d}/{m}", b"%d.5" % (d + rnd)))
                out.append((f"plant/{site}/m-{d}/mode", (b"RUNNING", b"IDLE")[rnd % 2]))
            out.append((f"lab/room-{d}/climate", b'{"ts": 1795000000000, "temp": 21.5}'))
            out.append((f"cam/c{d}/snap", b"\xff\xd8\x00\x01"))
    return out


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"21.5", "number"),
        (b" -3 ", "number"),
        (b"ON", "boolean"),
        (b"false", "boolean"),
        (b'{"a": 1, "b": {"c": 2.5}, "s": "x"}', "json"),
        (b"[1, 2]", "json-other"),
        (b"RUNNING", "text"),
        (b"\xff\xd8\x00", "binary"),
        (b"", "empty"),
    ],
)
def test_payload_kinds(payload: bytes, kind: str) -> None:
    """Each payload is classified as the payload form a rule for it would need."""
    assert classify(payload).kind == kind


def test_json_kind_lists_numeric_fields() -> None:
    """A JSON object's numeric leaves are listed as dotted paths; strings and booleans not."""
    assert classify(b'{"a": 1, "b": {"c": 2.5}, "s": "x", "t": true}').fields == ("a", "b.c")


def test_survey_caps_topics_and_says_so() -> None:
    """Beyond max_topics, messages are counted but no topic is kept, and the survey is capped."""
    survey = _survey([(f"t/{i}", b"1") for i in range(50)], max_topics=10)
    assert len(survey.topics) == 10
    assert survey.capped
    assert survey.untracked_messages == 40
    assert survey.messages == 50


def test_survey_keeps_two_distinct_samples_and_marks_retained() -> None:
    """At most two distinct samples per topic; retained messages count and are marked."""
    survey = Survey()
    for i in range(5):
        survey.observe("a/b", b"%d" % (i % 3), T0 + i, retained=i == 0)
    stats = survey.topics["a/b"]
    assert [s.payload for s in stats.samples] == [b"0", b"1"]
    assert stats.samples[0].retained
    assert (stats.messages, stats.retained, survey.retained) == (5, 1, 1)


def test_patterns_split_where_kinds_would_overlap() -> None:
    """Numbers and state words under one tree become separate filters that never meet."""
    survey = _survey(_plant())
    patterns = group_topics([t for t in survey.topics.values() if t.recipe is None])
    filters = {p.filter_text: p.kind for p in patterns}
    assert filters["plant/{site}/{device}/mode"] == "text"
    assert filters["plant/{site}/{device}/temp"] == "number"
    assert filters["relay/{device}/state"] == "boolean"
    assert filters["cam/{device}/snap"] == "binary"
    assert not any(f.startswith(("tele/", "stat/")) for f in filters)  # Tasmota's recipe has them


def test_plain_metric_capture_only_for_name_like_levels() -> None:
    """sensors/s001 is a device, plant/x/temp a metric: capture names follow the values."""
    survey = _survey(
        [(f"sensors/s{i:03d}", b"1") for i in range(5)]
        + [(f"boiler/{m}", b"2") for m in ("temp", "pressure", "flow")]
    )
    names = {p.filter_text for p in group_topics(survey.topics.values())}
    assert names == {"sensors/{device}", "boiler/{metric}"}


def test_the_tasmota_recipe_recognises_tasmota_topics_and_its_tests_pass() -> None:
    """discover offers the Tasmota recipe for Tasmota's topics with Tasmota's payloads only, and
    the recipe's own tests pass."""
    [tasmota] = [r for r in catalogue() if r.name == "tasmota"]
    assert recognise("tele/plug-1/SENSOR", b'{"Time": "x", "ENERGY": {"Power": 1}}') is tasmota
    assert recognise("tele/plug-1/STATE", b'{"Time": "x"}') is tasmota
    assert recognise("tele/plug-1/SENSOR", b"not json {") is not tasmota
    assert recognise("lab/room-1/climate", b'{"temp": 21.5}') is None
    data, index = load_yaml_text(tasmota.text, "tasmota")
    rules = compile_mappings(data, index)
    tests = list(MappingFile.model_validate(data).tests or [])
    assert tests
    assert all(o.passed for o in run_mapping_tests(rules, tests, index))


def test_draft_passes_check_strict_and_test_with_recipe_once() -> None:
    """The draft compiles without rule-order warnings, its tests pass, the recipe's rule comes
    once and first, and generic rules map what they were drafted from."""
    survey = _survey(_plant())
    draft = draft_mapping(survey, ["a header"])
    assert draft.problems == []
    data, index = load_yaml_text(draft.text, "draft.yaml")
    rules = compile_mappings(data, index)
    assert rules[0].name == "tasmota-sensor"
    assert [r.name for r in rules].count("tasmota-sensor") == 1
    assert rule_warnings(rules) == []
    tests = list(MappingFile.model_validate(data).tests or [])
    assert len(tests) >= len(rules)
    assert all(o.passed for o in run_mapping_tests(rules, tests, index))
    mapped = Mapper(rules).map("plant/lyon/m-9/temp", b"7.25", T0)
    assert [(r.device_id, r.metrics) for r in mapped.records] == [("lyon-m-9", {"temp": 7.25})]
    by_name = {r.name: r for r in rules}
    assert by_name["draft-cam-device-snap"].ignore
    assert by_name["draft-lab-device-climate"].timestamp is not None


def _mixed_plant_survey(rounds: int = 3) -> tuple[MixedPlant, Survey]:
    plant = MixedPlant("127.0.0.1", 1)  # never connects: only its messages are used
    survey = Survey()
    for n in range(rounds * len(plant.topics)):
        topic, payload, retain = plant.message(n)
        survey.observe(topic, payload, T0 + n, retained=retain and n < len(plant.topics))
    return plant, survey


def test_the_mixed_plant_draft_maps_every_convention_as_its_recipe_does() -> None:
    """On the mixed plant every recipe recognises its convention's topics; the draft passes
    check --strict and test, and maps each recognised message exactly as that recipe alone
    does (ESPHome's node names and the plain-number prefix narrowed, so neither takes Home
    Assistant's states nor Zigbee2MQTT's or the custom trees' topics)."""
    plant, survey = _mixed_plant_survey()
    for t in plant.topics:
        recognised = t.convention if t.convention in names() else None
        assert survey.topics[t.topic].recipe == recognised, t.topic
    draft = draft_mapping(survey)
    assert draft.problems == []
    assert [r.name for r in draft.recipes] == list(names())
    assert draft.narrowed == {
        "esphome": ["boiler-room", "cold-store", "press-hall", "pump-house"],
        "plain-numbers": ["plant7"],
    }
    combined = Mapper(load_mappings_text(draft.text, "draft.yaml"))
    alone = {name: Mapper(load_mappings_text(recipe(name).text, name)) for name in names()}
    checked = set()
    for n in range(len(plant.topics)):
        topic, payload, _ = plant.message(n)
        convention = plant.topics[n].convention
        if convention not in alone:
            continue
        got, want = combined.map(topic, payload, T0), alone[convention].map(topic, payload, T0)
        assert (got.rule, got.records, got.ignored) == (want.rule, want.records, want.ignored)
        assert [f.reason for f in got.failures] == [f.reason for f in want.failures], topic
        checked.add(convention)
    assert checked == set(names())
    by_rule = {r.name: r for r in combined.rules}
    assert by_rule["draft-sensors-device"].payload == "number"  # not split by ESPHome's status
    assert "draft-door-device-open" in by_rule  # not left to the plain-number recipe


def test_narrowed_recipe_tests_give_way_to_the_plants_samples() -> None:
    """A recipe narrowed to the first levels seen keeps only its tests on them and gains one
    test from a real sample per rule that took a topic."""
    survey = _survey(
        [("pump-1/sensor/flow/state", b"3.5"), ("pump-1/status", b"online")] * 2
        + [("zigbee2mqtt/hall", b'{"temperature": 21.5}')] * 2
    )
    draft = draft_mapping(survey)
    assert draft.problems == []
    assert draft.narrowed == {"esphome": ["pump-1"]}
    tests = list(MappingFile.model_validate(load_yaml_text(draft.text, "d")[0]).tests or [])
    esphome_topics = {t.topic for t in tests if not t.topic.startswith("zigbee2mqtt/")}
    assert esphome_topics == {"pump-1/sensor/flow/state", "pump-1/status"}
    assert "{device:pump-1}/status" in draft.text


def test_against_counts_missed_and_dead_lettered_per_pattern() -> None:
    """--against: topics no rule matches are missed; a matching rule that fails dead-letters
    with its reason; patterns the file maps have neither."""
    partial = load_mappings_text(
        """
version: 1
rules:
  - {name: lab, topic: "lab/{room}/climate", device_id: "{room}", metrics: {rh: rh}}
  - {name: power, topic: "relay/{d}/state", device_id: "{d}", payload: boolean, metric: power_on}
"""
    )
    survey = Survey()
    against = Against(Mapper(partial), survey)
    for i, (topic, payload) in enumerate(_plant()):
        survey.observe(topic, payload, T0 + i, retained=False)
        against.observe(topic, payload, T0 + i)
    patterns = group_topics([t for t in survey.topics.values() if t.recipe is None])
    found = {g.pattern: g for g in gaps(against, pattern_topics(patterns, survey))}
    assert found["lab/{device}/climate"].dead_lettered == 15
    assert "dead_letter:missing_field" in found["lab/{device}/climate"].details
    assert found["plant/{site}/{device}/temp"].missed == 30
    assert found["relay/{device}/state"].missed == found["relay/{device}/state"].dead_lettered == 0
    assert found["recipe tasmota"].missed == 45  # SENSOR, LWT and POWER, 15 each


def test_tap_batches_as_the_bridge_does() -> None:
    """tap's requests hold at most 100 points, full ones released at once, and equal what the
    sender's batcher builds from the same records."""
    rules = load_mappings_text(
        """
version: 1
rules:
  - {name: env, topic: "env/{d}", device_id: "{d}", collect: {path: ""}}
"""
    )
    tap = Tap(Mapper(rules))
    records: list[SpooledRecord] = []
    bodies = []
    for i in range(70):
        payload = orjson.dumps({"a": i, "b": i, "c": i})
        out = tap.take(f"env/d{i}", payload, T0 + i, retained=False)
        assert out.verdict == "mapped"
        for r in out.records:
            records.append(SpooledRecord(len(records) + 1, r.device_id, r.ts_us, r.metrics, 0))
        bodies += tap.full_requests()
    assert len(bodies) == 2  # 210 points: two full requests while messages keep coming
    bodies += tap.flush()
    expected = []
    while records:
        batch = take_batch(records, 100)
        expected.append(batch.body_objects())
        records = records[len(batch.records) :]
    assert bodies == expected
    assert tap.points == 210
    assert tap.take("other/x", b"1", T0, retained=True).verdict == "unmatched"


def test_side_session_refuses_the_bridges_client_id() -> None:
    """A side session under the bridge's own client id is refused before connecting, and the
    generated ids are fresh and short enough for any 3.1.1 broker."""
    settings = MqttSettings(client_id="metriqo-bridge")
    with pytest.raises(BrokerError, match="bridge's own"):
        SideSession(settings, None, ["#"], client_id="metriqo-bridge")
    ids = {side_client_id("discover") for _ in range(20)}
    assert len(ids) == 20
    assert all(i.startswith("mqb-discover-") and len(i) <= 23 for i in ids)


def test_topic_tree_is_bounded_and_says_what_it_left_out() -> None:
    """The printed tree shows at most 12 children per level and TREE_LINES lines, and says
    what it summed up or cut."""
    topics = [f"a/{i}/{j}/{k}/x" for i in range(40) for j in range(13) for k in range(13)]
    survey = _survey([(t, b"1") for t in topics])
    lines = topic_tree(survey, 1.0)
    assert len(lines) == TREE_LINES + 1
    assert lines[-1].endswith("more line(s); --json lists every topic")
    assert any(line.strip().startswith("… 1 more, ") for line in lines)


def test_discover_drafts_one_sparkplug_rule_per_group_that_maps_the_nodes() -> None:
    """Sparkplug topics become a payload: sparkplug rule per group (not generic patterns of
    binary payloads); the draft compiles and maps a BIRTH and DATA by alias of those nodes."""
    from bridge.sparkplug.datatypes import DataType
    from bridge.sparkplug.encode import EdgeNode, Metric

    nodes = [EdgeNode("plant", "press-1"), EdgeNode("plant", "press-2"), EdgeNode("lab", "l1")]
    messages: list[tuple[str, bytes]] = []
    for node in nodes:
        messages.append(node.nbirth([Metric("rpm", DataType.INT32, 100)], T0 // 1000))
        messages.append(node.ndata({"rpm": 120}, T0 // 1000 + 1000))
    messages.append(("spBv1.0/STATE/scada", b'{"online": true, "timestamp": 1}'))
    survey = _survey(_plant() + messages)
    draft = draft_mapping(survey, ["a header"])
    assert draft.problems == []
    assert "Sparkplug B group plant: 4 message(s) of 2 edge node(s)" in draft.text
    data, index = load_yaml_text(draft.text, "draft.yaml")
    rules = compile_mappings(data, index)
    spb = [r for r in rules if r.payload == "sparkplug"]
    assert [r.name for r in spb] == ["sparkplug-lab", "sparkplug-plant"]
    assert not any(r.topic.subscription.startswith("spBv1.0") for r in rules if r not in spb)
    mapper = Mapper(rules)
    mapper.map(*messages[0], T0)
    mapped = mapper.map(*messages[1], T0)
    assert mapped.rule == "sparkplug-plant"
    assert mapped.failures == []
    assert [(r.device_id, r.metrics) for r in mapped.records] == [("press-1", {"rpm": 120.0})]
