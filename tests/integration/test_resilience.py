"""Broker restarts, lost sessions, a full spool and MQTT redelivery, with an in-process bridge."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker, free_port
from tests.support import TOKEN
from tests.support.harness import (
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    running_bridge,
)


async def _wait_for(predicate: object, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_broker_restart_mid_stream_loses_nothing(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """SIGTERM + restart of the broker while publishing: the bridge reconnects to its session
    and every point arrives, none twice."""
    n = 3000
    start_ms = int(time.time() * 1000) - n
    messages = env_messages(n, start_ms)
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        await publish(broker.port, messages[: n // 2])
        broker.stop()  # SIGTERM: mosquitto saves its sessions
        await _wait_for(lambda: not bridge.source.state.connected)  # type: ignore[union-attr]
        await asyncio.sleep(1.0)
        broker.start()
        await _wait_for(lambda: bridge.source.state.connected)  # type: ignore[union-attr]
        await publish(broker.port, messages[n // 2 :], client_id="pub-2")
        await api.store.wait_for_points(4 * n, 60)
        await _wait_for(lambda: bridge.spool.file.depth_points == 0)
        assert bridge.source is not None
        assert bridge.source.state.session_present is True
        assert metric(bridge, "metriqo_bridge_mqtt_session_lost_total") == 0
        assert metric(bridge, "metriqo_bridge_mqtt_connects_total") == 2
    got = delivered_points(api.store.points())
    assert set(got) == expected_env_points(n, start_ms)
    assert Counter(got).most_common(1)[0][1] == 1


async def test_backlog_queued_while_bridge_is_down_is_delivered(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """The persistent session keeps messages published while the bridge was stopped."""
    n = 2000
    start_ms = int(time.time() * 1000) - n
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings):
        pass  # establishes the session and its subscriptions
    await publish(broker.port, env_messages(n, start_ms))
    async with running_bridge(settings) as bridge:
        await api.store.wait_for_points(4 * n, 60)
        assert bridge.source is not None
        assert bridge.source.state.session_present is True
    assert set(delivered_points(api.store.points())) == expected_env_points(n, start_ms)


async def test_lost_broker_session_is_warned_and_counted(
    api: LocalApi, tmp_path: Path, caplog: object
) -> None:
    """A broker without persistence forgets the session on restart: the bridge says so."""
    with LocalBroker(workdir=tmp_path / "broker", extra_config="persistence false") as broker:
        settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
        async with running_bridge(settings) as bridge:
            broker.stop()
            await _wait_for(lambda: not bridge.source.state.connected)  # type: ignore[union-attr]
            broker.start()
            await _wait_for(lambda: metric(bridge, "metriqo_bridge_mqtt_connects_total") == 2)
            assert metric(bridge, "metriqo_bridge_mqtt_session_lost_total") == 1
    assert "broker had no session" in caplog.text  # type: ignore[attr-defined]


async def test_first_connect_of_a_new_bridge_is_not_a_lost_session(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A brand-new spool and client id has no session to lose: no alarm."""
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        assert metric(bridge, "metriqo_bridge_mqtt_session_lost_total") == 0
    async with running_bridge(settings) as bridge:
        assert bridge.source is not None
        assert bridge.source.state.session_present is True
        assert metric(bridge, "metriqo_bridge_mqtt_session_lost_total") == 0


async def test_full_spool_withholds_acks_then_recovers_without_loss(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """With the API down and the spool at its cap, intake pauses (broker keeps the rest);
    when the API returns, everything is delivered."""
    n = 12000
    start_ms = int(time.time() * 1000) - n
    port = free_port()
    settings = make_settings(
        broker.port,
        f"http://127.0.0.1:{port}/api/v2",
        tmp_path / "spool.db",
        **{"spool.max_bytes": str(1 << 20), "mqtt.receive_maximum": "200"},
    )
    async with running_bridge(settings) as bridge:
        await publish(broker.port, env_messages(n, start_ms))
        await _wait_for(lambda: metric(bridge, "metriqo_bridge_spool_full") == 1)
        committed = metric(bridge, "metriqo_bridge_messages_committed_total")
        assert committed < n
        [full] = [p for p in bridge.problems() if p.startswith("spool full")]
        assert "points wait for delivery" in full
        assert "delivery to the API frees space" in full
        await asyncio.sleep(1.0)
        assert metric(bridge, "metriqo_bridge_messages_committed_total") == committed
        async with LocalApi(token=TOKEN, port=port, rate_limit_per_minute=None) as api:
            await api.store.wait_for_points(4 * n, 120)
            await _wait_for(lambda: metric(bridge, "metriqo_bridge_spool_full") == 0)
            got = delivered_points(api.store.points())
    assert set(got) == expected_env_points(n, start_ms)
    assert metric(bridge, "metriqo_bridge_intake_paused_seconds_total") > 0


def _mixed_messages() -> list[tuple[str, bytes]]:
    return env_messages(50, int(time.time() * 1000) - 100) + [
        (f"tele/m{i}/volts", b"%d" % i) for i in range(50)
    ]


async def test_unacknowledged_messages_are_redelivered_and_stored_once(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Committed but never acknowledged (the link dropped first): the broker redelivers with
    DUP and each point is delivered once, also receive-time-stamped plain payloads."""
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        source, committer = bridge.source, bridge.committer
        assert source is not None
        assert committer is not None
        real = committer._acknowledge
        committer._acknowledge = lambda batch: None  # type: ignore[method-assign]  # the one fault
        await publish(broker.port, _mixed_messages())
        await _wait_for(lambda: metric(bridge, "metriqo_bridge_messages_committed_total") == 100)
        await _wait_for(lambda: api.store.point_count() == 250)
        committer._acknowledge = real  # type: ignore[method-assign]
        source._client.disconnect()  # drop the link; the session stays
        await _wait_for(lambda: metric(bridge, "metriqo_bridge_mqtt_connects_total") == 2)
        await _wait_for(lambda: metric(bridge, "metriqo_bridge_messages_received_total") == 200)
        await _wait_for(lambda: metric(bridge, "metriqo_bridge_messages_committed_total") == 200)
        await _wait_for(lambda: bridge.spool.file.depth_points == 0)
        assert metric(bridge, "metriqo_bridge_duplicate_points_suppressed_total") == 250
    got = delivered_points(api.store.points())
    assert len(got) == 250
    assert Counter(got).most_common(1)[0][1] == 1


async def test_lost_pubacks_duplicate_nothing(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """PUBACKs lost on the way (never read by the broker): payload-stamped points are still
    delivered once (recently delivered ids are remembered), and so are plain payloads: no fence
    passed after their PUBACKs, so their receive times are kept and the redelivery recognised."""
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        source = bridge.source
        assert source is not None
        real_ack = source.ack
        source.ack = lambda *_: None  # type: ignore[method-assign]  # the one fault
        await publish(broker.port, _mixed_messages())
        await _wait_for(lambda: api.store.point_count() == 250)
        source.ack = real_ack  # type: ignore[method-assign]
        source._client.disconnect()
        await _wait_for(lambda: metric(bridge, "metriqo_bridge_messages_committed_total") == 200)
        await _wait_for(lambda: bridge.spool.file.depth_points == 0)
    got = delivered_points(api.store.points())
    env = [p for p in got if p[1] != "volts"]
    volts = [p for p in got if p[1] == "volts"]
    assert len(env) == 200
    assert len(set(env)) == 200
    assert sorted(p[3] for p in volts) == [float(i) for i in range(50)]


async def test_backlog_drain_keeps_unacknowledged_messages_within_the_window(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Draining a backlog, the bridge never holds more unacknowledged messages than its
    receive window, even though mosquitto 2.0 sends past Receive Maximum once acks flow."""
    n = 5000
    start_ms = int(time.time() * 1000) - n
    settings = make_settings(
        broker.port, api.url, tmp_path / "spool.db", **{"mqtt.receive_maximum": "100"}
    )
    async with running_bridge(settings):
        pass  # creates the session
    await publish(broker.port, env_messages(n, start_ms))
    async with running_bridge(settings) as bridge:
        async with asyncio.timeout(60):
            while bridge.spool.file.delivered_points_total < 4 * n:
                await asyncio.sleep(0.01)
        # Taken at each receive: polling from here missed every burst once (a commit emptied
        # the queue between two looks), and then said nothing about the window.
        most_pending = bridge.intake.most_pending
    assert 0 < most_pending <= 100
    assert set(delivered_points(api.store.points())) == expected_env_points(n, start_ms)
