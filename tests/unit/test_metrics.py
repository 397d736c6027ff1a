"""The metric set: fixed vocabularies exist from the start and labels stay bounded. (That the
metrics reference lists every metric is tests/unit/test_reference.py's job: it is generated.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import (
    DEAD_LETTER_REASONS,
    PREFIX,
    STATUS_CLASSES,
    BatchHistogram,
    BridgeMetrics,
)

REPO = Path(__file__).resolve().parents[2]
# Labels whose values come from bounded sets: rule names (the mapping file), fixed reason and
# result vocabularies, status classes, and the version/platform labels of the info metrics.
BOUNDED_LABELS = {"rule", "reason", "status_class", "result", "version", "le"}
PLATFORM_LABELS = {"implementation", "major", "minor", "patchlevel", "version"}


def _families() -> dict[str, set[str]]:
    """Family name → label names seen in a fresh bridge's exposition."""
    text = generate_latest(BridgeMetrics().registry).decode()
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        labels = out.setdefault(family.name, set())
        for sample in family.samples:
            labels.update(sample.labels)
    return out


def test_fixed_vocabularies_are_exported_at_zero_from_the_start() -> None:
    text = generate_latest(BridgeMetrics().registry).decode()
    for reason in DEAD_LETTER_REASONS:
        assert f'{PREFIX}dead_letters_total{{reason="{reason}"}} 0.0' in text
    for status_class in STATUS_CLASSES:
        assert f'{PREFIX}api_requests_total{{status_class="{status_class}"}} 0.0' in text
    assert f'{PREFIX}points_dropped_total{{reason="spool_full"}} 0.0' in text
    assert f'{PREFIX}config_reloads_total{{result="failure"}} 0.0' in text
    assert "_created" not in text


def test_every_dead_letter_reason_in_the_code_is_in_the_vocabulary() -> None:
    """A new PayloadError reason must be added to DEAD_LETTER_REASONS (and so to dashboards)."""
    found: set[str] = set()
    for source in (REPO / "bridge").rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        found.update(re.findall(r'PayloadError\(\s*"([a-z_]+)"', text))
        found.update(re.findall(r'dead_letters\.labels\("([a-z_]+)"\)', text))
    assert len(found) > 10, "the scan found too few reasons; has the code's shape changed?"
    assert found <= set(DEAD_LETTER_REASONS), found - set(DEAD_LETTER_REASONS)


def test_labels_are_bounded_and_names_carry_the_prefix_and_units() -> None:
    families = _families()
    ours = {name: labels for name, labels in families.items() if name.startswith(PREFIX)}
    assert len(ours) > 30
    for name, labels in ours.items():
        assert labels <= BOUNDED_LABELS, (name, labels - BOUNDED_LABELS)
        assert "topic" not in labels
        assert "device" not in labels
        assert not re.search(r"_(ms|milliseconds|kb|mb)(_|$)", name), f"{name}: use base units"
    for name, labels in families.items():
        if not name.startswith(PREFIX):
            assert name.startswith(("process_", "python_")), name
            assert labels <= PLATFORM_LABELS, (name, labels)
    assert "process_resident_memory_bytes" in families
    assert PREFIX + "build_info" in families


def _samples(kind: type[Histogram], feed: object) -> dict[str, float]:
    registry = CollectorRegistry()
    histogram = kind("lag_seconds", "lag", buckets=(0.05, 0.1, 1, 60), registry=registry)
    feed(histogram)  # type: ignore[operator]
    [family] = text_string_to_metric_families(generate_latest(registry).decode())
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_exposes_what_observe_gives_value_by_value() -> None:
    """BatchHistogram.observe_many adds to prometheus-client's own bucket and sum values: the
    exposition must be the one observe() gives for the same values, bucket edges included (a
    value equal to a bound is in that bound's bucket), over several calls."""
    rounds = [[0.0, 0.05, 0.050001, 0.1, 0.7, 1.0, 59.9, 60.0, 61.0, 3600.0], [], [0.2] * 25]

    def one_by_one(h: Histogram) -> None:
        for values in rounds:
            for value in values:
                h.observe(value)

    def together(h: BatchHistogram) -> None:
        for values in rounds:
            h.observe_many(iter(values))

    expected = _samples(Histogram, one_by_one)
    got = _samples(BatchHistogram, together)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name
    assert expected["lag_seconds_bucket[('le', '0.05')]"] == 2
    assert expected["lag_seconds_count[]"] == 35
