"""Unit tests of what the bridge says about itself: the progress line and its idle rule, the
totals at stop, outages, the duration format, and JSON fields from a record's extra."""

from __future__ import annotations

import logging

import orjson
import pytest

from bridge.logs import JsonFormatter, LogThrottle, duration
from bridge.metrics import BridgeMetrics
from bridge.outage import Outage
from bridge.progress import Progress, Reading, Tally, read, totals
from tests.unit.clock import FakeClock


def _reading(backlog: int = 0, oldest: float = 0.0, **counts: int) -> Reading:
    return Reading(Tally(**counts), backlog, oldest)


def test_read_takes_the_counters_and_backlog_from_the_registry() -> None:
    """A reading sums labelled counters, keeps only 2xx requests, and reads the gauges."""
    m = BridgeMetrics()
    m.messages_received.inc(7)
    m.points_delivered.inc(20)
    m.requests.labels("2xx").inc(2)
    m.requests.labels("5xx").inc(3)
    m.dead_letters.labels("invalid_json").inc()
    m.dead_letters.labels("api_rejected").inc(2)
    m.messages_ignored.labels("noise").inc(4)
    m.rate_limited.inc(5)
    m.points_dropped.labels("spool_full").inc(6)
    m.spool_points.set(9)
    m.bind_spool_age(lambda: 12.5)
    got = read(m.registry)
    assert got.tally == Tally(
        received=7,
        delivered=20,
        requests=2,
        dead_letters=3,
        ignored=4,
        unmatched=0,
        rate_limited=5,
        dropped=6,
    )
    assert (got.backlog, got.oldest_s) == (9, 12.5)


def test_progress_line_gives_the_interval_deltas_and_the_backlog_now() -> None:
    """The numbers are differences since the previous line; the backlog is as it stands."""
    p = Progress(_reading(received=100, delivered=300), now=0.0)
    line = p.line(_reading(40, 3.0, received=160, delivered=500, requests=2), now=60.0)
    assert line is not None
    text = line.msg % line.args
    assert text == (
        "last 60s: received 60 message(s), delivered 200 point(s) in 2 request(s), "
        "0 dead letter(s), 0 rate-limited (429); waiting in the spool: 40 point(s), oldest 3.0s"
    )
    assert line.fields["received"] == 60
    assert line.fields["backlog_points"] == 40
    assert line.fields["event"] == "progress"


def test_dropped_points_are_named_in_the_progress_line() -> None:
    """Lost data is never only a field: the text says DROPPED."""
    p = Progress(_reading(), now=0.0)
    line = p.line(_reading(received=1, dropped=5), now=60.0)
    assert line is not None
    assert "5 point(s) DROPPED" in line.msg % line.args


def test_an_idle_bridge_says_so_once_then_hourly() -> None:
    """Nothing happening: one line, then silence until something happens or an hour passed."""
    p = Progress(_reading(received=5), now=0.0, idle_every_s=3600.0)
    said = [p.line(_reading(received=5), now=60.0 * i) is not None for i in range(1, 62)]
    assert said[0] is True
    assert said[1:60] == [False] * 59
    assert said[60] is True  # 3600 s after the first idle line
    assert p.line(_reading(received=6), now=3720.0 + 60) is not None
    assert p.line(_reading(received=6), now=3780.0 + 60) is not None  # the first idle line again
    assert p.line(_reading(received=6), now=3840.0 + 60) is None


def test_a_waiting_backlog_is_never_idle() -> None:
    """A stalled delivery with points waiting is reported every interval."""
    p = Progress(_reading(3), now=0.0)
    assert all(p.line(_reading(3, 100.0), now=60.0 * i) is not None for i in range(1, 5))


def test_totals_at_stop() -> None:
    """One line: everything since start, what stays in the spool, the uptime."""
    line = totals(_reading(7, received=10, delivered=33, requests=1, dead_letters=2), 3723.0)
    assert line.msg % line.args == (
        "stopped after 1h02m: received 10 message(s), delivered 33 point(s) in 1 request(s), "
        "2 dead letter(s), 0 ignored, 0 unmatched, 0 dropped; 7 point(s) stay in the spool for "
        "the next start"
    )
    assert line.fields["uptime_s"] == 3723.0


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.42, "0.4s"),
        (9.96, "10.0s"),
        (12.7, "12s"),
        (133, "2m13s"),
        (11100, "3h05m"),
        (190000, "2d04h"),
    ],
)
def test_duration(seconds: float, shown: str) -> None:
    """Durations read as a person writes them."""
    assert duration(seconds) == shown


def test_outage_measures_from_first_failure_to_success() -> None:
    """Down from the first failure; the ending says how long, how many failures, whether any
    was announced, and that a pause was the cause."""
    clock = FakeClock()
    o = Outage(clock)
    assert o.recovered() is None
    o.failed(announced=False)
    clock.advance(5)
    o.failed(announced=True, kind="paused")
    clock.advance(3)
    ended = o.recovered()
    assert ended is not None
    assert (ended.down_s, ended.failures, ended.announced, ended.kind) == (8, 2, True, "paused")
    assert not o.down
    assert o.recovered() is None


def _record(**extra: object) -> logging.LogRecord:
    logger = logging.getLogger("test.talk")
    return logger.makeRecord(
        "test.talk", logging.INFO, __file__, 1, "hi %s", ("x",), None, extra=extra
    )


def test_json_formatter_writes_extra_as_fields_and_keeps_its_own_keys() -> None:
    """Fields from ``extra`` appear; none of them can replace ts/level/logger/msg."""
    out = orjson.loads(JsonFormatter().format(_record(topic="a/b", status=401, ts="forged")))
    assert out["msg"] == "hi x"
    assert out["topic"] == "a/b"
    assert out["status"] == 401
    assert out["ts"] != "forged"
    assert set(out) == {"ts", "level", "logger", "msg", "topic", "status"}


def test_json_formatter_writes_unknown_types_as_text() -> None:
    """A field orjson cannot encode is written as its text, never losing the line."""
    out = orjson.loads(JsonFormatter().format(_record(path=object.__new__(FakeClock))))
    assert isinstance(out["path"], str)


def test_throttled_line_keeps_its_fields_and_adds_repeated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A throttled line passes its fields on, with how many lines it stands for."""
    clock = FakeClock()
    throttle = LogThrottle(30.0, clock)
    log = logging.getLogger("test.talk")
    caplog.set_level(logging.INFO, logger="test.talk")
    throttle.log(log, logging.INFO, "k", "x %d", 1, extra={"status": 500})
    throttle.log(log, logging.INFO, "k", "x %d", 2, extra={"status": 500})
    clock.advance(31)
    throttle.log(log, logging.INFO, "k", "x %d", 3, extra={"status": 503})
    first, second = caplog.records
    assert first.status == 500  # type: ignore[attr-defined]
    assert not hasattr(first, "repeated")
    assert second.status == 503  # type: ignore[attr-defined]
    assert second.repeated == 1  # type: ignore[attr-defined]
