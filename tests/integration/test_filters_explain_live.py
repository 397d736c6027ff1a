"""End to end through a real broker and the local API: the segment/re template filters name
devices and metrics from tag-style topics, a filter miss is dead-lettered, and what ``explain``
predicts for a coalescing rule is the point the API receives."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.mapping.explain import explain
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.mapping.timestamps import format_timestamp
from tests.support.harness import delivered_points, make_settings, metric, publish, running_bridge

MAPPINGS = r"""version: 1
rules:
  - name: opc-tags
    topic: opc/{tag}
    device_id: '{tag|segment:.:0|lower}-line{tag|re:\.Line(\d+)\.:1}'
    payload: number
    metric: '{tag|segment:.:-1|lower}'
  - name: meters
    topic: meter/{dev}
    device_id: '{dev}'
    metrics: {watts: w}
    timestamp: {field: ts, format: epoch_ms}
    coalesce: {window_s: 1, function: avg}
"""


async def test_filters_name_series_and_explain_predicts_the_window_point(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Tags become plant-lineN devices and lower-case metrics; a tag without a line number is
    dead-lettered as missing_field; a coalesced message arrives as explain's body says."""
    ts_ms = int(time.time() * 1000) - 30_000  # a window closed long ago: sent at the next flush
    meter = orjson.dumps({"w": 230.5, "ts": ts_ms})
    predicted = explain(
        Mapper(load_mappings_text(MAPPINGS, "live.yaml")), "meter/m1", meter, ts_ms * 1000
    ).body
    settings = make_settings(
        broker.port, api.url, tmp_path / "spool.db", **{"mapping.coalesce_grace_s": "0"}
    )
    async with running_bridge(settings, MAPPINGS) as bridge:
        await publish(
            broker.port,
            [
                ("opc/Plant1.Line3.Temp", b"21.5"),
                ("opc/Plant1.Line12.Pressure", b"1.2"),
                ("opc/Plant1.Hall.Temp", b"9"),  # no line number: the re filter finds nothing
                ("meter/m1", meter),
            ],
        )
        async with asyncio.timeout(60):
            await api.store.wait_for_points(3, 60)
            while metric(bridge, "metriqo_bridge_dead_letters_total", reason="missing_field") < 1:
                await asyncio.sleep(0.05)
    got = sorted(delivered_points(api.store.points()))
    window_ms = ts_ms - ts_ms % 1000
    assert [(d, m, v) for d, m, _, v in got] == [
        ("m1", "watts", 230.5),
        ("plant1-line12", "pressure", 1.2),
        ("plant1-line3", "temp", 21.5),
    ]
    assert got[0][2] == window_ms
    # explain's body: the window's point, stamped with the window start, as the API stored it.
    assert predicted == [
        {
            "device_id": "m1",
            "timestamp": format_timestamp(window_ms * 1000),
            "metrics": {"watts": 230.5},
        }
    ]
