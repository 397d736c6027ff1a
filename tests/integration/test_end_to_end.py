"""End to end: real mosquitto → bridge → real HTTP API."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support import TOKEN
from tests.support.harness import (
    Publisher,
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    running_bridge,
)


async def test_every_published_point_arrives_once_in_batches_of_at_most_100(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """N QoS 1 messages become exactly the expected points, ≤ 100 points per request."""
    n = 3000
    start_ms = int(time.time() * 1000) - n
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        await publish(broker.port, env_messages(n, start_ms))
        async with asyncio.timeout(60):
            await api.store.wait_for_points(4 * n, 60)
            while bridge.spool.file.depth_points:
                await asyncio.sleep(0.05)
    got = delivered_points(api.store.points())
    assert Counter(got).most_common(1)[0][1] == 1, "a point was delivered twice"
    assert set(got) == expected_env_points(n, start_ms)
    sizes = [r.points_written for r in api.store.requests]
    assert max(sizes) <= 100
    assert sum(sizes) == 4 * n
    # Full batches when a backlog waits: almost every request carries 100 points.
    assert sum(1 for s in sizes if s == 100) >= len(sizes) - 10
    assert all(r.authorization == f"Bearer {TOKEN}" for r in api.store.requests)
    assert metric(bridge, "metriqo_bridge_messages_received_total") == n
    assert metric(bridge, "metriqo_bridge_points_delivered_total") == 4 * n
    assert metric(bridge, "metriqo_bridge_spool_points") == 0


async def test_plain_numbers_are_stamped_with_receive_time(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A plain numeric payload yields one point named by the topic, at its receive time."""
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings):
        before = time.time()
        pub = Publisher(broker.port)
        try:
            await asyncio.to_thread(
                pub.publish_all,
                [(f"tele/meter-{i}/voltage", b"%d.5" % (220 + i)) for i in range(20)],
            )
        finally:
            pub.close()
        after = time.time()
        await api.store.wait_for_points(20, 30)
    points = api.store.points()
    assert sorted((p.device_id, p.metric, p.value) for p in points) == sorted(
        (f"meter-{i}", "voltage", 220 + i + 0.5) for i in range(20)
    )
    for p in points:
        assert before - 0.01 <= p.timestamp.timestamp() <= after + 0.01
    for r in api.store.requests:
        body = r.body
        assert isinstance(body, list)
        for obj in body:
            assert isinstance(obj, dict)
            assert "timestamp" in obj, "every point carries an explicit timestamp"


async def test_malformed_payloads_are_dead_lettered_and_neighbours_delivered(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Each bad message is counted by reason and dead-lettered; good ones around it arrive."""
    start_ms = int(time.time() * 1000) - 1000
    bad: list[tuple[str, bytes, str]] = [
        ("plant/s0/l0/env", b"{not json", "invalid_json"),
        ("plant/s0/l0/env", b"[1, 2, 3]", "not_an_object"),
        ("plant/s0/l0/env", b'{"temp": NaN, "ts": 1}', "invalid_json"),
        ("plant/s0/l0/env", b'{"temp": 1e400, "ts": 1}', "invalid_json"),
        ("plant/s0/l0/env", b"\x1f\x8b\x08\x00binary", "invalid_json"),
        ("plant/s0/l0/env", b"", "invalid_json"),
        (
            "plant/s0/l0/env",
            b'{"temp": 1, "rh": 2, "power": {"kw": 3, "hz": 4}}',
            "missing_timestamp",
        ),
        ("plant/s0/l0/env", b'{"temp": 1, "ts": "yesterday"}', "bad_timestamp"),
        ("plant/s0/l0/env", b'{"temp": 1, "ts": "3000-01-01T00:00:00Z"}', "bad_timestamp"),
        ("plant/s0/l0/env", b'{"temp": 1, "ts": "2026-01-01T00:00:00"}', "bad_timestamp"),
        ("plant/s0/l0/env", b"[" * 5000 + b"]" * 5000, "invalid_json"),
        ("plant/s0/l0/env", b'{"temp": "' + b"x" * 70000 + b'"}', "too_large"),
        ("tele/meter/voltage", b"abc", "not_numeric"),
        ("tele/meter/voltage", b"nan", "not_numeric"),
        ("tele/meter/voltage", b"1_000", "not_numeric"),
        ("tele/meter/voltage", b"1e400", "non_finite"),
    ]
    partial = (
        "plant/s1/l1/env",
        b'{"temp": true, "rh": "wet", "power": {"kw": 2.5, "hz": 50}, "ts": %d}' % (start_ms + 999),
    )
    good = env_messages(30, start_ms)
    messages: list[tuple[str, bytes]] = []
    for i, msg in enumerate(good):
        messages.append(msg)
        if i < len(bad):
            messages.append(bad[i][:2])
    messages.append(partial)
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        await publish(broker.port, messages)
        await api.store.wait_for_points(4 * 30 + 2, 30)
        async with asyncio.timeout(10):
            while metric(bridge, "metriqo_bridge_messages_committed_total") < len(messages):
                await asyncio.sleep(0.05)
        dead = bridge.spool.dead_letters.recent()
        counts = {
            reason: metric(bridge, "metriqo_bridge_dead_letters_total", reason=reason)
            for reason in {b[2] for b in bad}
        }
    got = set(delivered_points(api.store.points()))
    assert expected_env_points(30, start_ms) <= got
    assert {(p[1], p[3]) for p in got - expected_env_points(30, start_ms)} == {
        ("kw", 2.5),
        ("hz", 50.0),
    }
    want = Counter(b[2] for b in bad)
    want["boolean_value"] += 1  # the partial message is dead-lettered by its first failure
    assert Counter(d[1] for d in dead) == want
    assert counts == {reason: float(n) for reason, n in Counter(b[2] for b in bad).items()}
    partial_dl = [d for d in dead if d[1] == "boolean_value"]
    assert "partially mapped (2 point(s) kept)" in partial_dl[0][5]
    assert "not_numeric" in partial_dl[0][5]


async def test_metrics_and_health_endpoints(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """/metrics exposes the bridge's metrics; /healthz is 200; /readyz is 200 when connected."""
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        await publish(broker.port, env_messages(10, int(time.time() * 1000) - 50))
        await api.store.wait_for_points(40, 30)
        async with asyncio.timeout(10):
            while metric(bridge, "metriqo_bridge_points_delivered_total") < 40:
                await asyncio.sleep(0.02)
        assert bridge.status is not None
        base = f"http://127.0.0.1:{bridge.status.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/metrics") as r:
                text = await r.text()
            async with http.get(base + "/healthz") as r:
                assert r.status == 200
            async with http.get(base + "/readyz") as r:
                assert r.status == 200
                assert orjson.loads(await r.read()) == {"ready": True, "problems": []}
    for name in (
        "metriqo_bridge_messages_received_total 10.0",
        'metriqo_bridge_points_mapped_total{rule="env"} 40.0',
        "metriqo_bridge_spool_points",
        "metriqo_bridge_spool_oldest_point_age_seconds",
        'metriqo_bridge_api_requests_total{status_class="2xx"}',
        "metriqo_bridge_points_delivered_total 40.0",
        "metriqo_bridge_batch_points_bucket",
        "metriqo_bridge_api_request_duration_seconds_bucket",
        "metriqo_bridge_delivery_lag_seconds_bucket",
        "metriqo_bridge_mqtt_connected 1.0",
        "metriqo_bridge_build_info",
    ):
        assert name in text, name
    assert TOKEN not in text


async def test_readyz_reports_broker_down(api: LocalApi, tmp_path: Path) -> None:
    """With no broker listening, the bridge runs, /healthz is 200 and /readyz is 503."""
    from bridge.lab.broker import free_port

    settings = make_settings(free_port(), api.url, tmp_path / "spool.db")
    async with running_bridge(settings, connected=False) as bridge:
        assert bridge.status is not None
        base = f"http://127.0.0.1:{bridge.status.port}"
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/healthz") as r:
                assert r.status == 200
            async with http.get(base + "/readyz") as r:
                assert r.status == 503
                body = orjson.loads(await r.read())
        assert body["ready"] is False
        assert "mqtt not connected" in body["problems"][0]


async def test_single_object_body_mode_sends_one_object_per_request(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """With api.body=object every request is one JSON object, and every point still arrives."""
    n = 200
    start_ms = int(time.time() * 1000) - n
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db", **{"api.body": "object"})
    async with running_bridge(settings):
        await publish(broker.port, env_messages(n, start_ms))
        await api.store.wait_for_points(4 * n, 60)
    assert set(delivered_points(api.store.points())) == expected_env_points(n, start_ms)
    assert len(api.store.requests) == n
    assert all(isinstance(r.body, dict) for r in api.store.requests)


async def test_api_rejecting_one_point_dead_letters_only_that_record(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A 400 for a batch is bisected down to the refused record; the rest is delivered."""
    n = 60
    start_ms = int(time.time() * 1000) - n
    # The bridge never builds a body the local API would refuse, so the one fault is injected
    # at the sender seam: every request containing one device's points gets a 400.
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        assert bridge.delivery is not None
        sender = bridge.delivery._sender
        real_post = sender.post
        poison_device = "s1-l1"

        async def post(objects: list[dict[str, object]], key: str) -> int | None:
            if any(o["device_id"] == poison_device for o in objects):
                from bridge.errors import PermanentDelivery

                raise PermanentDelivery("rejected", status=400, body='{"error":"bad_request"}')
            return await real_post(objects, key)

        sender.post = post  # type: ignore[method-assign,assignment]
        await publish(broker.port, env_messages(n, start_ms))
        want = {p for p in expected_env_points(n, start_ms) if p[0] != poison_device}
        async with asyncio.timeout(30):
            while not want <= set(delivered_points(api.store.points())):
                await asyncio.sleep(0.05)
            while bridge.spool.file.depth_points:
                await asyncio.sleep(0.05)
        dead = bridge.spool.dead_letters.recent()
    poisoned = {p for p in expected_env_points(n, start_ms) if p[0] == poison_device}
    assert set(delivered_points(api.store.points())) == want
    assert len(dead) == len(poisoned) // 4
    assert {d[1] for d in dead} == {"api_rejected"}
    assert all('"bad_request"' in d[5] for d in dead)


async def test_unmatched_topics_are_counted_sampled_and_served(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A message the rules' patterns refuse is counted, dead-lettered, and listed by
    /debug/unmatched with its count."""
    mappings = (
        "version: 1\nrules:\n"
        "  - {name: hall, topic: 'hall/{id:dev-\\d+}/temp', device_id: '{id}', payload: number,"
        " metric: temp}\n"
    )
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings, mappings=mappings) as bridge:
        await publish(
            broker.port,
            [("hall/dev-1/temp", b"20"), ("hall/oven/temp", b"250"), ("hall/oven/temp", b"251")],
        )
        await api.store.wait_for_points(1, 20)
        async with asyncio.timeout(10):
            while metric(bridge, "metriqo_bridge_messages_committed_total") < 3:
                await asyncio.sleep(0.02)
        assert metric(bridge, "metriqo_bridge_messages_unmatched_total") == 2
        assert bridge.status is not None
        url = f"http://127.0.0.1:{bridge.status.port}/debug/unmatched"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            body = orjson.loads(await r.read())
        dead = bridge.spool.dead_letters.recent()
    assert [(e["topic"], e["count"]) for e in body["unmatched"]] == [("hall/oven/temp", 2)]
    assert [d[1] for d in dead] == ["unmatched", "unmatched"]


async def test_coalescing_rule_sends_one_point_per_window(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A coalescing rule's readings reach the API as one averaged point per metric and
    window, stamped with the window start."""
    mappings = (
        "version: 1\nrules:\n"
        "  - {name: fast, topic: 'fast/{d}', device_id: '{d}', metrics: {v: v},"
        " timestamp: {field: ts, format: epoch_ms}, coalesce: {window_s: 10, function: avg}}\n"
    )
    start_ms = (int(time.time()) // 10 - 3) * 10_000  # a window that closed 20-30 s ago
    messages = [
        ("fast/d1", b'{"v": %d, "ts": %d}' % (i, start_ms + i * 1000)) for i in range(10)
    ] + [("fast/d1", b'{"v": 100, "ts": %d}' % (start_ms + 10_000))]
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings, mappings=mappings):
        await publish(broker.port, messages)
        await api.store.wait_for_points(2, 20)
        await asyncio.sleep(1.5)  # a second flush must not send anything more
    got = sorted(delivered_points(api.store.points()))
    assert got == [("d1", "v", start_ms, 4.5), ("d1", "v", start_ms + 10_000, 100.0)]


async def test_429_storm_is_waited_out_and_pacing_backs_off(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """During a 429 storm no request is sent before Retry-After has passed; every point
    arrives once the storm ends, and the pacing that recovered never overshoots the configured
    rate (how fast it recovers: test_delivery_faults, test_pacer)."""
    from bridge.lab.apiserver.faults import Faults

    n = 300
    start_ms = int(time.time() * 1000) - n
    faults = Faults(storm_429_s=2.0, retry_after="seconds")
    async with LocalApi(token=TOKEN, rate_limit_per_minute=None, faults=faults) as api:
        settings = make_settings(
            broker.port,
            api.url,
            tmp_path / "spool.db",
            # One request at a time: every request after a 429 was sent after reading it.
            **{"api.requests_per_minute": "600", "api.concurrency": "1"},
        )
        async with running_bridge(settings) as bridge:
            await publish(broker.port, env_messages(n, start_ms))
            await api.store.wait_for_points(4 * n, 30)
            paused = metric(bridge, "metriqo_bridge_api_rate_limited_pause_seconds_total")
            rate = metric(bridge, "metriqo_bridge_api_pacing_rate_requests_per_second")
        requests = api.store.requests
    assert set(delivered_points(api.store.points())) == expected_env_points(n, start_ms)
    limited = [r for r in requests if r.status == 429]
    assert limited, "the storm answered nothing"
    for r in limited:
        # Each 429 said "Retry-After: N" with N = what was left of the storm rounded up, so at
        # least 1 s: the next request came no earlier.
        later = [x.received_at for x in requests if x.received_at > r.received_at]
        if later:
            assert min(later) - r.received_at >= 1.0 - 0.02
    assert paused >= 1.0
    assert 0 < rate <= 600 / 60  # doubling back stops at the configured 10/s
