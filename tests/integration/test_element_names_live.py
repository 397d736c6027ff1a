"""End to end through a real broker and the local API: one tag-list message (Kepware IoT Gateway
shape) becomes points of two devices, named per reading by readings.device/readings.metric; an
``each`` with ``where`` maps only the matching elements; bad-quality elements are held out and
counted, and a reading without a device part is dead-lettered beside the delivered ones."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support.harness import delivered_points, make_settings, metric, publish, running_bridge

MAPPINGS = """version: 1
rules:
  - name: kepware
    topic: iotgateway
    readings:
      path: values
      device: "{$id|segment:.:0:-1}"
      metric: "{$id|segment:.:-1|lower}"
      value: v
      time: t
      time_format: epoch_ms
      where: {q: true}
  - name: hub
    topic: hub/{hub}
    device_id: "{hub}-{@key}"
    each: {path: sensors, where: {ok: true}}
    metrics: {"{$kind}": value}
"""


async def test_one_message_delivers_points_of_two_devices_and_holds_out_bad_quality(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Press01 and Press02 arrive from one message at the readings' own time; the bad-quality
    reading and the not-ok hub sensor are counted as skipped (not dead-lettered); the tag without
    a device part is dead-lettered as missing_field."""
    t_ms = int(time.time() * 1000) - 5_000
    gateway = orjson.dumps(
        {
            "timestamp": t_ms + 23,
            "values": [
                {"id": "Line1.Press01.Temperature", "v": 81.5, "q": True, "t": t_ms},
                {"id": "Line1.Press01.Pressure", "v": 3.2, "q": True, "t": t_ms},
                {"id": "Line1.Press02.Temperature", "v": 79.1, "q": False, "t": t_ms},
                {"id": "Line1.Press02.Pressure", "v": 2.9, "q": True, "t": t_ms},
                {"id": "Heartbeat", "v": 1, "q": True, "t": t_ms},
            ],
        }
    )
    hub = orjson.dumps(
        {
            "sensors": {
                "s1": {"kind": "temp", "value": 21.0, "ok": True},
                "s2": {"kind": "temp", "value": -99, "ok": False},
            }
        }
    )
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings, MAPPINGS) as bridge:
        await publish(broker.port, [("iotgateway", gateway), ("hub/h7", hub)])
        async with asyncio.timeout(60):
            await api.store.wait_for_points(4, 60)
            while (
                metric(bridge, "metriqo_bridge_dead_letters_total", reason="missing_field") < 1
                or metric(bridge, "metriqo_bridge_readings_skipped_total", rule="kepware") < 1
                or metric(bridge, "metriqo_bridge_readings_skipped_total", rule="hub") < 1
            ):
                await asyncio.sleep(0.05)
        skipped = {
            rule: metric(bridge, "metriqo_bridge_readings_skipped_total", rule=rule)
            for rule in ("kepware", "hub")
        }
        dead = metric(bridge, "metriqo_bridge_dead_letters_total", reason="missing_field")
    got = sorted(delivered_points(api.store.points()))
    assert [(d, m, v) for d, m, _, v in got] == [
        ("Line1.Press01", "pressure", 3.2),
        ("Line1.Press01", "temperature", 81.5),
        ("Line1.Press02", "pressure", 2.9),
        ("h7-s1", "temp", 21.0),
    ]
    assert {ts for d, _, ts, _ in got if d.startswith("Line1.")} == {t_ms}
    assert skipped == {"kepware": 1.0, "hub": 1.0}
    assert dead == 1.0
