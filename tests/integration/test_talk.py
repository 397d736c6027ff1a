"""What the bridge says while it runs (docs/operations/logs.md): progress lines whose numbers
are the metrics', the line that ends an API outage, a 401 pause or a broker disconnect, the
totals at stop, DEBUG output that stays bounded under load, and JSON lines with fields — on a
real mosquitto, the local API and its fault modes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import orjson
import pytest

from bridge.app import Bridge
from bridge.lab.apiserver.faults import Faults
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker, free_port
from bridge.logs import JsonFormatter
from bridge.mapping.loader import load_mappings_text
from tests.support import TOKEN
from tests.support.harness import (
    TEST_MAPPINGS,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    run_bridge,
    running_bridge,
)
from tests.support.oracle import wait_committed, wait_delivered, wait_drained, wait_for


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


async def test_progress_lines_appear_at_the_configured_interval_and_add_up_to_the_metrics(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With log_progress_s 0.2, progress lines come while data flows, and their deltas sum to
    the counters the metrics show: received, delivered points and accepted requests."""
    caplog.set_level(logging.INFO, logger="bridge")
    n = 400
    start_ms = int(time.time() * 1000) - n
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db", log_progress_s="0.2")
    async with running_bridge(settings) as bridge:
        await publish(broker.port, env_messages(n, start_ms))
        await wait_delivered(api, expected_env_points(n, start_ms))
        await wait_drained(bridge)

        def summed(name: str) -> int:
            return sum(int(getattr(r, name)) for r in _events(caplog, "progress"))

        # Lines keep coming until one has seen everything (no timing assumed, only order).
        await wait_for(lambda: summed("delivered") == 4 * n, 30, "progress lines sum to 4n")
        lines = _events(caplog, "progress")
        assert summed("received") == n == metric(bridge, "metriqo_bridge_messages_received_total")
        assert summed("delivered") == metric(bridge, "metriqo_bridge_points_delivered_total")
        assert summed("requests") == metric(
            bridge, "metriqo_bridge_api_requests_total", status_class="2xx"
        )
        assert summed("dead_letters") == 0
        assert all(r.levelno == logging.INFO for r in lines)
        assert lines[0].getMessage().startswith("last ")
        assert "received" in lines[0].getMessage()
        # The backlog as it stands: a line after the spool drained shows nothing waiting.
        seen = len(lines)
        await wait_for(lambda: len(_events(caplog, "progress")) > seen, 30, "one more line")
        after = _events(caplog, "progress")[seen]
        assert after.backlog_points == 0  # type: ignore[attr-defined]


async def test_progress_lines_can_be_turned_off(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """log_progress_s 0 writes no progress line (the totals at stop still come)."""
    caplog.set_level(logging.INFO, logger="bridge")
    n = 50
    start_ms = int(time.time() * 1000) - n
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db", log_progress_s="0")
    async with running_bridge(settings):
        await publish(broker.port, env_messages(n, start_ms))
        await wait_delivered(api, expected_env_points(n, start_ms))
    assert _events(caplog, "progress") == []
    assert len(_events(caplog, "totals")) == 1


async def test_delivery_resumed_after_an_outage_says_how_long_and_how_much_waited(
    broker: LocalBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens on the API port, so delivery fails and says so; when the API comes up,
    one line says delivery resumed, after how long, and how many points waited."""
    caplog.set_level(logging.INFO, logger="bridge")
    n = 150
    start_ms = int(time.time() * 1000) - n
    port = free_port()
    settings = make_settings(broker.port, f"http://127.0.0.1:{port}/api/v2", tmp_path / "s.db")
    async with running_bridge(settings) as bridge:
        await publish(broker.port, env_messages(n, start_ms))
        await wait_committed(bridge, n)
        await wait_for(
            lambda: metric(bridge, "metriqo_bridge_api_requests_total", status_class="error") >= 2
        )
        assert "delivery failed, will retry" in caplog.text
        assert _events(caplog, "delivery_resumed") == []
        async with LocalApi(token=TOKEN, port=port, rate_limit_per_minute=None) as api:
            await wait_delivered(api, expected_env_points(n, start_ms))
            await wait_drained(bridge)
        failed = metric(bridge, "metriqo_bridge_api_requests_total", status_class="error")
    [resumed] = _events(caplog, "delivery_resumed")
    assert resumed.levelno == logging.INFO
    assert resumed.getMessage().startswith("delivery resumed after ")
    assert resumed.backlog_points == 4 * n  # type: ignore[attr-defined]
    assert 1 <= resumed.failures <= failed  # type: ignore[attr-defined]
    assert resumed.down_s > 0  # type: ignore[attr-defined]
    # Every point was received before the first failed request, so it waited at least that long.
    assert resumed.oldest_waiting_s >= resumed.down_s - 0.5  # type: ignore[attr-defined]
    # The last delivery line of the run is the recovery, not the failure.
    delivery = [r for r in caplog.records if r.name == "bridge.delivery"]
    assert delivery[-1] is resumed


async def test_end_of_a_401_pause_is_logged_with_what_waited(
    broker: LocalBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The API refuses the token (401): delivery pauses and says so; once the token is
    replaced, one line says delivery resumed after the pause, with the points that waited."""
    caplog.set_level(logging.INFO, logger="bridge")
    new_token = "mtq_rotated_" + "k" * 24
    token = [TOKEN]
    n = 60
    start_ms = int(time.time() * 1000) - n
    faults = Faults(unauthorized_until_token=new_token)
    async with LocalApi(token=new_token, rate_limit_per_minute=None, faults=faults) as api:
        settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
        bridge = Bridge(
            settings, load_mappings_text(TEST_MAPPINGS, "test-mappings.yaml"), lambda: token[0]
        )
        async with run_bridge(bridge):
            await publish(broker.port, env_messages(n, start_ms))
            await wait_for(lambda: metric(bridge, "metriqo_bridge_delivery_paused") == 1)
            assert _events(caplog, "delivery_paused")
            # Every message in the spool before the token changes: on a busy machine intake can
            # still be committing when the pause begins, and what waited is what was spooled.
            await wait_committed(bridge, n)
            token[0] = new_token
            await wait_delivered(api, expected_env_points(n, start_ms))
            await wait_for(lambda: bool(_events(caplog, "delivery_resumed")))
    [resumed] = _events(caplog, "delivery_resumed")
    assert resumed.getMessage().startswith("API accepts requests again after ")
    assert "paused; delivery resumed" in resumed.getMessage()
    assert resumed.backlog_points == 4 * n  # type: ignore[attr-defined]
    assert new_token not in caplog.text


async def test_broker_link_recovery_is_logged_with_the_session(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker restart: when the link is back, one INFO line says how long it was down and
    that the session was present."""
    caplog.set_level(logging.INFO, logger="bridge")
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        assert bridge.source is not None
        source = bridge.source
        broker.stop()
        await wait_for(lambda: not source.state.connected)
        assert _events(caplog, "mqtt_link") == []
        broker.start()
        await wait_for(lambda: metric(bridge, "metriqo_bridge_mqtt_connects_total") == 2, 30)
    [link] = _events(caplog, "mqtt_link")
    assert link.levelno == logging.INFO
    assert link.getMessage().startswith("broker link restored after ")
    assert link.session_present is True  # type: ignore[attr-defined]
    assert link.down_s > 0  # type: ignore[attr-defined]


async def test_broker_link_recovery_without_its_session_is_a_warning(
    api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker without persistence forgets the session: the recovery line is a WARNING that
    says queued messages may be gone."""
    caplog.set_level(logging.INFO, logger="bridge")
    with LocalBroker(workdir=tmp_path / "broker", extra_config="persistence false") as broker:
        settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
        async with running_bridge(settings) as bridge:
            assert bridge.source is not None
            source = bridge.source
            broker.stop()
            await wait_for(lambda: not source.state.connected)
            broker.start()
            await wait_for(lambda: metric(bridge, "metriqo_bridge_mqtt_connects_total") == 2, 30)
    [link] = _events(caplog, "mqtt_link")
    assert link.levelno == logging.WARNING
    assert link.getMessage().startswith("broker link restored after ")
    assert "broker had no session" in link.getMessage()
    assert link.session_present is False  # type: ignore[attr-defined]


async def test_totals_at_stop(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At stop, one line gives received, delivered, dead-lettered, ignored, what stays in the
    spool and the uptime."""
    caplog.set_level(logging.INFO, logger="bridge")
    n = 80
    start_ms = int(time.time() * 1000) - n
    messages = [*env_messages(n, start_ms), ("plant/s0/l0/env", b"{not json")]
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        await publish(broker.port, messages)
        await wait_delivered(api, expected_env_points(n, start_ms))
        await wait_committed(bridge, n + 1)
        assert _events(caplog, "totals") == []
    [line] = _events(caplog, "totals")
    assert line.getMessage().startswith("stopped after ")
    assert line.received == n + 1  # type: ignore[attr-defined]
    assert line.delivered == 4 * n  # type: ignore[attr-defined]
    assert line.dead_letters == 1  # type: ignore[attr-defined]
    assert line.ignored == 0  # type: ignore[attr-defined]
    assert line.backlog_points == 0  # type: ignore[attr-defined]
    assert line.uptime_s > 0  # type: ignore[attr-defined]


async def test_debug_output_exists_and_stays_bounded_under_load(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, connect, subscribe, commit and request lines appear, and none of them is per
    message: each kind is written at most once a second, however many messages pass."""
    caplog.set_level(logging.DEBUG, logger="bridge")
    n = 4000
    start_ms = int(time.time() * 1000) - n
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    began = time.monotonic()
    async with running_bridge(settings) as bridge:
        await publish(broker.port, env_messages(n, start_ms))
        await wait_delivered(api, expected_env_points(n, start_ms), 60)
        await wait_drained(bridge)
    elapsed = time.monotonic() - began
    debug = [
        r for r in caplog.records if r.levelno == logging.DEBUG and r.name.startswith("bridge")
    ]
    text = "\n".join(r.getMessage() for r in debug)
    for expected in (
        "connecting to ",
        "subscribing at QoS 1",
        "committed and acknowledged",
        "API accepted",
    ):
        assert expected in text, expected
    by_kind: dict[str, int] = {}
    for r in debug:
        kind = f"{r.name}:{r.msg}"
        by_kind[kind] = by_kind.get(kind, 0) + 1
    for kind, count in by_kind.items():
        assert count <= elapsed + 2, (kind, count, elapsed)
    assert len(debug) < n / 10


async def test_json_lines_carry_topic_rule_reason_and_the_numbers_as_fields(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Formatted as JSON, a dead letter's line has topic, rule and reason fields, a progress
    line its numbers, the totals theirs; no payload unless the setting allows one."""
    caplog.set_level(logging.INFO, logger="bridge")
    n = 20
    start_ms = int(time.time() * 1000) - n
    messages = [*env_messages(n, start_ms), ("plant/s1/l2/env", b'{"temp": "secretish"}')]
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db", log_progress_s="0.2")
    async with running_bridge(settings) as bridge:
        await publish(broker.port, messages)
        await wait_delivered(api, expected_env_points(n, start_ms))
        await wait_committed(bridge, n + 1)
        await wait_for(lambda: bool(_events(caplog, "progress")))
    fmt = JsonFormatter()
    lines = [orjson.loads(fmt.format(r)) for r in caplog.records]
    [dead] = [x for x in lines if x.get("event") == "dead_letter"]
    assert dead["topic"] == "plant/s1/l2/env"
    assert dead["rule"] == "env"
    assert dead["reason"] in {"missing_timestamp", "not_numeric", "missing_field"}
    assert "payload" not in dead
    assert "secretish" not in dead["msg"]
    progress = next(x for x in lines if x.get("event") == "progress")
    assert {"received", "delivered", "requests", "backlog_points", "interval_s"} <= set(progress)
    [stop] = [x for x in lines if x.get("event") == "totals"]
    assert stop["received"] == n + 1
    connected = next(x for x in lines if x.get("event") == "mqtt_connected")
    assert connected["session_present"] is False
    assert all(TOKEN not in orjson.dumps(x).decode() for x in lines)


async def test_json_dead_letter_line_has_the_payload_field_only_when_allowed(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With dead_letters.log_payload_bytes set, the JSON line carries the escaped excerpt."""
    caplog.set_level(logging.INFO, logger="bridge")
    settings = make_settings(
        broker.port, api.url, tmp_path / "spool.db", **{"dead_letters.log_payload_bytes": "8"}
    )
    async with running_bridge(settings) as bridge:
        await publish(broker.port, [("plant/s0/l0/env", b"{broken json here")])
        await wait_committed(bridge, 1)
    fmt = JsonFormatter()
    [dead] = [orjson.loads(fmt.format(r)) for r in _events(caplog, "dead_letter")]
    assert dead["reason"] == "invalid_json"
    assert dead["payload"].startswith("'{broken ")
