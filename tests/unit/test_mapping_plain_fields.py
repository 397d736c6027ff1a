"""Rules whose metrics are plain top-level fields take a shorter path through the mapper
(no call per metric for a finite JSON number): for every payload it gives what the general
path gives, the same values and the same failures in the same words."""

from __future__ import annotations

import math

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import PayloadError
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import _json_metrics
from bridge.mapping.plain_fields import plain_metrics

RULES = """
version: 1
rules:
  - name: plain
    topic: "plant/{device}/telemetry"
    device_id: "{device}"
    metrics:
      temp: temp
      rh: '"r.h"'
      state: {path: state, map: {'on': 1, 'off': 0, 'true': 1}}
      count: count
  - name: converted
    topic: "plant/{device}/other"
    device_id: "{device}"
    metrics:
      temp: {path: temp, scale: 0.1}
  - name: nested
    topic: "plant/{device}/nested"
    device_id: "{device}"
    metrics:
      temp: a.temp
"""

RULES_BY_NAME = {r.name: r for r in load_mappings_text(RULES)}

json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["on", "OFF", "12.5", "1e400", ""]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
docs = st.dictionaries(
    st.sampled_from(["temp", "r.h", "state", "count", "other"]), json_values, max_size=5
)


def test_which_rules_are_plain() -> None:
    plain = plain_metrics(RULES_BY_NAME["plain"])
    assert plain is not None
    assert [(name, key, text) for name, key, text, _ in plain] == [
        ("temp", "temp", "temp"),
        ("rh", "r.h", '"r.h"'),
        ("state", "state", "state"),
        ("count", "count", "count"),
    ]
    assert plain_metrics(RULES_BY_NAME["converted"]) is None
    assert plain_metrics(RULES_BY_NAME["nested"]) is None


def outcome(doc: dict[str, object], *, fast: bool) -> tuple[dict[str, float], list[str]]:
    rule = RULES_BY_NAME["plain"]
    failures: list[PayloadError] = []
    metrics = _json_metrics(rule, doc, failures, {}, plain_metrics(rule) if fast else None)
    return metrics, [f"{f.reason}: {f}" for f in failures]


@settings(max_examples=300, deadline=None)
@given(docs)
def test_the_plain_path_gives_what_the_general_path_gives(doc: dict[str, object]) -> None:
    fast, general = outcome(doc, fast=True), outcome(doc, fast=False)
    assert fast == general
    assert list(fast[0]) == list(general[0])  # the same order of metrics
    for value in fast[0].values():
        assert type(value) is float
        assert math.isfinite(value)


def test_a_payload_as_parsed_from_json() -> None:
    doc = orjson.loads(b'{"temp": 21.5, "r.h": 40, "state": "on", "count": 1e308}')
    assert outcome(doc, fast=True) == ({"temp": 21.5, "rh": 40.0, "state": 1.0, "count": 1e308}, [])
    missing = outcome({"temp": True}, fast=True)
    assert missing == outcome({"temp": True}, fast=False)
    assert [m.split(":")[0] for m in missing[1]] == [
        "boolean_value",
        "missing_field",
        "missing_field",
        "missing_field",
    ]
