"""What the bridge logs and counts about dead letters: reason and topic always, a payload
excerpt only when ``dead_letters.log_payload_bytes`` allows it (escaped and cut), and prunes
summed up in one line a minute with their counters moving at once."""

from __future__ import annotations

import logging

import pytest

from bridge.dead_letter_log import DeadLetterReporter, excerpt
from bridge.metrics import BridgeMetrics
from bridge.models import DeadLetter
from bridge.settings import DeadLetterSettings
from bridge.spool.dlbudget import Pruned
from tests.support.clock import FakeClock

LOGGER = "bridge.dead_letter_log"
SECRET = b"pin=4711"
HOSTILE = (
    b'{"note": "' + SECRET + b'\n\x1b[31mFAKE ERROR \xe2\x80\xae gnp.exe", "pad": "' + b"z" * 200
)


def letter(payload: bytes = HOSTILE, reason: str = "invalid_json") -> DeadLetter:
    """A dead letter as the intake makes it."""
    return DeadLetter(
        reason, "invalid_json: unexpected end", "plant/s1/l\n2/env", payload, "env", 1
    )


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages the reporter logged."""
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_dead_letter_line_names_reason_topic_and_rule_and_no_payload_by_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Default settings: reason, topic (escaped), rule and detail; not a byte of the payload."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    metrics = BridgeMetrics()
    DeadLetterReporter(metrics, DeadLetterSettings()).written(letter())
    [line] = lines(caplog)
    assert line == (
        "message on topic 'plant/s1/l\\n2/env' dead-lettered (reason invalid_json, rule 'env'): "
        "'invalid_json: unexpected end'"
    )
    assert "pin" not in line
    sample = metrics.registry.get_sample_value(
        "metriqo_bridge_dead_letters_total", {"reason": "invalid_json"}
    )
    assert sample == 1


def test_the_payload_excerpt_setting_shows_an_escaped_cut_excerpt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """log_payload_bytes: 40 shows the first 40 bytes, control and bidi characters escaped,
    on one line, marked as cut with the payload's size."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    reporter = DeadLetterReporter(BridgeMetrics(), DeadLetterSettings(log_payload_bytes=40))
    reporter.written(letter())
    [line] = lines(caplog)
    assert "\n" not in line
    assert "\x1b" not in line
    assert "\u202e" not in line
    assert line.endswith(
        '; payload \'{"note": "pin=4711\\n\\x1b[31mFAKE ERROR \\u202e g\'… (257 bytes)'
    )


def test_excerpts_of_binary_and_short_payloads() -> None:
    """Bytes that are not UTF-8 are shown as escapes; a short payload is not marked as cut."""
    assert excerpt(b"\xff\x00ok", 16) == "'\\\\xff\\x00ok'"
    assert excerpt(b"12.5", 16) == "'12.5'"
    assert excerpt(b"", 16) == "''"


def test_repeated_dead_letters_of_a_reason_log_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flood of one reason is one line per 30 s, with how often it repeated."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    clock = FakeClock(100.0)
    reporter = DeadLetterReporter(BridgeMetrics(), DeadLetterSettings(), clock=clock)
    for _ in range(500):
        reporter.written(letter(b"x"))
    reporter.written(letter(b"x", reason="unmatched"))
    clock.advance(31)
    reporter.written(letter(b"x"))
    got = lines(caplog)
    assert len(got) == 3
    assert "(reason unmatched" in got[1]
    assert got[2].endswith("(repeated 499 times since last report)")


def test_prunes_are_counted_at_once_and_summed_up_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The counters move with every prune; the log has one line for the first prune, then one
    summing up the next minute, naming the limits and the reasons."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock(100.0)
    metrics = BridgeMetrics()
    reporter = DeadLetterReporter(
        metrics, DeadLetterSettings(max_count=1000, max_age_s=3600), clock=clock
    )

    def count(why: str) -> float:
        value = metrics.registry.get_sample_value(
            "metriqo_bridge_dead_letters_pruned_total", {"reason": why}
        )
        assert value is not None
        return value

    reporter.pruned(Pruned.of({("max_count", "invalid_json"): 100}))
    for tick in range(59):
        clock.advance(1)
        reporter.pruned(Pruned.of({("max_count", "unmatched"): 2}) if tick % 2 else Pruned())
        reporter.pruned(Pruned.of({("max_age", "invalid_json"): 1}) if tick == 3 else Pruned())
    assert (count("max_count"), count("max_age"), count("max_bytes")) == (158, 1, 0)
    assert len(lines(caplog)) == 1
    clock.advance(1)
    reporter.pruned(Pruned())
    first, second = lines(caplog)
    assert first == (
        "pruned 100 dead letter(s), oldest first: 100 beyond dead_letters.max_count (1000); "
        "their reasons: invalid_json 100 (list or export what is left with "
        "`metriqo-bridge dead-letters`)"
    )
    assert second.startswith(
        "pruned 59 dead letter(s) in the last 58 s, oldest first: 1 older than "
        "dead_letters.max_age_s (3600 s), 58 beyond dead_letters.max_count (1000); "
        "their reasons: invalid_json 1, unmatched 58"
    )
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    clock.advance(120)
    reporter.pruned(Pruned())
    assert len(lines(caplog)) == 2, "nothing pending: no line"
