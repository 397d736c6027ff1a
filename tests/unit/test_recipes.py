"""The recipe library: every recipe is a valid, strict-clean mapping file whose tests pass, is
shipped as package data, and recognises its own sample messages — and nothing crashes the
recognisers, whatever the bytes."""

from __future__ import annotations

import fnmatch
import tomllib
from importlib import resources
from pathlib import Path

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cli.main import main
from bridge.config.yamlfile import load_yaml_text
from bridge.errors import EX_CONFIG, ConfigError
from bridge.mapping import mapper
from bridge.mapping.loader import compile_mappings
from bridge.mapping.overlap import example_topic, rule_warnings
from bridge.mapping.selftest import run_mapping_tests
from bridge.mapping.spec import MappingFile
from bridge.mapping.topics import parse_filter
from bridge.recipes import catalogue, recipe, recognise, recognisers

REPO = Path(__file__).resolve().parents[2]
NAMES = (
    "tasmota",
    "zigbee2mqtt",
    "shelly-gen2",
    "esphome",
    "ha-statestream",
    "opcua-pubsub-json",
    "telegraf-json",
    "kepware-iot-gateway",
    "plain-numbers",
)


def _samples(name: str) -> list[tuple[str, bytes, bool]]:
    """(topic, payload, expects points) of each test in a recipe."""
    doc = yaml.safe_load(recipe(name).text)
    out = []
    for test in doc["tests"]:
        payload = (
            test["payload"].encode("utf-8")
            if "payload" in test
            else orjson.dumps(test["payload_json"])
        )
        out.append((test["topic"], payload, bool(test.get("expect"))))
    return out


def test_the_catalogue_has_every_recipe_of_the_interface_in_order() -> None:
    """catalogue() lists the nine recipes by the names discover relies on, each with a title."""
    assert tuple(r.name for r in catalogue()) == NAMES
    assert all(r.title and "\n" not in r.title for r in catalogue())


@pytest.mark.parametrize("name", NAMES)
def test_a_recipe_is_strict_clean_and_its_tests_pass(name: str) -> None:
    """The recipe compiles, draws no rule-order warning (check --strict) and has tests, which
    all pass through the real mapper, including at least one that expects points."""
    data, index = load_yaml_text(recipe(name).text, f"{name}.yaml")
    rules = compile_mappings(data, index)
    assert rule_warnings(rules) == []
    tests = list(MappingFile.model_validate(data).tests or [])
    assert any(t.expect for t in tests)
    outcomes = run_mapping_tests(rules, tests, index)
    assert [o.problems for o in outcomes if not o.passed] == []


@pytest.mark.parametrize("name", NAMES)
def test_a_recipes_subscriptions_never_overlap(name: str) -> None:
    """No topic matches two of a recipe's distinct subscriptions: a broker may deliver a copy
    per matching subscription, which would send the same reading twice."""
    data, index = load_yaml_text(recipe(name).text, f"{name}.yaml")
    subscriptions = sorted({r.topic.subscription for r in compile_mappings(data, index)})
    filters = [parse_filter(s) for s in subscriptions]
    for i, a in enumerate(filters):
        for b in filters[i + 1 :]:
            assert example_topic(a, b) is None, (a.text, b.text)


@pytest.mark.parametrize("name", NAMES)
def test_a_written_recipe_passes_check_strict_and_test(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`recipes write NAME FILE` writes a file that `check --strict` and `test` accept."""
    file = tmp_path / f"{name}.yaml"
    assert main(["recipes", "write", name, str(file)]) == 0
    assert file.read_text(encoding="utf-8") == recipe(name).text
    assert main(["check", "--strict", str(file)]) == 0
    assert main(["test", str(file)]) == 0
    assert " 0 failed" in capsys.readouterr().out


def test_the_guides_per_device_rule_maps_a_boolean_without_a_second_subscription() -> None:
    """The office-motion rule of docs/guide/recipes.md, placed above zigbee2mqtt-device, maps
    occupancy while the generic rule still collects the numbers, on one subscription."""
    page = (REPO / "docs" / "guide" / "recipes.md").read_text(encoding="utf-8")
    block = page.split("```yaml\n")[1].split("```")[0]
    assert "office-motion" in block
    text = recipe("zigbee2mqtt").text.replace(
        "  - name: zigbee2mqtt-device", block + "\n  - name: zigbee2mqtt-device"
    )
    data, index = load_yaml_text(text, "zigbee2mqtt+office.yaml")
    rules = compile_mappings(data, index)
    assert rule_warnings(rules) == []
    assert {r.topic.subscription for r in rules} == {
        "zigbee2mqtt/+",
        "zigbee2mqtt/+/availability",
    }
    mapped = mapper.Mapper(rules).map(
        "zigbee2mqtt/office_motion", b'{"occupancy": true, "battery": 87}', 1_795_681_920_000_000
    )
    assert [r.metrics for r in mapped.records] == [{"occupancy": 1.0}, {"battery": 87.0}]
    assert mapped.failures == []


def test_the_yaml_files_are_package_data() -> None:
    """Each recipe is read through importlib.resources from the package, every YAML file there
    is a recipe, and pyproject's package data globs ship every one in the wheel."""
    files = resources.files("bridge.recipes")
    shipped = {p.name for p in files.iterdir() if p.name.endswith(".yaml")}
    assert shipped == {f"{n}.yaml" for n in NAMES}
    for r in catalogue():
        assert files.joinpath(f"{r.name}.yaml").read_text(encoding="utf-8") == r.text
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["bridge.recipes"]
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in shipped)


def test_an_unknown_recipe_is_a_config_error_naming_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """recipe() raises ConfigError (not KeyError) listing the names; the CLI exits 78."""
    with pytest.raises(ConfigError, match=r"no recipe named 'tasmota2'.*tasmota, zigbee2mqtt"):
        recipe("tasmota2")
    assert main(["recipes", "show", "tasmota2"]) == EX_CONFIG
    assert "plain-numbers" in capsys.readouterr().err


def test_recipes_lists_and_shows(capsys: pytest.CaptureFixture[str]) -> None:
    """`recipes` lists every name with its title; `recipes show` prints the YAML as is."""
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing] == list(NAMES)
    assert main(["recipes", "show", "esphome"]) == 0
    assert capsys.readouterr().out == recipe("esphome").text


def test_write_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing mapping file is kept unless --force is given."""
    file = tmp_path / "topic-mappings.yaml"
    file.write_text("mine\n", encoding="utf-8")
    assert main(["recipes", "write", "tasmota", str(file)]) == 1
    assert "exists; use --force" in capsys.readouterr().err
    assert file.read_text(encoding="utf-8") == "mine\n"
    assert main(["recipes", "write", "tasmota", str(file), "--force"]) == 0
    assert file.read_text(encoding="utf-8") == recipe("tasmota").text


@pytest.mark.parametrize("name", NAMES)
def test_a_recipe_recognises_its_own_samples_and_no_other_does(name: str) -> None:
    """Every sample that maps to points is recognised as this recipe, first in the catalogue;
    no sample of this recipe is taken for another one."""
    own = recipe(name)
    for topic, payload, has_points in _samples(name):
        found = recognise(topic, payload)
        if has_points:
            assert own.recognises(topic, payload), (topic, payload)
            assert found is own, (topic, found)
        else:
            assert found in (None, own), (topic, found)


def test_a_plain_number_on_a_tasmota_topic_is_not_tasmota() -> None:
    """Topic shape alone is not enough: a number on tele/<device>/SENSOR is a plain number."""
    assert not recipe("tasmota").recognises("tele/plug-1/SENSOR", b"21.5")
    assert recognise("tele/plug-1/SENSOR", b"21.5") is recipe("plain-numbers")


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("tele/plug-1/SENSOR", b'{"Temperature": 21.5}'),  # no Tasmota "Time"
        ("stat/plug-1/POWER", b"maybe"),
        ("zigbee2mqtt/bridge/state", b'{"state": "online"}'),  # the bridge, not a device
        ("zigbee2mqtt/hall_climate", b"21.5"),
        ("shellyplus1pm-a8032ab12345/events/rpc", b'{"method": "Shelly.GetStatus"}'),
        ("my-device/events/rpc", b'{"method": "NotifyStatus", "params": {}}'),
        ("boiler-room/binary_sensor/pump/state", b"on"),  # ESPHome sends upper case
        ("homeassistant/sensor/boiler/config", b'{"name": "Boiler"}'),  # discovery
        ("opcua/json/data/press", b'{"MessageType": "ua-metadata", "Messages": []}'),
        ("telegraf/host-1/cpu", b'{"metrics": [{"fields": {}}]}'),  # batch = true
        ("iotgateway", b'{"values": "none"}'),
        ("a/b/c", b"nan"),
        ("$SYS/broker/uptime", b"42"),
    ],
)
def test_shape_mismatches_are_not_recognised(topic: str, payload: bytes) -> None:
    """A convention's topic with another payload shape (or the reverse) is not recognised."""
    assert recognise(topic, payload) is None


GARBAGE = (
    b"",
    b"\xff\xfe\x00garbage",
    b"\xc3\x28",  # invalid UTF-8
    b"[" * 200_000,  # deeper than any parser recursion
    b'{"Time": "x", "a": ' + b"1" * 5_000_000 + b"}",  # huge
    b"\x00" * 1024,
)
TOPICS = (*(t for n in NAMES for t, _, _ in _samples(n)), "", "/", "//", "#", "+/+")


@pytest.mark.parametrize("payload", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_payloads_on_every_recipe_topic_never_raise(payload: bytes) -> None:
    """Non-UTF-8, huge, deeply nested, empty and NUL payloads on every recipe's topics: no
    exception, and no recipe takes them for its convention."""
    for topic in TOPICS:
        for r in catalogue():
            assert r.recognises(topic, payload) in (True, False)
        assert recognise(topic, payload) is None


@settings(max_examples=300, deadline=None)
@given(
    topic=st.one_of(st.sampled_from(TOPICS), st.text(max_size=80)),
    payload=st.one_of(st.binary(max_size=256), st.text(max_size=256).map(str.encode)),
)
def test_recognise_never_raises(topic: str, payload: bytes) -> None:
    """Any topic and any bytes: recognise() answers a recipe or None, never an exception."""
    found = recognise(topic, payload)
    assert found is None or found in catalogue()


def test_the_plain_number_shape_is_the_mappers() -> None:
    """The plain-numbers recogniser accepts exactly what a `payload: number` rule maps."""
    assert recognisers.NUMBER.pattern == mapper._NUMBER.pattern
