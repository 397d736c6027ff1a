"""Unit tests of the identifier limits: device ids and metric names bounded in length, control
and bidi characters refused, at run time (dead-letter reasons) and in the mapping file itself
(``check``, start and reload). The same limits in the local API: ``test_apiserver.py``; a
bridge on a real broker: ``tests/integration/test_identifiers.py``."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bridge.cli.main import main
from bridge.config.loader import load_settings
from bridge.errors import EX_CONFIG, ConfigError
from bridge.lab.apiserver.validation import JsonValue, RequestError, validate_telemetry
from bridge.limits import MAX_IDENTIFIER_CHARS
from bridge.mapping.identifiers import CheckedIdentifiers, IdentifierLimits
from bridge.mapping.loader import load_mappings_text, make_mapper
from bridge.mapping.mapper import Mapped, Mapper
from bridge.settings import MappingSettings

RECV_US = 1_731_657_600_000_000  # 2024-11-15T08:00:00Z

RULES = """\
version: 1
rules:
  - name: plain
    topic: "tele/{device}/{metric}"
    device_id: "{device}"
    payload: number
    metric: "{metric}"
  - name: bulk
    topic: "bulk/{device}"
    device_id: "{device}"
    collect: {path: values}
  - name: strict
    topic: "strict/{device}"
    device_id: "{device}"
    collect: {path: values}
    on_error: reject_message
  - name: serial
    topic: "serial/+"
    device_id: "{$serial}"
    metrics: {t: t}
  - name: list
    topic: "list/{device}"
    device_id: "{device}"
    readings: {path: r, name: n, value: v}
"""

# One of each kind of character refused in a device id or a metric name.
FORBIDDEN = [
    "\x00",  # NUL
    "\n",  # a forged log line
    "\x1b",  # ANSI escape
    "\x7f",  # DEL
    "\x85",  # C1 NEXT LINE
    "\x9b",  # C1 CSI
    "\u061c",  # ARABIC LETTER MARK
    "\u200e",  # LEFT-TO-RIGHT MARK
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u202a",  # LEFT-TO-RIGHT EMBEDDING
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u2066",  # LEFT-TO-RIGHT ISOLATE
    "\u2069",  # POP DIRECTIONAL ISOLATE
    "\ud800",  # a lone surrogate: not a character
]


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    """The bridge's mapper for RULES with the default settings."""
    return make_mapper(load_mappings_text(RULES, "m.yaml"), MappingSettings())


def reasons(out: Mapped) -> list[str]:
    """The failure reasons of a mapped message, in order."""
    return [f.reason for f in out.failures]


def points(out: Mapped) -> dict[tuple[str, str], float]:
    """(device, metric) → value over the records of a mapped message."""
    return {(r.device_id, k): v for r in out.records for k, v in r.metrics.items()}


def test_a_device_id_of_64000_characters_is_dead_lettered_and_not_echoed(mapper: Mapper) -> None:
    """A 64,000-character device id gives no points and a ``bad_device_id`` failure whose
    detail shows a short excerpt and the length, not the whole id."""
    out = mapper.map(f"tele/{'d' * 64_000}/temp", b"21.5", RECV_US)
    assert out.records == []
    assert reasons(out) == ["bad_device_id"]
    detail = str(out.failures[0])
    assert len(detail) < 200
    assert "64000 characters" in detail
    assert "longer than 128 characters" in detail


@pytest.mark.parametrize("char", FORBIDDEN, ids=lambda c: f"U+{ord(c):04X}")
def test_a_control_or_bidi_character_in_a_device_id_is_refused(mapper: Mapper, char: str) -> None:
    """A device id holding a control, bidi-control or surrogate character is ``bad_device_id``,
    and the detail names the character without containing it."""
    out = mapper.map(f"tele/press{char}01/temp", b"1", RECV_US)
    assert out.records == []
    assert reasons(out) == ["bad_device_id"]
    detail = str(out.failures[0])
    assert char not in detail
    assert f"U+{ord(char):04X}" in detail


def test_a_device_id_from_the_payload_is_checked_too(mapper: Mapper) -> None:
    """A device id read from a payload field is held to the same rules."""
    body = orjson.dumps({"serial": "SN-1\u202e7", "t": 1})
    out = mapper.map("serial/x", body, RECV_US)
    assert (out.records, reasons(out)) == ([], ["bad_device_id"])


def test_the_longest_allowed_identifiers_and_ordinary_unicode_pass(mapper: Mapper) -> None:
    """128 characters pass, 129 do not; letters of any script (and a zero-width joiner inside
    an emoji) are not refused."""
    at_limit = mapper.map(f"tele/{'d' * 128}/{'m' * 128}", b"1", RECV_US)
    assert points(at_limit) == {("d" * 128, "m" * 128): 1.0}
    assert at_limit.failures == []
    assert reasons(mapper.map(f"tele/{'d' * 129}/m", b"1", RECV_US)) == ["bad_device_id"]
    assert reasons(mapper.map(f"tele/d/{'m' * 129}", b"1", RECV_US)) == ["bad_metric_name"]
    out = mapper.map("tele/Presse-Süd-温度/Temperatur-°C-\U0001f469\u200d\U0001f527", b"2", RECV_US)
    assert out.failures == []
    assert out.points == 1


def test_a_bad_metric_name_drops_that_metric_and_keeps_the_others(mapper: Mapper) -> None:
    """In a message of several metrics, a bad name drops that metric only: the good ones are
    points, each bad one is a ``bad_metric_name`` failure (so the message is dead-lettered
    beside its points)."""
    body = orjson.dumps({"values": {"ok": 1, "b\u202ead": 2, "x" * 129: 3, "fine": 4}})
    out = mapper.map("bulk/dev-1", body, RECV_US)
    assert points(out) == {("dev-1", "ok"): 1.0, ("dev-1", "fine"): 4.0}
    assert reasons(out) == ["bad_metric_name", "bad_metric_name"]
    assert "U+202E" in str(out.failures[0])
    assert "longer than 128" in str(out.failures[1])


def test_reject_message_drops_the_whole_message_for_one_bad_name(mapper: Mapper) -> None:
    """With ``on_error: reject_message`` one bad metric name keeps every point back."""
    body = orjson.dumps({"values": {"ok": 1, "b\x1bad": 2}})
    out = mapper.map("strict/dev-1", body, RECV_US)
    assert (out.records, reasons(out)) == ([], ["bad_metric_name"])


def test_reading_names_and_plain_metric_names_are_checked(mapper: Mapper) -> None:
    """A name from a list of readings or from a topic level is held to the same rules."""
    body = orjson.dumps({"r": [{"n": "ok", "v": 1}, {"n": "bad\u2066", "v": 2}]})
    out = mapper.map("list/dev-1", body, RECV_US)
    assert points(out) == {("dev-1", "ok"): 1.0}
    assert reasons(out) == ["bad_metric_name"]
    plain = mapper.map("tele/dev-1/te\nmp", b"1", RECV_US)
    assert (plain.records, reasons(plain)) == ([], ["bad_metric_name"])


def test_the_limits_are_the_settings(tmp_path: Path) -> None:
    """``mapping.max_device_id_length`` and ``mapping.max_metric_name_length`` set the limits,
    up to the API's 256 characters; 0 and 257 are configuration errors."""
    settings = load_settings(
        environ={},
        overrides={
            "mapping.max_device_id_length": "8",
            "mapping.max_metric_name_length": "256",
            "spool.path": str(tmp_path / "s.db"),
        },
    )
    mapper = make_mapper(load_mappings_text(RULES), settings.mapping)
    assert reasons(mapper.map("tele/device-09/t", b"1", RECV_US)) == ["bad_device_id"]
    assert mapper.map(f"tele/device-8/{'m' * 256}", b"1", RECV_US).points == 1
    for key, value in (("max_device_id_length", "0"), ("max_metric_name_length", "257")):
        with pytest.raises(ConfigError, match=f"mapping.{key}"):
            load_settings(environ={}, overrides={f"mapping.{key}": value})


LONG_NAME, FIXED_TEXT = "m" * 129, "plant-" * 22
BAD_FILE = f"""\
version: 1
rules:
  - name: hidden
    topic: "a/{{device}}"
    device_id: "press\\u202e{{device}}"
    metrics: {{t: t}}
  - name: long-name
    topic: "b/{{device}}"
    device_id: "{{device}}"
    metrics:
      {LONG_NAME}: t
  - name: prefix
    topic: "c/{{device}}"
    device_id: "{{device}}"
    collect: {{path: v, prefix: "\\e[31m"}}
  - name: fixed
    topic: "d/+"
    device_id: "{FIXED_TEXT}-{{$serial}}"
    metrics: {{t: t}}
"""


def test_check_refuses_fixed_text_that_breaks_the_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check`` exits 78 naming file, line and key of each rule whose fixed text already breaks
    the limits: a bidi override, a metric name over 128, an escape in a prefix, and fixed text
    longer than the limit around a payload field."""
    path = tmp_path / "m.yaml"
    path.write_text(BAD_FILE, encoding="utf-8")
    assert main(["check", str(path)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert f"{path}:5: rules[0].device_id: device id text 'press\\u202e' contains U+202E" in err
    assert f"{path}:11: rules[1].metrics.{'m' * 129}: metric name has 129 characters" in err
    assert (
        f"{path}:15: rules[2].collect.prefix: metric name text '\\x1b[31m' contains U+001B" in err
    )
    assert f"{path}:18: rules[3].device_id: device id has 133 characters of fixed text" in err
    assert "more than 128 (mapping.max_device_id_length)" in err
    assert "\u202e" not in err
    assert "\x1b" not in err


def test_check_reads_the_limits_from_the_bridge_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check --config`` (or ``--set``) checks against the bridge's own limits."""
    path = tmp_path / "m.yaml"
    path.write_text(
        'version: 1\nrules:\n  - {name: r, topic: "a/+", device_id: "gateway-0001", '
        "metrics: {temperature: t}}\n",
        encoding="utf-8",
    )
    config = tmp_path / "bridge.yaml"
    config.write_text(
        f"mapping: {{max_device_id_length: 8}}\nspool: {{path: {tmp_path / 's.db'}}}\n"
    )
    assert main(["check", str(path)]) == 0
    capsys.readouterr()
    assert main(["check", "--config", str(config), str(path)]) == EX_CONFIG
    assert "device id has 12 characters of fixed text, more than 8" in capsys.readouterr().err
    set_args = ["--set", "mapping.max_metric_name_length=5", "--set", f"spool.path={config}.db"]
    assert main(["check", *set_args, str(path)]) == EX_CONFIG
    assert "metric name has 11 characters of fixed text" in capsys.readouterr().err


def test_the_local_api_refuses_what_the_bridge_never_sends() -> None:
    """The local API takes identifiers of up to 256 characters and refuses longer ones and
    control or bidi characters (400), so a bridge test shows its limits are inside the API's."""
    longest = "d" * MAX_IDENTIFIER_CHARS
    ok = validate_telemetry([{"device_id": longest, "metrics": {"m" * MAX_IDENTIFIER_CHARS: 1}}])
    assert ok[0].device_id == longest
    refused: list[JsonValue] = [
        {"device_id": longest + "d", "metrics": {"m": 1}},
        {"device_id": "a\u202eb", "metrics": {"m": 1}},
        {"device_id": "d", "metrics": {"m" * (MAX_IDENTIFIER_CHARS + 1): 1}},
        {"device_id": "d", "metrics": {"m\x1b": 1}},
    ]
    for obj in refused:
        with pytest.raises(RequestError) as caught:
            validate_telemetry([obj])
        assert caught.value.status == 400


def test_checked_identifiers_give_the_same_answers_as_the_limits_every_time() -> None:
    """The remembered checks answer like the plain ones, for good names and bad, on the first
    call and on every later one (a bad name is never remembered as good)."""
    limits = IdentifierLimits(max_device_id=8, max_metric_name=5)
    checked = CheckedIdentifiers(limits)
    names = ["press-01", "press-012", "t", "temp_c", "a\u202eb", ""]
    for _ in range(3):
        for name in names:
            assert checked.device_id_problem(name) == limits.device_id_problem(name)
            assert checked.metric_name_problem(name) == limits.metric_name_problem(name)
    # "press-01" is a good device id but too long for a metric name: the kinds stay apart.
    assert checked.known_metric_names(["t"])
    assert not checked.known_metric_names(["t", "press-01"])
