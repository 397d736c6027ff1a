"""End to end: numbers printed for people (number_format) through a real mosquitto and the
local API; a text that does not fit the format is dead-lettered, not guessed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support.harness import make_settings, metric, publish, running_bridge

MAPPINGS = """version: 1
rules:
  - name: hmi-values
    topic: "hmi/{panel}/{metric}"
    device_id: "{panel}"
    payload: number
    metric: "{metric}"
    number_format: {decimal: ",", thousands: ".", unit: "°C"}
  - name: panel-status
    topic: "panel/{panel}/status"
    device_id: "{panel}"
    metrics:
      fault_word: {path: word, number_format: {hex: true}}
      load_pct: load
"""


async def test_printed_numbers_arrive_and_a_misfit_is_dead_lettered(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    messages = [
        ("hmi/p1/oven_temp", "21,4 °C".encode()),
        ("hmi/p1/counter", b"1.234.567"),
        ("hmi/p1/flow", b"1,234.5"),  # not this format: a dead letter, never 1.2345 or 1234.5
        ("panel/p1/status", b'{"word": "0x1F", "load": 55}'),
    ]
    async with running_bridge(settings, MAPPINGS) as bridge:
        await publish(broker.port, messages)
        async with asyncio.timeout(60):
            await api.store.wait_for_points(4, 60)
            while metric(bridge, "metriqo_bridge_dead_letters_total", reason="not_numeric") < 1:
                await asyncio.sleep(0.05)
    got = {(p.device_id, p.metric): p.value for p in api.store.points()}
    assert got == {
        ("p1", "oven_temp"): 21.4,
        ("p1", "counter"): 1234567,
        ("p1", "fault_word"): 31,
        ("p1", "load_pct"): 55,
    }
