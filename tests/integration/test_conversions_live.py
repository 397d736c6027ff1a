"""End to end through a real broker and the local API: ``linear`` and ``expr`` conversions
arrive in engineering units, a value the expression cannot compute and a wire-break reading
outside ``range`` are counted and dead-lettered with their reasons while the other points are
delivered, and what ``explain`` predicts is what the API receives."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.mapping.explain import explain, format_explanation
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from tests.support.harness import delivered_points, make_settings, metric, publish, running_bridge

MAPPINGS = """version: 1
rules:
  - name: transmitters
    topic: plc/{tank}
    device_id: '{tank}'
    metrics:
      pressure_bar: {path: ma, linear: {from: [4, 20], to: [0, 10]}, round: 3, range: [0, 10]}
      temp_c: {path: f, expr: "(x - 32) * 5 / 9", round: 1}
    timestamp: {field: ts, format: epoch_ms}
  - name: flow
    topic: flow/{meter}
    device_id: '{meter}'
    payload: number
    metric: litres_per_pulse
    transform: {expr: "100 / x"}
"""


async def test_conversions_arrive_in_engineering_units(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    ts_ms = int(time.time() * 1000) - 5_000
    first = orjson.dumps({"ma": 12, "f": 98.6, "ts": ts_ms})
    wire_break = orjson.dumps({"ma": 3.2, "f": 32, "ts": ts_ms + 1})
    mapper = Mapper(load_mappings_text(MAPPINGS, "live.yaml"))
    predicted = explain(mapper, "plc/t1", first, ts_ms * 1000)
    assert "convert pressure_bar: x = 12 → linear [4, 20] → [0, 10]" in format_explanation(
        predicted
    )
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings, MAPPINGS) as bridge:
        await publish(
            broker.port,
            [
                ("plc/t1", first),
                ("plc/t1", wire_break),  # 3.2 mA is -0.5 bar: out of range; temp_c still sent
                ("flow/m1", b"4"),
                ("flow/m1", b"0"),  # 100 / 0: conversion_failed
            ],
        )
        async with asyncio.timeout(60):
            await api.store.wait_for_points(4, 60)
            while (
                metric(bridge, "metriqo_bridge_dead_letters_total", reason="conversion_failed") < 1
                or metric(bridge, "metriqo_bridge_dead_letters_total", reason="out_of_range") < 1
            ):
                await asyncio.sleep(0.05)
        failures = metric(
            bridge, "metriqo_bridge_mapping_failures_total", rule="flow", reason="conversion_failed"
        )
    assert failures == 1
    got = sorted((d, m, v) for d, m, _, v in delivered_points(api.store.points()))
    assert got == [
        ("m1", "litres_per_pulse", 25.0),
        ("t1", "pressure_bar", 5.0),
        ("t1", "temp_c", 0.0),
        ("t1", "temp_c", 37.0),
    ]
    # explain's body is what the API stored for the first message.
    assert predicted.body == [
        {
            "device_id": "t1",
            "timestamp": predicted.body[0]["timestamp"],
            "metrics": {"pressure_bar": 5.0, "temp_c": 37.0},
        }
    ]
    stored = [p for p in delivered_points(api.store.points()) if p[2] == ts_ms]
    assert sorted((m, v) for _, m, _, v in stored) == [("pressure_bar", 5.0), ("temp_c", 37.0)]
