"""Every shipped recipe in a running bridge: its sample messages, published to a real
mosquitto, reach the local API as exactly the points its `tests:` section promises — no more,
no fewer — so `metriqo-bridge test` passing means the same in production."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from pathlib import Path

import orjson
import pytest
import yaml

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.recipes import catalogue, recipe
from tests.support.harness import make_settings, metric, publish, running_bridge

Point = tuple[str, str, float]


def _messages_and_points(
    name: str,
) -> tuple[list[tuple[str, bytes]], Counter[Point], set[tuple[str, str, float, float]]]:
    """A recipe's test messages; the points they promise; those with a device time (µs)."""
    messages: list[tuple[str, bytes]] = []
    points: Counter[Point] = Counter()
    timed: set[tuple[str, str, float, float]] = set()
    for test in yaml.safe_load(recipe(name).text)["tests"]:
        payload = test.get("payload")
        body = payload.encode() if payload is not None else orjson.dumps(test["payload_json"])
        messages.append((test["topic"], body))
        for obj in test.get("expect") or []:
            for metric_name, value in obj["metrics"].items():
                points[(obj["device_id"], metric_name, round(float(value), 9))] += 1
                if "timestamp" in obj:
                    ts = datetime.fromisoformat(obj["timestamp"]).timestamp()
                    timed.add((obj["device_id"], metric_name, round(float(value), 9), ts))
    return messages, points, timed


@pytest.mark.parametrize("name", [r.name for r in catalogue()])
async def test_a_recipe_delivers_what_its_tests_promise(
    name: str, broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """The recipe's messages through mosquitto and the bridge become exactly its expected
    points, device times included; nothing else reaches the API."""
    messages, want, timed = _messages_and_points(name)
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings, mappings=recipe(name).text) as bridge:
        await publish(broker.port, messages)
        await api.store.wait_for_points(sum(want.values()), 60)
        async with asyncio.timeout(60):  # every message handled, the spool drained
            while (
                metric(bridge, "metriqo_bridge_messages_received_total") < len(messages)
                or bridge.spool.file.depth_points
            ):
                await asyncio.sleep(0.05)
    stored = api.store.points()
    got = Counter((p.device_id, p.metric, round(p.value, 9)) for p in stored)
    assert got == want
    got_timed = {
        (p.device_id, p.metric, round(p.value, 9), p.timestamp.timestamp()) for p in stored
    }
    assert {(d, m, v, round(t, 6)) for d, m, v, t in timed} <= {
        (d, m, v, round(t, 6)) for d, m, v, t in got_timed
    }
