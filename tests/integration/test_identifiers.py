"""Hostile device ids and metric names through a running bridge (a subprocess on a private
mosquitto, the local API): dead-lettered with their own reasons and counted, the good metrics of
a message kept, neighbouring messages untouched, and what the bridge sends at its limits taken
by the API (reliability matrix row 24)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import orjson

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.limits import MAX_IDENTIFIER_CHARS
from tests.support.harness import (
    TEST_MAPPINGS,
    BridgeProcess,
    delivered_points,
    env_messages,
    expected_env_points,
    publish,
    run_cli,
)
from tests.support.waiting import until

MAPPINGS = (
    TEST_MAPPINGS
    + """  - name: bulk
    topic: "bulk/{device}"
    device_id: "{device}"
    collect: {path: values}
    timestamp: {field: ts}
"""
)
DEAD = "metriqo_bridge_dead_letters_total"
FAILED = "metriqo_bridge_mapping_failures_total"


def scrape(proc: BridgeProcess) -> dict[str, float]:
    """Every sample of the bridge's ``/metrics``, by its name with labels."""
    url = f"http://127.0.0.1:{proc.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:  # the test's own loopback server
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def wait_samples(proc: BridgeProcess, want: dict[str, float]) -> dict[str, float]:
    """Wait until the bridge's metrics reach ``want``; the last scrape."""
    last: dict[str, float] = {}

    def reached() -> bool:
        last.update(scrape(proc))
        return all(last.get(k, 0.0) >= v for k, v in want.items())

    await until(reached, f"metrics {want}", timeout=60, step=0.2)
    return last


async def test_hostile_identifiers_are_dead_lettered_and_neighbours_delivered(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A 64,000-character device id and one with U+202E are dead-lettered as bad_device_id; a
    metric name with a bidi override or an escape, or over 128 characters, is dropped as
    bad_metric_name while the message's good metric is delivered; ids and names of exactly 128
    characters and every neighbouring message arrive; the API refuses nothing."""
    start_ms = int(time.time() * 1000) - 60_000
    bulk = {
        "values": {"ok": 1.5, "b\u202ead": 2, "x" * 129: 3, "esc\x1b[31m": 4},
        "ts": start_ms,
    }
    hostile = [
        ("tele/" + "d" * 64_000 + "/temp", b"1"),
        ("tele/press-01\u202e7-tset/temp", b"2"),
        ("tele/dev-3/te\u202emp", b"3"),
        ("bulk/dev-2", orjson.dumps(bulk)),
        ("tele/" + "d" * 128 + "/" + "m" * 128, b"5"),
    ]
    env = env_messages(30, start_ms)
    proc = BridgeProcess(broker.port, api.url, tmp_path / "bridge", mappings=MAPPINGS)
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        await publish(broker.port, [*env[:15], *hostile, *env[15:]])
        await api.store.wait_for_points(4 * 30 + 2, 60)
        samples = await wait_samples(
            proc,
            {
                f'{DEAD}{{reason="bad_device_id"}}': 2,
                f'{DEAD}{{reason="bad_metric_name"}}': 2,
            },
        )
        assert samples[f'{FAILED}{{reason="bad_device_id",rule="plain"}}'] == 2
        assert samples[f'{FAILED}{{reason="bad_metric_name",rule="plain"}}'] == 1
        assert samples[f'{FAILED}{{reason="bad_metric_name",rule="bulk"}}'] == 3

        delivered = delivered_points(api.store.points())
        at_limit = [d for d in delivered if d[0] == "d" * 128]  # stamped with its receive time
        assert [(d[1], d[3]) for d in at_limit] == [("m" * 128, 5.0)]
        rest = sorted(d for d in delivered if d[0] != "d" * 128)
        assert rest == sorted({*expected_env_points(30, start_ms), ("dev-2", "ok", start_ms, 1.5)})
        assert {r.status for r in api.store.requests} == {201}
        assert proc.running

        listed = await asyncio.to_thread(
            run_cli,
            "dead-letters",
            "list",
            "--spool-path",
            str(tmp_path / "bridge" / "spool.db"),
            "--json",
        )
        assert listed.returncode == 0, listed.stderr
        rows = [orjson.loads(line) for line in listed.stdout.splitlines()]
        by_topic = {row["topic"]: row for row in rows}
        assert {t: r["reason"] for t, r in by_topic.items()} == {
            hostile[0][0]: "bad_device_id",
            hostile[1][0]: "bad_device_id",
            hostile[2][0]: "bad_metric_name",
            "bulk/dev-2": "bad_metric_name",
        }
        assert "64000 characters" in by_topic[hostile[0][0]]["detail"]
        assert by_topic["bulk/dev-2"]["detail"].startswith("partially mapped (1 point(s) kept)")
        assert "\u202e" not in by_topic[hostile[1][0]]["detail"]
        assert proc.terminate() == 0
        assert "\u202e" not in proc.output()
        assert "\x1b" not in proc.output()
    finally:
        proc.close()


async def test_identifiers_at_the_largest_setting_are_taken_by_the_api(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """With both limits at their largest (256, the API's), a 256-character device id and metric
    name are delivered and accepted, and 257 characters are dead-lettered: the bridge never
    sends what the API refuses."""
    most = MAX_IDENTIFIER_CHARS
    proc = BridgeProcess(
        broker.port,
        api.url,
        tmp_path / "bridge",
        **{
            "mapping.max_device_id_length": str(most),
            "mapping.max_metric_name_length": str(most),
        },
    )
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        await publish(
            broker.port,
            [
                ("tele/" + "d" * (most + 1) + "/m", b"1"),
                ("tele/d/" + "m" * (most + 1), b"2"),
                ("tele/" + "d" * most + "/" + "m" * most, b"3"),
            ],
        )
        await api.store.wait_for_points(1, 60)
        await wait_samples(
            proc, {f'{DEAD}{{reason="bad_device_id"}}': 1, f'{DEAD}{{reason="bad_metric_name"}}': 1}
        )
        assert [(p.device_id, p.metric, p.value) for p in api.store.points()] == [
            ("d" * most, "m" * most, 3.0)
        ]
        assert {r.status for r in api.store.requests} == {201}
        assert proc.terminate() == 0
    finally:
        proc.close()
